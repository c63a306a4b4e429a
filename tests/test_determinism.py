"""Two identical calls give bitwise-identical outputs and gradients."""

import pytest
import torch

from utils import Config, make_data, make_pair, run_model

CONFIGS = [
    Config(T=9, B=6, I=17, H=33, num_layers=2, bidirectional=True, proj_size=7,
           dtype=torch.float32),
    Config(T=9, B=6, I=17, H=33, num_layers=2, bidirectional=True, input_kind="packed_unsorted",
           dtype=torch.float32),
    Config(T=16, B=32, I=64, H=128, num_layers=1, dtype=torch.float32),
    Config(T=7, B=5, I=8, H=24, num_layers=2, input_kind="packed_sorted", dtype=torch.bfloat16),
    Config(T=7, B=5, I=8, H=24, num_layers=3, bidirectional=True, dtype=torch.float64),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.input_kind}-H{c.H}-{c.dtype}")
def test_bitwise_deterministic(cfg):
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    first = run_model(ours, cfg, data)
    for _ in range(2):
        again = run_model(ours, cfg, data)
        for key in first:
            assert torch.equal(again[key], first[key]), key


def test_runs_under_use_deterministic_algorithms():
    cfg = Config(T=5, B=4, I=6, H=10, num_layers=2, bidirectional=True, dtype=torch.float32)
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = run_model(ours, cfg, data)
        again = run_model(ours, cfg, data)
    finally:
        torch.use_deterministic_algorithms(old)
    for key in first:
        assert torch.equal(again[key], first[key]), key
