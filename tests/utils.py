"""Shared helpers for the lstm_fused tests: paired models, inputs, runs and error reports.

A test builds a `Config`, gets torch's module (nn.LSTM, or nn.GRU for `cell="gru"`) and ours holding
the same weights from `make_pair`, draws one set of inputs with `make_data`, and runs both through
`run_model`, which returns every tensor worth comparing (outputs, final states, and the gradients of
the input, the initial states and every parameter under the same upstream gradient). A GRU's h0 is
make_data's h0 (P = H without a projection); c0 and its upstream gradient go unused.
"""

import contextlib
import copy
import dataclasses
import io
import pickle
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import lstm_fused

INPUT_KINDS = ("dense", "unbatched", "packed_sorted", "packed_unsorted")


@dataclasses.dataclass(frozen=True)
class Cell:
    """What tells an LSTM test from a GRU test: the modules and the fused ops they must run."""

    name: str
    torch_rnn: type
    fused_rnn: type
    torch_cell: type
    fused_cell: type
    n_states: int  # (h, c) or h
    forward_op: str
    backward_op: str
    # Ops that a fused implementation must not call from Python: torch's own kernels of the cell
    # and the pointwise work of a per-step Python loop.
    forbidden_ops: tuple


CELLS = {
    "lstm": Cell("lstm", nn.LSTM, lstm_fused.LSTM, nn.LSTMCell, lstm_fused.LSTMCell, 2,
                 "lstm_fused::forward", "lstm_fused::backward",
                 ("aten::lstm", "aten::_thnn_fused_lstm_cell", "aten::mkldnn_rnn", "aten::sigmoid",
                  "aten::tanh", "aten::lstm_cell")),
    "gru": Cell("gru", nn.GRU, lstm_fused.GRU, nn.GRUCell, lstm_fused.GRUCell, 1,
                "lstm_fused::gru_forward", "lstm_fused::gru_backward",
                ("aten::gru", "aten::_thnn_fused_gru_cell", "aten::sigmoid", "aten::tanh", "aten::gru_cell")),
}

CELL_NAMES = tuple(CELLS)


def per_cell(cases_by_cell, ids=str):
    """pytest parameters (cell, case) for a test whose cases differ by cell, from {cell: {name: case}}
    or {cell: [case, ...]} (named by ids), each with the id "cell-name"."""
    params = []
    for cell, cases in cases_by_cell.items():
        named = cases.items() if isinstance(cases, dict) else ((ids(case), case) for case in cases)
        params += [pytest.param(cell, case, id=f"{cell}-{name}") for name, case in named]
    return params


@dataclasses.dataclass(frozen=True)
class Config:
    T: int = 3
    B: int = 2
    I: int = 4
    H: int = 5
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    proj_size: int = 0
    dropout: float = 0.0
    input_kind: str = "dense"  # one of INPUT_KINDS
    with_state: bool = True  # pass (h0, c0) or let the module use zeros
    dtype: torch.dtype = torch.float64
    # Out of repr, and so of seed(): a GRU case draws the inputs of the LSTM case of its shape.
    cell: str = dataclasses.field(default="lstm", repr=False)  # a key of CELLS

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    @property
    def P(self):
        return self.proj_size or self.H

    @property
    def packed(self):
        return self.input_kind.startswith("packed")

    @property
    def lstm(self):
        return self.cell == "lstm"

    def module_kwargs(self):
        kwargs = dict(
            input_size=self.I,
            hidden_size=self.H,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
        )
        if self.lstm:
            kwargs["proj_size"] = self.proj_size
        else:
            assert self.proj_size == 0, "a GRU has no projection"
        return kwargs

    def seed(self):
        """A stable per-config seed: fresh inputs per case, the same ones run after run."""
        return zlib.crc32(repr(self).encode())


def make_pair(cfg, dtype=None, seed=None):
    """torch's module of cfg's cell and ours, with identical parameters (copied by name)."""
    dtype = dtype or cfg.dtype
    cell = CELLS[cfg.cell]
    torch.manual_seed(cfg.seed() if seed is None else seed)
    ref = cell.torch_rnn(**cfg.module_kwargs(), dtype=dtype)
    ours = cell.fused_rnn(**cfg.module_kwargs(), dtype=dtype)
    copy_params(ref, ours)
    return ref, ours


def copy_params(src, dst):
    src_params = dict(src.named_parameters())
    dst_params = dict(dst.named_parameters())
    assert list(src_params) == list(dst_params), (list(src_params), list(dst_params))
    with torch.no_grad():
        for name, p in dst_params.items():
            p.copy_(src_params[name])


