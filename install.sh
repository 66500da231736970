#!/usr/bin/env bash
# Install quantdeploy into the current python3 (or $PYTHON), with llama-cpp-python built for this machine.
#   ./install.sh          the tool
#   ./install.sh --test   the tool and what the tests need
# Safe to re-run: what is already installed and working is kept.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

log "installing quantdeploy$EXTRAS and its Python dependencies"
$PY -m pip install -q --disable-pip-version-check -e ".$EXTRAS"

# llama-cpp-python: never a blind `pip install` — a native (-march=native) build segfaults on quantized GGUF on
# AMX CPUs, and a CPU-only build on a GPU machine silently runs on the CPU.
VARIANT=cpu
if command -v nvcc > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then VARIANT=cuda; fi
LLAMA_VERSION=0.3.36
if $PY - "$VARIANT" <<'PY' > /dev/null 2>&1
import subprocess, sys
import llama_cpp
want_gpu = sys.argv[1] == "cuda"
if bool(llama_cpp.llama_supports_gpu_offload()) != want_gpu:
    sys.exit(1)
# evaluate a quantized GGUF in a child process: a crash there (the AMX segfault) means rebuild
code = ("import quantdeploy as q; m = q.load(); "
        "g = m.generate('Hello', q.GenerationParams(max_tokens=2, temperature=0)); list(g)")
sys.exit(subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300).returncode)
PY
then
  log "llama-cpp-python already installed and working ($VARIANT)"
else
  WHEELS="${QUANTDEPLOY_HOME:-$HOME/.cache/quantdeploy}/wheels/llama-$VARIANT"
  WHEEL=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl 2> /dev/null | head -1 || true)
  if [ -z "$WHEEL" ]; then
    if [ "$VARIANT" = cuda ]; then
      export CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF"
    else
      export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    fi
    log "building llama-cpp-python $LLAMA_VERSION for $VARIANT (CMAKE_ARGS=$CMAKE_ARGS); about 5 min on 2 cores"
    mkdir -p "$WHEELS"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip wheel -q --no-deps --no-cache-dir -w "$WHEELS" \
      "llama-cpp-python==$LLAMA_VERSION"
    WHEEL=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl | head -1)
  fi
  log "installing $(basename "$WHEEL")"
  $PY -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
fi
command -v pyenv > /dev/null 2>&1 && pyenv rehash || true
log "done: $($PY -m quantdeploy --help > /dev/null && echo 'quantdeploy is ready')"
