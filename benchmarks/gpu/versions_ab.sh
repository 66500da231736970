#!/usr/bin/env bash
# End-to-end A/B of this checkout against other versions of quantdeploy, alternated (benchmarks/gpu/ab_rows.sh).
# On the GPU machine, from the repository root, after source .device-kit/setup.sh and synth.py:
#   bash benchmarks/gpu/versions_ab.sh MODEL_DIR ROUNDS DIR|SETTING...
# Each DIR holds another version's quantdeploy/ (here: git archive REV quantdeploy | tar -x -C DIR) and is
# labelled by its name. PYTHONSAFEPATH: `python3 -m` would otherwise import this checkout before PYTHONPATH.
# A SETTING ("label:VAR=VALUE ...", ab_rows.sh) runs this checkout with that environment.
set -uo pipefail
MODEL=$1; ROUNDS=$2; shift 2
settings=('this checkout:')
for d in "$@"; do
  case $d in *:*) settings+=("$d"); continue ;; esac
  abs=$(cd "$d" && pwd)
  PYTHONSAFEPATH=1 PYTHONPATH="$abs:$PYTHONPATH" python3 -c "import quantdeploy, sys; \
    sys.exit(0 if quantdeploy.__file__.startswith('$abs/') else 'not imported from $abs: ' + quantdeploy.__file__)" \
    || exit 1
  settings+=("$(basename "$d"):PYTHONSAFEPATH=1 PYTHONPATH=$abs:$PYTHONPATH")
done
bash "$(dirname "$0")/ab_rows.sh" "$MODEL" "$ROUNDS" "${settings[@]}"
