#!/usr/bin/env bash
# End-to-end A/B on a CUDA GPU: the benchmark of record's engine row (512-token prompt, 256 new tokens, 3 repeats,
# median decode tok/s) for each variant in turn, one process each, alternated for PASSES passes so that the
# machine's drift falls on every variant alike. From the repository root:
#
#   bash benchmarks/experiments/ab.sh MODEL_DIR PASSES VARIANT...
#
# A VARIANT is either "label:VAR=VALUE ..." (this checkout with that environment; "defaults:" for none), e.g.
# 'int8 head:QUANTDEPLOY_LM_HEAD=int8', or a directory that holds another version's quantdeploy/, labelled by its name
# (make one with: mkdir -p /tmp/old && git archive REV quantdeploy | tar -x -C /tmp/old).
# MODEL_DIR: a synthetic model from benchmarks/gpu/synth.py (build/gpu-models/gptq after run.sh).
set -euo pipefail
MODEL=$1; PASSES=$2; shift 2
PY=${PYTHON:-python3}
variants=()
for v in "$@"; do
  case $v in *:*) variants+=("$v"); continue ;; esac
  abs=$(cd "$v" && pwd)
  # PYTHONSAFEPATH: `python -m` would otherwise import this checkout before PYTHONPATH
  PYTHONSAFEPATH=1 PYTHONPATH="$abs" $PY -c "import quantdeploy, sys; \
    sys.exit(0 if quantdeploy.__file__.startswith('$abs/') else 'not imported from $abs: ' + quantdeploy.__file__)"
  variants+=("$(basename "$abs"):PYTHONSAFEPATH=1 PYTHONPATH=$abs")
done
for p in $(seq 1 "$PASSES"); do
  echo "pass $p"
  for v in "${variants[@]}"; do
    label=${v%%:*}; vars=${v#*:}
    printf '  %-40s ' "$label"
    # shellcheck disable=SC2086  # vars is a list of VAR=VALUE words
    env $vars $PY -m quantdeploy bench "$MODEL" --engine fast --device cuda --json --no-warm-load \
      --prompt-tokens 512 --new-tokens 256 --repeat 3 2> /dev/null | $PY -c \
      "import json, sys; r = json.load(sys.stdin)['results'][0]; print(r['decode_tok_s'], 'tok/s, TTFT', r['ttft_ms'], 'ms')" 2> /dev/null \
      || echo "failed (run the command without --json to see why)"
  done
done