def rand_lengths(T, B, gen):
    """B lengths in [1, T] with the longest equal to T, in random order."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[torch.randint(0, B, (1,), generator=gen)] = T
    return lengths


@dataclasses.dataclass
class Data:
    """One set of inputs and upstream gradients, in float64 (cast per run)."""

    x: torch.Tensor  # padded input in the module's layout ([T, B, I], [B, T, I] or [T, I])
    h0: torch.Tensor | None
    c0: torch.Tensor | None
    lengths: torch.Tensor | None  # packed only
    enforce_sorted: bool
    g_out: torch.Tensor  # upstream grad of the output (packed data when packed)
    g_h: torch.Tensor
    g_c: torch.Tensor


def make_data(cfg, seed=None):
    gen = torch.Generator().manual_seed(cfg.seed() + 1 if seed is None else seed)
    T, B, I = cfg.T, cfg.B, cfg.I
    LD = cfg.num_layers * cfg.D

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    lengths, enforce_sorted = None, True
    if cfg.input_kind == "unbatched":
        x = randn(T, I)
        state_batch = ()
        n_out = (T,)
    else:
        x = randn(B, T, I) if cfg.batch_first else randn(T, B, I)
        state_batch = (B,)
        n_out = (B, T) if cfg.batch_first else (T, B)
    if cfg.packed:
        lengths = rand_lengths(T, B, gen)
        if cfg.input_kind == "packed_sorted":
            lengths = lengths.sort(descending=True).values
        else:
            enforce_sorted = False
            if B > 1 and bool((lengths[:-1] >= lengths[1:]).all()):
                lengths = lengths.flip(0)  # make sure the unsorted path really permutes
        n_out = (int(lengths.sum()),)
    h0 = randn(LD, *state_batch, cfg.P) if cfg.with_state else None
    c0 = randn(LD, *state_batch, cfg.H) if cfg.with_state else None
    return Data(
        x=x,
        h0=h0,
        c0=c0,
        lengths=lengths,
        enforce_sorted=enforce_sorted,
        g_out=randn(*n_out, cfg.D * cfg.P),
        g_h=randn(LD, *state_batch, cfg.P),
        g_c=randn(LD, *state_batch, cfg.H),
    )


def call(model, cfg, inp, h0=None, c0=None):
    """model(inp, hx) with hx as cfg's cell takes it (none without h0); returns (out, h_n, c_n),
    c_n None for a GRU."""
    if not cfg.lstm:
        out, h_n = model(inp, h0)
        return out, h_n, None
    out, (h_n, c_n) = model(inp, None if h0 is None else (h0, c0))
    return out, h_n, c_n


def run_model(model, cfg, data, dtype=None, backward=True):
    """Runs model forward (and backward under data's upstream grads); returns named tensors.

    Keys: out (packed data when packed), h_n, c_n (an LSTM's), and with backward grad_x, grad_h0,
    grad_c0 (when states are given; grad_c0 an LSTM's) and grad_<param> for every parameter.
    """
    dtype = dtype or cfg.dtype
    x = data.x.to(dtype).requires_grad_(backward)
    inp = x
    if cfg.packed:
        inp = pack_padded_sequence(
            x, data.lengths, batch_first=cfg.batch_first, enforce_sorted=data.enforce_sorted
        )
    leaves = [("x", x)]
    h0 = c0 = None
    if cfg.with_state:
        h0 = data.h0.to(dtype).requires_grad_(backward)
        leaves.append(("h0", h0))
        if cfg.lstm:
            c0 = data.c0.to(dtype).requires_grad_(backward)
            leaves.append(("c0", c0))
    out, h_n, c_n = call(model, cfg, inp, h0, c0)
    if cfg.packed:
        assert isinstance(out, PackedSequence), type(out)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        if inp.sorted_indices is None:
            assert out.sorted_indices is None and out.unsorted_indices is None
        else:
            assert torch.equal(out.sorted_indices, inp.sorted_indices)
            assert torch.equal(out.unsorted_indices, inp.unsorted_indices)
        out = out.data
    result = {"out": out, "h_n": h_n}
    if cfg.lstm:
        result["c_n"] = c_n
    if not backward:
        return {k: v.detach() for k, v in result.items()}
    params = list(model.named_parameters())
    leaves += params
    loss = (out * data.g_out.to(dtype)).sum() + (h_n * data.g_h.to(dtype)).sum()
    if cfg.lstm:
        loss = loss + (c_n * data.g_c.to(dtype)).sum()
    grads = torch.autograd.grad(loss, [t for _, t in leaves])
    result = {k: v.detach() for k, v in result.items()}
    for (name, _), g in zip(leaves, grads):
        result["grad_" + name] = g
    return result


def report(name, actual, expected):
    """Prints and returns (max abs error, mean abs error) of actual against expected."""
    err = (actual.double() - expected.double()).abs()
    max_err = err.max().item() if err.numel() else 0.0
    mean_err = err.mean().item() if err.numel() else 0.0
    print(f"{name:28s} max abs err {max_err:.3e}  mean abs err {mean_err:.3e}")
    return max_err, mean_err


def assert_results_close(actual, expected, rtol, atol):
    """Compares two run_model results key by key (same keys, shapes, dtypes; close values)."""
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for key in expected:
        report(key, actual[key], expected[key])
    for key in expected:
        a, e = actual[key], expected[key]
        assert a.shape == e.shape, (key, a.shape, e.shape)
        assert a.dtype == e.dtype, (key, a.dtype, e.dtype)
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol * scale, msg=lambda m: f"{key}: {m}")


TOLERANCES = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-5, 1e-5)}


def assert_bf16_rule(ours, torch_bf16, ref64):
    """STYLE rule for half types: our error vs fp64 <= 2x torch's module's bf16 error + 1 bf16 ulp."""
    assert ours.keys() == ref64.keys() == torch_bf16.keys()
    failures = []
    for key in ref64:
        assert ours[key].dtype == torch.bfloat16, (key, ours[key].dtype)
        assert ours[key].shape == ref64[key].shape, (key, ours[key].shape, ref64[key].shape)
        ours_max, _ = report(key + " (ours)", ours[key], ref64[key])
        torch_max, _ = report(key + " (torch bf16)", torch_bf16[key], ref64[key])
        scale = max(1.0, ref64[key].abs().max().item()) if ref64[key].numel() else 1.0
        eps = 2.0**-8 * scale
        if not ours_max <= 2 * torch_max + eps:
            failures.append((key, ours_max, torch_max, eps))
    assert not failures, f"bf16 error above 2x torch's + eps (key, ours, torch, eps): {failures}"


class OpCounter(TorchDispatchMode):
    """Records the name of every op that reaches the Python dispatcher while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func.name()))
        return func(*args, **(kwargs or {}))

    def count(self, name):
        return sum(1 for c in self.calls if c.startswith(name))


def assert_fused(counter, cfg, backward):
    """counter saw one forward (and backward) op of cfg's cell per layer and direction, and none
    of the ops a fused run must not call."""
    cell = CELLS[cfg.cell]
    n_calls = cfg.num_layers * cfg.D
    names = sorted(set(counter.calls))
    assert counter.count(cell.forward_op) == n_calls, names
    if backward:
        assert counter.count(cell.backward_op) == n_calls, names
    bad = [c for c in counter.calls if c.startswith(cell.forbidden_ops)]
    assert not bad, f"non-fused ops called: {sorted(set(bad))}"


@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def roundtrip(how, module):
    """A copy of ``module`` made by copy.deepcopy, pickle, or torch.save / torch.load (whole module)."""
    if how == "deepcopy":
        return copy.deepcopy(module)
    if how == "pickle":
        return pickle.loads(pickle.dumps(module))
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# -- parity checks shared by the test files -----------------------------------------------------


def check_parity(cfg):
    """Outputs, final states and every gradient against torch's module, through the fused ops."""
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    expected = run_model(ref, cfg, data)
    with OpCounter() as counter:
        actual = run_model(ours, cfg, data)
    assert_results_close(actual, expected, *TOLERANCES[cfg.dtype])
    assert_fused(counter, cfg, backward=True)


def check_inference(cfg):
    """Outputs without autograd (the kernels save no activations), under no_grad and in inference
    mode."""
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    with torch.no_grad():
        expected = run_model(ref, cfg, data, backward=False)
        with OpCounter() as counter:
            actual = run_model(ours, cfg, data, backward=False)
    assert_results_close(actual, expected, *TOLERANCES[cfg.dtype])
    assert_fused(counter, cfg, backward=False)
    with torch.inference_mode():
        assert_results_close(run_model(ours, cfg, data, backward=False), expected, *TOLERANCES[cfg.dtype])


def check_bfloat16(cfg, backward=True):
    """Our bf16 error against an fp64 run is at most ~2x that of torch's module run in bf16."""
    ref_bf16, ours = make_pair(cfg)
    ref64, _ = make_pair(cfg, dtype=torch.float64)
    # The fp64 reference sees exactly the bf16 weights and inputs.
    ref64.load_state_dict({k: v.double() for k, v in ref_bf16.state_dict().items()})
    data = make_data(cfg)
    data.x, data.g_out, data.g_h, data.g_c = (
        t.bfloat16().double() for t in (data.x, data.g_out, data.g_h, data.g_c)
    )
    if cfg.with_state:
        data.h0, data.c0 = data.h0.bfloat16().double(), data.c0.bfloat16().double()
    with torch.set_grad_enabled(backward):
        expected = run_model(ref64, cfg, data, dtype=torch.float64, backward=backward)
        torch_bf16 = run_model(ref_bf16, cfg, data, backward=backward)
        with OpCounter() as counter:
            actual = run_model(ours, cfg, data, backward=backward)
    assert_bf16_rule(actual, torch_bf16, expected)
    assert_fused(counter, cfg, backward=backward)
