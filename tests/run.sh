#!/usr/bin/env bash
# The test command: sets up what is missing on a fresh machine, builds the extension if needed,
# then runs the pytest suite. Extra arguments go to pytest (e.g. `bash tests/run.sh -k parity -x`).
#   LSTM_FUSED_REBUILD=1   rebuild the extension even if it imports and matches csrc/
#   PYTHON=python3.11      the interpreter to use (default python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "== installing torch==2.13.0"
  "$PYTHON" -m pip install "torch==2.13.0"
fi
missing=()
for module in numpy pytest ninja pybind11; do
  "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  "$PYTHON" -m pip install "${missing[@]}"
fi

# Built and from this tree's csrc/ (lstm_fused/_provenance.py), else (re)build.
current='import sys, lstm_fused; sys.exit(lstm_fused._provenance.build_matches_source() is False)'
if [[ "${LSTM_FUSED_REBUILD:-0}" == 1 ]] || ! "$PYTHON" -c "$current" 2>/dev/null; then
  echo "== building lstm_fused (pip install --no-build-isolation -e .)"
  "$PYTHON" -m pip install --no-build-isolation -e .
fi

exec "$PYTHON" -m pytest -q tests "$@"
