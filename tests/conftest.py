import os
import sys
import tempfile

import pytest

# A fresh inductor cache per run: cached compiled graphs are not keyed on our fake kernels, so a
# cache left by an older build could replay stale output strides.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lstm_fused_inductor_"))

# tests/utils.py and tests/ddp_worker.py import as top-level modules (also in spawned processes).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark: smoke test of the benchmark suite (runs in CI)")
    config.addinivalue_line("markers", "compile: torch.compile / torch.export tests (slow-ish)")
    config.addinivalue_line("markers", "distributed: multi-process DistributedDataParallel tests")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield
