#!/usr/bin/env bash
# The GPU benchmark of record, in one command on the GPU machine (device tool), from the repository root:
#   source .device-kit/setup.sh; bash benchmarks/gpu/run.sh [RESULTS_DIR] [EMBEDDED.gguf]
# 1) llama-cpp-python with CUDA (background build, kit script), 2) 8B-shape synthetic GPTQ/AWQ/GGUF models,
# 3) quantdeploy's CUDA GEMV variants checked and timed alone, a check that CUDA-graph replays reproduce the eager
# step, the step's settings A/B'd in the graph and its GEMV variants swept there (saved per GPU), the step's
# kernel-by-kernel timeline, 4) quantdeploy
# bench of the fast engine (each GEMV), transformers+Marlin and llama.cpp side by side (+ the embedded
# Gemma-3-270M GGUF when its path is given),
# 5) a deliberate fallback (GGUF with 0 layers offloaded) caught by --require-gpu, 6) processes with prompt CUDA
# graphs exit cleanly (exit_check.py).
# It runs ~15 minutes: on the device tool start it in the background (nohup ... &) and poll, since one call may
# last 10 minutes; write RESULTS_DIR under .device-build/ (kept between calls) and copy it to $OUT at the end.
# ROWS=gptq,awq,... benches only those rows (bench_all.py --only); KERNELS_ALONE=0 skips the GEMV-alone timings.
set -uo pipefail
source benchmarks/gpu/kit.sh  # kit: the device kit, with the pypcre stand-in patched
kit
OUT=${1:-benchmarks/results/gpu}
EMB=${2:-}
M=.device-build/synth
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace('NVIDIA ', '').lower())")
mkdir -p "$OUT"
bash .device-kit/build-llama-cuda.sh
python3 benchmarks/gpu/synth.py --out "$M"
# gptqmodel JIT-compiles Marlin (~3.5 min of CPU) while the checks below use the GPU
(setsid nohup python3 benchmarks/gpu/warm_marlin.py "$M/gptq" "$M/awq" > .device-build/marlin.log 2>&1 &)
# kernels alone, reported, not saved: the engine's defaults are the in-model best (graph_check with PDL); the
# best kernel alone is not (2026-11-30: a saved down_proj pick of <2, 2, 1> decoded 482 tok/s, the default 516)
[ "${KERNELS_ALONE:-1}" = 0 ] || \
  QUANTDEPLOY_PDL=0 python3 benchmarks/gpu/gemv_tune.py --kernels cuda > "$OUT/gemv-tune-$GPU.txt" 2>&1
python3 benchmarks/gpu/graph_check.py "$M/gptq" > "$OUT/graph-check-$GPU.txt" 2>&1 \
  || { echo "graph_check failed: the fused step does not match the torch step (see $OUT/graph-check-$GPU.txt)"; exit 1; }
# the decode step's settings A/B'd in its CUDA graph, each projection's GEMV variant swept there and saved as this
# GPU's tuned file for GPTQ's meta form (the bench's GPTQ rows use it; AWQ keeps its defaults), the settings again;
# the bench runs the engine's default settings
python3 benchmarks/gpu/graph_ab.py "$M/gptq" --sweep --save > "$OUT/graph-ab-$GPU.txt" 2>&1
# where the step's time goes with those variants: each kernel's marginal time in the decode graph
python3 benchmarks/gpu/step_timeline.py "$M/gptq" > "$OUT/step-timeline-$GPU.txt" 2>&1
while pgrep -f "gpu/warm_marlin[.]py" > /dev/null; do sleep 5; done
bash .device-kit/build-llama-cuda.sh --wait 600
kit  # again: installs the llama-cpp-python wheel built meanwhile
python3 benchmarks/gpu/bench_all.py --models "$M" --out "$OUT" ${EMB:+--embedded "$EMB"} ${ROWS:+--only "$ROWS"}
python3 -m quantdeploy bench "$M/gguf/llama-8b-Q4_K_M.gguf" --gpu-layers 0 --require-gpu --new-tokens 16 \
  --prompt-tokens 32 --repeat 1 --no-warm-load > "$OUT/gpu-fallback-caught.txt" 2>&1
echo "exit code $? (3 = --require-gpu caught the CPU fallback)" >> "$OUT/gpu-fallback-caught.txt"
python3 benchmarks/gpu/exit_check.py "$M/gptq" 12 4 > "$OUT/exit-check-$GPU.txt" 2>&1
echo "run.sh finished"
