"""Shared helpers for the GRU tests: paired torch.nn.GRU / lstm_fused.GRU, runs and op counts.

The configurations, inputs and reports are tests/utils.py's (Config, make_data, report, ...): a
GRU's h0 is make_data's h0 (P = H without a projection); c0 and its upstream gradient go unused.
"""

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_fused
from utils import copy_params


def gru_kwargs(cfg):
    kwargs = cfg.module_kwargs()
    assert kwargs.pop("proj_size") == 0, "a GRU has no projection"
    return kwargs


def make_gru_pair(cfg, dtype=None, seed=None):
    """An nn.GRU and an lstm_fused.GRU with identical parameters (copied by name)."""
    dtype = dtype or cfg.dtype
    torch.manual_seed(cfg.seed() if seed is None else seed)
    ref = nn.GRU(**gru_kwargs(cfg), dtype=dtype)
    ours = lstm_fused.GRU(**gru_kwargs(cfg), dtype=dtype)
    copy_params(ref, ours)
    return ref, ours


def run_gru(model, cfg, data, dtype=None, backward=True):
    """Runs a GRU forward (and backward under data's upstream grads); returns named tensors.

    Keys: out (packed data when packed), h_n, and with backward grad_x, grad_h0 (when a state is
    given) and grad_<param> for every parameter.
    """
    dtype = dtype or cfg.dtype
    x = data.x.to(dtype).requires_grad_(backward)
    inp = x
    if cfg.packed:
        inp = pack_padded_sequence(x, data.lengths, batch_first=cfg.batch_first, enforce_sorted=data.enforce_sorted)
    leaves = [("x", x)]
    h0 = None
    if cfg.with_state:
        h0 = data.h0.to(dtype).requires_grad_(backward)
        leaves.append(("h0", h0))
    out, h_n = model(inp, h0)
    if cfg.packed:
        assert isinstance(out, PackedSequence), type(out)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            got, want = getattr(out, name), getattr(inp, name)
            assert (got is None and want is None) or torch.equal(got, want), name
        out = out.data
    result = {"out": out, "h_n": h_n}
    if not backward:
        return {k: v.detach() for k, v in result.items()}
    leaves += list(model.named_parameters())
    loss = (out * data.g_out.to(dtype)).sum() + (h_n * data.g_h.to(dtype)).sum()
    grads = torch.autograd.grad(loss, [t for _, t in leaves])
    result = {k: v.detach() for k, v in result.items()}
    for (name, _), g in zip(leaves, grads):
        result["grad_" + name] = g
    return result


# Ops that a fused GRU must not call from Python: torch's own GRU kernels and the pointwise work of
# a per-step Python loop.
FORBIDDEN_GRU_OPS = ("aten::gru", "aten::_thnn_fused_gru_cell", "aten::sigmoid", "aten::tanh", "aten::gru_cell")


def assert_gru_fused(counter, cfg, backward):
    """counter (utils.OpCounter) saw one gru_forward (and gru_backward) per layer and direction."""
    n_calls = cfg.num_layers * cfg.D
    names = sorted(set(counter.calls))
    assert counter.count("lstm_fused::gru_forward") == n_calls, names
    if backward:
        assert counter.count("lstm_fused::gru_backward") == n_calls, names
    bad = [c for c in counter.calls if c.startswith(FORBIDDEN_GRU_OPS)]
    assert not bad, f"non-fused ops called: {sorted(set(bad))}"
