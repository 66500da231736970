#!/usr/bin/env bash
# The GPU benchmark of record, in one command on the GPU machine (device tool), from the repository root:
#   source .device-kit/setup.sh; bash benchmarks/gpu/run.sh [RESULTS_DIR]
# 1) llama-cpp-python with CUDA (background build, kit script), 2) 8B-shape synthetic GPTQ/AWQ/GGUF models,
# 3) quantdeploy bench of the fast engine, transformers+Marlin and llama.cpp side by side, 4) a deliberate
# fallback (GGUF with 0 layers offloaded) caught by --require-gpu.
set -uo pipefail
OUT=${1:-benchmarks/results}
M=.device-build/synth
bash .device-kit/build-llama-cuda.sh --wait 600
source .device-kit/setup.sh
python3 benchmarks/gpu/synth.py --out "$M"
python3 benchmarks/gpu/bench_all.py --models "$M" --out "$OUT"
python3 -m quantdeploy bench "$M/gguf/llama-8b-Q4_K_M.gguf" --gpu-layers 0 --require-gpu --new-tokens 16 \
  --prompt-tokens 32 --repeat 1 --no-warm-load > "$OUT/gpu-fallback-caught.txt" 2>&1
echo "exit code $? (3 = --require-gpu caught the CPU fallback)" >> "$OUT/gpu-fallback-caught.txt"
