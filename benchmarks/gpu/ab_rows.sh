#!/usr/bin/env bash
# End-to-end A/B of engine settings: the bench of record's GPTQ row (512-token prompt, 256 new tokens, 3 repeats,
# median decode tok/s), one process per setting, the settings alternated for ROUNDS rounds, so that the machine's
# drift falls on all of them. On the GPU machine, from the repository root, after source .device-kit/setup.sh:
#   bash benchmarks/gpu/ab_rows.sh MODEL_DIR ROUNDS 'defaults:' 'rope kernel:QUANTDEPLOY_FUSE_ROPE=0' ...
# A setting is "label:VAR=VALUE VAR=VALUE" (nothing after the colon: the defaults).
set -uo pipefail
MODEL=$1; ROUNDS=$2; shift 2
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  for s in "$@"; do
    label=${s%%:*}; vars=${s#*:}
    printf '  %-40s ' "$label"
    env $vars python3 -m quantdeploy bench "$MODEL" --engine fast --device cuda --json --no-warm-load \
      --prompt-tokens 512 --new-tokens 256 --repeat 3 2> /dev/null | python3 -c \
      "import json, sys; r = json.load(sys.stdin)['results'][0]; print(r['decode_tok_s'], 'tok/s, TTFT', r['ttft_ms'], 'ms')" \
      || echo "failed"
  done
done
