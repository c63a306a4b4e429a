#!/usr/bin/env bash
# One command for a GPU machine with no network: build lstm_fused with CUDA, run the GPU tests,
# then the GPU benchmark suite (against cuDNN, and FlashRNN when its wheel is in .whl/).
#   bash benchmarks/gpu_session.sh
# Environment:
#   OUT=DIR                 logs, JSON and PNG go here (default .gpu_out/)
#   BENCH=default|quick|full|none   which benchmark grid (default: default)
#   TESTS="pytest args"     extra arguments for pytest on tests/test_cuda.py (e.g. "-x -k parity")
#   BENCH_ARGS="..."        extra arguments for benchmarks.run (e.g. "--filter 'T1024' --budget 0.3")
#   CPU_TESTS=1             also run the CPU op tests (tests/test_ops.py)
#   VARIANTS=1              also time the kernels' step-sync variants (benchmarks/cuda_variants.py)
#   LSTM_FUSED_CUDA_ARCHS   archs to build for (default 90 here: one arch builds faster)
# Exit code: non-zero when the build, a test or the benchmark failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-.gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "== installing wheels from .whl/ into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  2>&1 | tee "$OUT/env.txt"

echo "== build"
start=$(date +%s)
# In place rather than `pip install -e .`: with no network, pip's editable path (setup.py develop)
# tries to fetch setuptools into an isolated build environment and fails.
if ! LSTM_FUSED_CUDA_ARCHS=${LSTM_FUSED_CUDA_ARCHS:-90} "$PY" setup.py build_ext --inplace \
    >"$OUT/build.log" 2>&1; then
  tail -n 80 "$OUT/build.log"
  echo "== BUILD FAILED"
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | head -40
"$PY" -c "import lstm_fused; assert lstm_fused.built_with_cuda(), 'built without CUDA'; print('lstm_fused built with CUDA')" \
  || exit 1

echo "== GPU tests"
# shellcheck disable=SC2086
"$PY" -m pytest -q -rfE tests/test_cuda.py ${TESTS:-} 2>&1 | tee "$OUT/test_cuda.log" | tail -n 60
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== GPU TESTS FAILED"; status=1; }

if [ "${CPU_TESTS:-0}" = 1 ]; then
  echo "== CPU op tests"
  "$PY" -m pytest -q tests/test_ops.py 2>&1 | tee "$OUT/test_cpu.log" | tail -n 20
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "${VARIANTS:-0}" = 1 ]; then
  echo "== step-sync variants"
  "$PY" -m benchmarks.cuda_variants --out "$OUT" ${VARIANTS_ARGS:-} 2>&1 | tee "$OUT/variants.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

BENCH=${BENCH:-default}
if [ "$BENCH" != none ]; then
  if [ -f benchmarks/run.py ]; then
    echo "== GPU benchmarks ($BENCH)"
    flag=()
    [ "$BENCH" = quick ] && flag=(--quick)
    [ "$BENCH" = full ] && flag=(--full)
    # shellcheck disable=SC2086
    eval "\"\$PY\" -m benchmarks.run --device cuda ${flag[*]} --out \"\$OUT\" ${BENCH_ARGS:-}" 2>&1 \
      | tee "$OUT/bench.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== BENCHMARK FAILED"; status=1; }
  else
    echo "== benchmarks/run.py is not there yet: skipping the benchmarks"
  fi
fi
exit $status
