"""Smoke test of the benchmark suite's --quick mode (the README's benchmark command, shrunk)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_quick_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--no-plot", "--device", "cpu",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    print(proc.stdout[-4000:])
    print(proc.stderr[-4000:])
    assert proc.returncode == 0
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert len(files) == 1, files
    with open(tmp_path / files[0]) as f:
        payload = json.load(f)
    assert payload["correctness"] and all(r["ok"] for r in payload["correctness"])
    assert payload["complete"] is True
    results = payload["results"]
    assert results, "no benchmark cases ran"
    errors = [r for r in results if r.get("error")]
    assert not errors, errors
