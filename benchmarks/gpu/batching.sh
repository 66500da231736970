#!/usr/bin/env bash
# Many users on one GPU: the batching engine's record. On a machine with an NVIDIA GPU, after ./install.sh:
#
#     bash benchmarks/gpu/batching.sh
#
# 1. writes 8B-shape synthetic GPTQ, AWQ and GGUF Q4_K_M models to build/gpu-models/ (synth.py; kept),
# 2. batch_decode.py per GPTQ / AWQ model: the engine in-process at batch 1, 8, 32 and 64 (aggregate and decode
#    tok/s, host ms per step, weight GB/s) and each sequence's greedy tokens in a batch against the same sequence
#    alone; for the GGUF model the baseline: llama.cpp's own batched decode (llama_batched.py) and llama.cpp
#    behind quantdeploy's scheduler (batch_decode.py, with the same check),
# 3. `quantdeploy bench --concurrency 1,8,32,64`: every model through `quantdeploy serve` to N streaming clients
#    (128-token prompts, 256 new tokens): aggregate tok/s, TTFT and inter-token latency p50/p95, and batch 1 of the
#    model loaded as serve loads it beside it; the GGUF model is llama.cpp's batched decode behind the same server.
# Writes benchmarks/results/gpu/<gpu>-batching-<format>.json and <gpu>-llama-batched.json (step 2) and
# <gpu>-serving.{json,md,html} (step 3).
# Environment: FORMATS=gptq,awq,gguf; LEVELS=1,8,32,64; STEPS=decode,serve (step 2, step 3); PROMPT_CHUNK=N (prompt
# tokens per batched step, both steps; default the engine's); VOCAB_GGUF=FILE (llama.cpp's ggml-vocab-llama-bpe.gguf,
# else fetched with pip); PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
MODELS=build/gpu-models
RECORDS=benchmarks/results/gpu
FORMATS=${FORMATS:-gptq,awq,gguf}
LEVELS=${LEVELS:-1,8,32,64}
STEPS=${STEPS:-decode,serve}
step() { echo "==> $*" >&2; }
GPU=$($PY -c "import sys, torch; sys.path.insert(0, 'benchmarks/gpu'); from bench_all import slug
print(slug(torch.cuda.get_device_name()) if torch.cuda.is_available() else '')")
[ -n "$GPU" ] || { echo "batching.sh: torch sees no CUDA GPU" >&2; exit 1; }
mkdir -p "$RECORDS"

step "synthetic 8B-shape models in $MODELS"
only=(); for f in ${FORMATS//,/ }; do only+=(--only "$f"); done
$PY benchmarks/gpu/synth.py --out "$MODELS" "${only[@]}" ${VOCAB_GGUF:+--vocab-gguf "$VOCAB_GGUF"}

reports=()
for f in ${FORMATS//,/ }; do
  [[ ",$STEPS," != *,decode,* ]] && continue
  if [ "$f" = gguf ]; then  # the baseline: llama.cpp's own batched decode, then llama.cpp behind our scheduler
    g=("$MODELS"/gguf/*.gguf)
    step "llama.cpp batched, alone and behind the scheduler: $RECORDS/$GPU-llama-batched.json, $GPU-batching-gguf.json"
    $PY benchmarks/gpu/llama_batched.py "${g[0]}" --batches "$LEVELS" --json "$RECORDS/$GPU-llama-batched.json"
    $PY benchmarks/gpu/batch_decode.py "${g[0]}" --batches "$LEVELS" --check-seqs 16 \
      --json "$RECORDS/$GPU-batching-gguf.json" ${PROMPT_CHUNK:+--prompt-chunk "$PROMPT_CHUNK"}
    continue
  fi
  step "the engine in-process, $f: $RECORDS/$GPU-batching-$f.json"
  $PY benchmarks/gpu/batch_decode.py "$MODELS/$f" --batches "$LEVELS" --check-seqs 16 --json "$RECORDS/$GPU-batching-$f.json" \
    ${PROMPT_CHUNK:+--prompt-chunk "$PROMPT_CHUNK"}
done
[[ ",$STEPS," == *,serve,* ]] || { echo "batching.sh: done" >&2; exit 0; }
models=()
for f in ${FORMATS//,/ }; do
  if [ "$f" = gguf ]; then models+=("$MODELS"/gguf/*.gguf); else models+=("$MODELS/$f"); fi
done

# each model in its own process (llama.cpp's CUDA build and torch's CUDA libraries can crash in one), then one report
step "through quantdeploy serve, $LEVELS streaming clients: $RECORDS/$GPU-serving.{json,md,html}"
mkdir -p build/serving
for m in "${models[@]}"; do
  out="build/serving/$(basename "$m").json"
  $PY -m quantdeploy bench "$m" --concurrency "$LEVELS" --prompt-tokens 128 --new-tokens 256 --repeat 1 \
    --requests-per-client 1 --no-warm-load ${PROMPT_CHUNK:+--prompt-chunk "$PROMPT_CHUNK"} -o "$out"
  reports+=("$out")
done
$PY benchmarks/gpu/merge_reports.py "${reports[@]}" -o "$RECORDS/$GPU-serving.json" -o "$RECORDS/$GPU-serving.md" \
  -o "$RECORDS/$GPU-serving.html" --command "bash benchmarks/gpu/batching.sh"
echo "batching.sh: done; $RECORDS/$GPU-serving.md" >&2
