import os
import sys

import pytest

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
