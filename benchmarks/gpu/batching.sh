#!/usr/bin/env bash
# Many users on one GPU: the batching engine's record. On a machine with an NVIDIA GPU, after ./install.sh:
#
#     bash benchmarks/gpu/batching.sh
#
# 1. writes 8B-shape synthetic GPTQ and AWQ models to build/gpu-models/ (synth.py; kept),
# 2. batch_decode.py per format: the engine in-process at batch 1, 8, 32 and 64 (aggregate and decode tok/s, host ms
#    per step, weight GB/s) and each sequence's greedy tokens in a batch against the same sequence alone,
# 3. `quantdeploy bench --concurrency 1,8,32,64`: the same models through `quantdeploy serve` to N streaming clients
#    (128-token prompts, 256 new tokens): aggregate tok/s, TTFT and inter-token latency p50/p95, and batch 1 of the
#    single-sequence engine beside it; with a GGUF Q4_K_M of the same shape in build/gpu-models/gguf (run.sh makes
#    it) llama.cpp's batched serving joins the same run.
# Writes benchmarks/results/gpu/<gpu>-batching.json (step 2) and <gpu>-serving.{json,md,html} (step 3).
# Environment: FORMATS=gptq,awq; LEVELS=1,8,32,64; VOCAB_GGUF=FILE (llama.cpp's ggml-vocab-llama-bpe.gguf, else
# fetched with pip); PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
MODELS=build/gpu-models
RECORDS=benchmarks/results/gpu
FORMATS=${FORMATS:-gptq,awq}
LEVELS=${LEVELS:-1,8,32,64}
step() { echo "==> $*" >&2; }
GPU=$($PY -c "import sys, torch; sys.path.insert(0, 'benchmarks/gpu'); from bench_all import slug
print(slug(torch.cuda.get_device_name()) if torch.cuda.is_available() else '')")
[ -n "$GPU" ] || { echo "batching.sh: torch sees no CUDA GPU" >&2; exit 1; }
mkdir -p "$RECORDS"

step "synthetic 8B-shape models in $MODELS"
only=(); for f in ${FORMATS//,/ }; do only+=(--only "$f"); done
$PY benchmarks/gpu/synth.py --out "$MODELS" "${only[@]}" ${VOCAB_GGUF:+--vocab-gguf "$VOCAB_GGUF"}

models=()
for f in ${FORMATS//,/ }; do
  step "the engine in-process, $f: $RECORDS/$GPU-batching-$f.json"
  $PY benchmarks/gpu/batch_decode.py "$MODELS/$f" --batches "$LEVELS" --json "$RECORDS/$GPU-batching-$f.json"
  models+=("$MODELS/$f")
done
gguf=$(ls "$MODELS"/gguf/*.gguf 2> /dev/null | head -1 || true)
[ -n "$gguf" ] && models+=("$gguf")

step "through quantdeploy serve, $LEVELS streaming clients: $RECORDS/$GPU-serving.{json,md,html}"
$PY -m quantdeploy bench "${models[@]}" --concurrency "$LEVELS" --prompt-tokens 128 --new-tokens 256 --repeat 1 \
  --requests-per-client 1 --no-warm-load -o "$RECORDS/$GPU-serving.json" -o "$RECORDS/$GPU-serving.md" \
  -o "$RECORDS/$GPU-serving.html"
echo "batching.sh: done; $RECORDS/$GPU-serving.md" >&2
