"""The contenders of a case, built with the same weights and fed the same inputs.

`build(case, device)` returns zero-argument callables, one per contender, each doing the case's
timed unit: an inference forward (under torch.inference_mode), a training forward+backward
(torch.autograd.grad of the output against a fixed random output gradient, w.r.t. the input and
every parameter, so nothing accumulates between calls), or a whole streaming loop of one-step calls
carrying (h, c) (h for a GRU). Contenders: "lstm_fused" (ours), "nn.LSTM" (torch's module: oneDNN on
CPU, cuDNN on GPU; torch.nn.GRU on the GRU's rows, which keep the name), and where
asked "reference" (lstm_fused.reference.lstm_reference) and "flashrnn" (GPU); on the CPU's fp32
fp32 inference rows the serving contenders of benchmarks/serving.py (lstm_fused's int8 modules;
on the LSTM's, ONNX Runtime fp32 and int8 and torch.ao int8). A contender that cannot run a case
is left out with its reason in `skipped` (printed and written to the JSON by the caller).
Model rows (benchmarks/models.py) keep the two names: "nn.LSTM" is then the model as written, with
torch's modules, and "lstm_fused" the same model after lstm_fused.convert.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import flashrnn_contender, serving
from .cases import Case

OURS, TORCH, REFERENCE, FLASHRNN = "lstm_fused", "nn.LSTM", "reference", "flashrnn"


@dataclass
class Contenders:
    fns: dict[str, Callable[[], object]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # contender -> why it did not run
    notes: dict[str, object] = field(default_factory=dict)  # e.g. FlashRNN's max error vs nn.LSTM


def lstm_kwargs(case: Case) -> dict:
    kw = dict(input_size=case.I, hidden_size=case.H, num_layers=case.layers, bidirectional=case.bidirectional)
    return kw if case.cell == "gru" else dict(kw, proj_size=case.proj)


def make_pair(case: Case, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(torch.nn.LSTM, lstm_fused.LSTM), or the GRUs, holding the same weights, in the case's dtype
    and mode."""
    import lstm_fused

    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    torch_cls, ours_cls = (nn.GRU, lstm_fused.GRU) if case.cell == "gru" else (nn.LSTM, lstm_fused.LSTM)
    ref = torch_cls(**lstm_kwargs(case)).to(device=device, dtype=dtype)
    ours = ours_cls(**lstm_kwargs(case), device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    ref.train(case.training)
    ours.train(case.training)
    return ref, ours


def make_input(case: Case, device: torch.device):
    """Dense [T, B, I] tensor, or a PackedSequence (unsorted lengths), requiring grad when training."""
    dtype = getattr(torch, case.dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.T, case.B, case.I, generator=g).to(device=device, dtype=dtype)
    if case.lengths is None:
        return x.requires_grad_(case.training)
    packed = pack_padded_sequence(x, torch.tensor(case.lengths), enforce_sorted=False)
    return PackedSequence(
        packed.data.detach().requires_grad_(case.training),
        packed.batch_sizes,
        packed.sorted_indices,
        packed.unsorted_indices,
    )


def _data(t):
    return t.data if isinstance(t, PackedSequence) else t


def _inference_fn(model: nn.Module, inp) -> Callable[[], object]:
    def fn():
        with torch.inference_mode():
            return model(inp)

    return fn


def _training_fn(model: nn.Module, inp, grad_out: torch.Tensor) -> Callable[[], object]:
    wrt = [_data(inp)] + [p for p in model.parameters()]

    def fn():
        out, _ = model(inp)
        return torch.autograd.grad(_data(out), wrt, grad_outputs=grad_out)

    return fn


def _stream_fn(model: nn.Module, case: Case, device: torch.device) -> Callable[[], object]:
    dtype = getattr(torch, case.dtype)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(1, case.B, case.I, generator=g).to(device, dtype) for _ in range(case.stream_calls)]
    n = case.layers * case.directions
    state0 = torch.zeros(n, case.B, case.P, device=device, dtype=dtype)
    if case.cell == "lstm":
        state0 = (state0, torch.zeros(n, case.B, case.H, device=device, dtype=dtype))

    mode = torch.no_grad if case.no_grad else torch.inference_mode

    def fn():
        with mode():
            state = state0
            for x in xs:
                y, state = model(x, state)
            return y

    return fn


def _unit_fn(model: nn.Module, case: Case, inp, grad_out, device) -> Callable[[], object]:
    if case.stream_calls:
        return _stream_fn(model, case, device)
    if case.training:
        return _training_fn(model, inp, grad_out)
    return _inference_fn(model, inp)


def _output_grad(case: Case, inp, device) -> torch.Tensor:
    rows = _data(inp).shape[0] if case.lengths is not None else None
    shape = (rows,) if rows is not None else (case.T, case.B)
    g = torch.Generator().manual_seed(3)
    gy = torch.randn(*shape, case.directions * case.P, generator=g)
    return gy.to(device=device, dtype=getattr(torch, case.dtype))


def _make_reference(case: Case, ref: nn.Module) -> nn.Module:
    """The package's oracle (lstm_fused.reference.lstm_reference) on nn.LSTM's parameters,
    computing in the case's dtype (a pure-PyTorch time loop: the baseline to beat by far)."""
    from lstm_fused.reference import lstm_reference

    dtype = getattr(torch, case.dtype)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = ref

        def forward(self, inp, hx=None):
            return lstm_reference(self.lstm, inp, hx, compute_dtype=dtype)

    return Reference()


def build(case, device: torch.device, flashrnn_backend: str | None) -> Contenders:
    """flashrnn_backend: FlashRNN's backend name, or None not to time FlashRNN at all.
    A ModelCase goes to benchmarks.models, which checks and builds its two models."""
    if case.kind == "model":
        from . import models

        return models.build(case, device)
    out = Contenders()
    ref, ours = make_pair(case, device)
    inp = None if case.stream_calls else make_input(case, device)
    grad_out = _output_grad(case, inp, device) if case.training else None

    out.fns[OURS] = _unit_fn(ours, case, inp, grad_out, device)
    out.fns[TORCH] = _unit_fn(ref, case, inp, grad_out, device)

    serving.add(case, ref, device, out, None if case.stream_calls else inp,
                lambda m: _unit_fn(m, case, inp, grad_out, device))

    if case.reference:
        try:
            model = _make_reference(case, ref)
            out.fns[REFERENCE] = _unit_fn(model, case, inp, grad_out, device)
        except Exception as e:  # the oracle is an optional baseline: record why it did not run
            out.skipped[REFERENCE] = f"{type(e).__name__}: {e}"

    if case.flashrnn and flashrnn_backend:
        fn, err, note = flashrnn_contender.build(case, ref, inp, grad_out, device, flashrnn_backend)
        if fn is not None:
            out.fns[FLASHRNN] = fn
        if err:
            out.skipped[FLASHRNN] = err
        if note:
            out.notes[FLASHRNN] = note
    return out
