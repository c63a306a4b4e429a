#!/usr/bin/env bash
# One command for a new user on a fresh machine: installs what is missing, builds lstm_fused if
# needed, then runs the benchmark suite. Arguments go to `python3 -m benchmarks.run`, e.g.
#   bash benchmarks/run.sh                 # default grid (CPU: a few minutes on 2 cores)
#   bash benchmarks/run.sh --quick         # smoke test
#   bash benchmarks/run.sh --full          # the wide grid (long)
#   bash benchmarks/run.sh --device cuda   # GPU grid against cuDNN (and FlashRNN if installed)
# matplotlib (the PNG plot), onnx and onnxruntime (ONNX Runtime as a CPU serving contender) are
# benchmark-only dependencies; the package itself does not need them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install torch==2.13.0
fi
missing=()
for mod in numpy ninja pybind11 matplotlib onnx onnxscript onnxruntime; do
    "$PY" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install "${missing[@]}"
fi
# Built and from this tree's csrc/ (lstm_fused/_provenance.py), else (re)build.
if ! "$PY" -c 'import sys, lstm_fused; sys.exit(lstm_fused._provenance.build_matches_source() is False)' 2>/dev/null; then
    "$PY" -m pip install --no-build-isolation -e .
fi
exec "$PY" -m benchmarks.run "$@"
