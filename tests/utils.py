"""Shared helpers for the lstm_fused tests: paired models, inputs, runs and error reports.

A test builds a `Config`, gets an `nn.LSTM` and an `lstm_fused.LSTM` holding the same weights from
`make_pair`, draws one set of inputs with `make_data`, and runs both through `run_model`, which
returns every tensor worth comparing (outputs, final states, and the gradients of the input, the
initial states and every parameter under the same upstream gradient).
"""

import contextlib
import copy
import dataclasses
import io
import pickle
import zlib

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import lstm_fused

INPUT_KINDS = ("dense", "unbatched", "packed_sorted", "packed_unsorted")


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

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    @property
    def P(self):
        return self.proj_size or self.H

    @property
    def packed(self):
        return self.input_kind.startswith("packed")

    def module_kwargs(self):
        return dict(
            input_size=self.I,
            hidden_size=self.H,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
        )

    def seed(self):
        """A stable per-config seed: fresh inputs per case, the same ones run after run."""
        return zlib.crc32(repr(self).encode())


def make_pair(cfg, dtype=None, seed=None):
    """An nn.LSTM and an lstm_fused.LSTM with identical parameters (copied by name)."""
    dtype = dtype or cfg.dtype
    torch.manual_seed(cfg.seed() if seed is None else seed)
    ref = nn.LSTM(**cfg.module_kwargs(), dtype=dtype)
    ours = lstm_fused.LSTM(**cfg.module_kwargs(), dtype=dtype)
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


def run_model(model, cfg, data, dtype=None, backward=True):
    """Runs model forward (and backward under data's upstream grads); returns named tensors.

    Keys: out (packed data when packed), h_n, c_n, and with backward grad_x, grad_h0, grad_c0
    (when states are given) and grad_<param> for every parameter.
    """
    dtype = dtype or cfg.dtype
    x = data.x.to(dtype).requires_grad_(backward)
    inp = x
    if cfg.packed:
        inp = pack_padded_sequence(
            x, data.lengths, batch_first=cfg.batch_first, enforce_sorted=data.enforce_sorted
        )
    leaves = [("x", x)]
    hx = None
    if cfg.with_state:
        h0 = data.h0.to(dtype).requires_grad_(backward)
        c0 = data.c0.to(dtype).requires_grad_(backward)
        hx = (h0, c0)
        leaves += [("h0", h0), ("c0", c0)]
    out, (h_n, c_n) = model(inp, hx)
    if cfg.packed:
        assert isinstance(out, PackedSequence), type(out)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        if inp.sorted_indices is None:
            assert out.sorted_indices is None and out.unsorted_indices is None
        else:
            assert torch.equal(out.sorted_indices, inp.sorted_indices)
            assert torch.equal(out.unsorted_indices, inp.unsorted_indices)
        out = out.data
    result = {"out": out, "h_n": h_n, "c_n": c_n}
    if not backward:
        return {k: v.detach() for k, v in result.items()}
    params = list(model.named_parameters())
    leaves += params
    loss = (
        (out * data.g_out.to(dtype)).sum()
        + (h_n * data.g_h.to(dtype)).sum()
        + (c_n * data.g_c.to(dtype)).sum()
    )
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
    """STYLE rule for half types: our error vs fp64 <= 2x nn.LSTM-in-bf16's error + 1 bf16 ulp."""
    assert ours.keys() == ref64.keys() == torch_bf16.keys()
    failures = []
    for key in ref64:
        assert ours[key].dtype == torch.bfloat16, (key, ours[key].dtype)
        assert ours[key].shape == ref64[key].shape, (key, ours[key].shape, ref64[key].shape)
        ours_max, _ = report(key + " (ours)", ours[key], ref64[key])
        torch_max, _ = report(key + " (nn.LSTM bf16)", torch_bf16[key], ref64[key])
        scale = max(1.0, ref64[key].abs().max().item()) if ref64[key].numel() else 1.0
        eps = 2.0**-8 * scale
        if not ours_max <= 2 * torch_max + eps:
            failures.append((key, ours_max, torch_max, eps))
    assert not failures, f"bf16 error above 2x nn.LSTM's + eps (key, ours, torch, eps): {failures}"


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


# Ops that a fused implementation must not call from Python: nn.LSTM's own kernels and the
# pointwise work of a per-step Python loop.
FORBIDDEN_OPS = ("aten::lstm", "aten::_thnn_fused_lstm_cell", "aten::mkldnn_rnn",
                 "aten::sigmoid", "aten::tanh", "aten::lstm_cell")


def assert_fused(counter, cfg, backward):
    n_calls = cfg.num_layers * cfg.D
    names = sorted(set(counter.calls))
    assert counter.count("lstm_fused::forward") == n_calls, names
    if backward:
        assert counter.count("lstm_fused::backward") == n_calls, names
    bad = [c for c in counter.calls if c.startswith(FORBIDDEN_OPS)]
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
