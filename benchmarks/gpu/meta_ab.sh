#!/usr/bin/env bash
# The compact GEMV meta (2 bytes per group for one zero point, 2.5 with packed zero points, instead of 4) measured:
# the GPU tests, alternated end-to-end rows against QUANTDEPLOY_GEMV_META=words (GPTQ and AWQ), then the side-by-side
# rows of record (engine, llama.cpp, transformers + Marlin). On the GPU machine, from the repository root:
#   setsid nohup bash benchmarks/gpu/meta_ab.sh RESULTS_DIR > .device-build/meta_ab.log 2>&1 &
# and poll for "meta_ab.sh finished" (~15 minutes on a fresh H200: llama.cpp's CUDA build and Marlin's JIT compile
# run in the background while the tests and the A/B rows use the GPU).
# ROUNDS (3; 0: no A/B rows), TESTS (the GPU test files; none: no tests) and ROWS (bench_all.py --only; llama.cpp
# is built and the GGUF model written only for a gguf row, Marlin compiled only for hf-* rows). OLD=DIR (a directory
# holding another version's quantdeploy/, e.g. from `git archive REV quantdeploy | tar -x -C DIR`): the A/B rows
# are this checkout against that version (versions_ab.sh) instead of compact meta against the words.
set -uo pipefail
OUT=${1:-.device-build/results}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-gptq,awq,gptq-meta-words,gptq-int8-head,gguf,hf-gptq,hf-awq}
M=.device-build/synth
source benchmarks/gpu/kit.sh  # kit: the device kit, with the pypcre stand-in patched
kit
mkdir -p "$OUT"
GGUF=0; case ",$ROWS," in *,gguf,*) GGUF=1 ;; esac
[ $GGUF = 1 ] && bash .device-kit/build-llama-cuda.sh
python3 benchmarks/gpu/synth.py --out "$M" --only gptq --only awq $([ $GGUF = 1 ] && echo --only gguf)
case ",$ROWS" in *,hf-*)
  (setsid nohup python3 benchmarks/gpu/warm_marlin.py "$M/gptq" "$M/awq" > .device-build/marlin.log 2>&1 &) ;;
esac
TESTS=${TESTS:-tests/test_cuda_gemv.py tests/test_engine.py}
if [ "$TESTS" != none ]; then
  # shellcheck disable=SC2086
  python3 -m pytest -q -p no:cacheprovider -m gpu $TESTS > "$OUT/pytest-gpu.txt" 2>&1
  echo "pytest exit $?" >> "$OUT/pytest-gpu.txt"
  tail -3 "$OUT/pytest-gpu.txt"
fi
ab() {  # alternated rows for one model: against OLD's version (versions_ab.sh), else compact meta against the words
  if [ -n "${OLD:-}" ]; then bash benchmarks/gpu/versions_ab.sh "$1" "$ROUNDS" "$OLD"
  else bash benchmarks/gpu/ab_rows.sh "$1" "$ROUNDS" 'compact meta (defaults):' 'meta words:QUANTDEPLOY_GEMV_META=words'
  fi
}
if [ "$ROUNDS" != 0 ]; then
  { echo "# GPTQ (sym: one zero point, 8)"
    ab "$M/gptq"
    echo "# AWQ (zero points per group)"
    ab "$M/awq"
  } > "$OUT/meta-ab.txt" 2>&1
  cat "$OUT/meta-ab.txt"
fi
while pgrep -f "gpu/warm_marlin[.]py" > /dev/null; do sleep 5; done
if [ $GGUF = 1 ]; then
  bash .device-kit/build-llama-cuda.sh --wait 600
  kit  # installs the llama-cpp-python wheel built meanwhile
fi
python3 benchmarks/gpu/bench_all.py --models "$M" --out "$OUT" \
  --only "$ROWS" > "$OUT/bench_all.log" 2>&1
tail -25 "$OUT/bench_all.log"
echo "meta_ab.sh finished"
