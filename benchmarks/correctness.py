"""Correctness before speed: lstm_fused.LSTM and torch.nn.LSTM against a float64 nn.LSTM.

All three hold the same weights (load_state_dict; the float64 one gets the weights and inputs
already rounded to the tested dtype, so only the computation differs). For each config we compare
outputs, h_n, c_n and, for training configs, the gradients of the input, h0, c0 and every
parameter. Error = max |got - ref64| / max(1, max |ref64|) over all of those tensors. A config
passes when lstm_fused's error is at most max(2 x nn.LSTM's error, floor[dtype]): the STYLE.md
rule for half types (twice the same-dtype PyTorch error), with a small floor so that an exact
torch result does not demand an exact kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

FLOOR = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}


@dataclass(frozen=True)
class Check:
    name: str
    B: int = 3
    T: int = 7
    I: int = 10
    H: int = 16
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    lengths: Optional[tuple[int, ...]] = None
    dtype: str = "float32"
    training: bool = False


def checks_for(device: torch.device) -> list[Check]:
    half = ["bfloat16"] if device.type == "cpu" else ["float16", "bfloat16"]
    out = [
        Check("dense"),
        Check("packed", B=4, lengths=(7, 2, 5, 1)),
        Check("proj", proj=6),
        Check("bidirectional 2-layer", layers=2, bidirectional=True),
        Check("training grads dense", training=True),
        Check("training grads packed bi 2-layer proj", B=4, lengths=(3, 7, 1, 5), layers=2,
              bidirectional=True, proj=5, training=True),
    ]
    out += [Check(f"dense {d}", B=4, T=16, I=32, H=32, dtype=d) for d in half]
    out += [Check(f"training grads {d}", B=4, T=16, I=32, H=32, dtype=d, training=True) for d in half]
    return out


def _inputs(c: Check, dtype: torch.dtype, device: torch.device):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(c.T, c.B, c.I, generator=g).to(dtype)
    D, P = 2 if c.bidirectional else 1, c.proj or c.H
    h0 = (0.5 * torch.randn(D * c.layers, c.B, P, generator=g)).to(dtype)
    c0 = (0.5 * torch.randn(D * c.layers, c.B, c.H, generator=g)).to(dtype)
    return x, h0, c0


def _run(model: nn.Module, c: Check, x, h0, c0, device, dtype) -> list[torch.Tensor]:
    """Forward (and backward) on `device` in `dtype`; every compared tensor, as float64 on the CPU."""
    x = x.to(device=device, dtype=dtype).requires_grad_(c.training)
    h0 = h0.to(device=device, dtype=dtype).requires_grad_(c.training)
    c0 = c0.to(device=device, dtype=dtype).requires_grad_(c.training)
    inp = x
    if c.lengths is not None:
        inp = pack_padded_sequence(x, torch.tensor(c.lengths), enforce_sorted=False)
    out, (hn, cn) = model(inp, (h0, c0))
    y = out.data if isinstance(out, PackedSequence) else out
    got = [y, hn, cn]
    if c.training:
        g = torch.Generator().manual_seed(11)
        gy = torch.randn(y.shape, generator=g).to(device=device, dtype=dtype)
        params = list(model.parameters())
        got += list(torch.autograd.grad(y, [x, h0, c0] + params, grad_outputs=gy))
    return [t.detach().to("cpu", torch.float64) for t in got]


def _error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    err = 0.0
    for a, b in zip(got, ref):
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        if a.shape != b.shape:
            return float("inf")
        if a.numel():
            err = max(err, ((a - b).abs().max().item()) / scale)
    return err


def run_check(c: Check, device: torch.device) -> dict:
    import lstm_fused

    dtype = getattr(torch, c.dtype)
    kw = dict(input_size=c.I, hidden_size=c.H, num_layers=c.layers,
              bidirectional=c.bidirectional, proj_size=c.proj)
    torch.manual_seed(0)
    base = nn.LSTM(**kw)
    sd = {k: v.to(dtype) for k, v in base.state_dict().items()}
    x, h0, c0 = _inputs(c, dtype, device)

    ref64 = nn.LSTM(**kw).double()
    ref64.load_state_dict({k: v.double() for k, v in sd.items()})
    want = _run(ref64, c, x, h0, c0, torch.device("cpu"), torch.float64)

    theirs = nn.LSTM(**kw).to(device=device, dtype=dtype)
    theirs.load_state_dict(sd)
    err_torch = _error(_run(theirs, c, x, h0, c0, device, dtype), want)

    result = {"check": c.name, "dtype": c.dtype, "training": c.training, "err_nn.LSTM": err_torch}
    try:
        ours = lstm_fused.LSTM(**kw, device=device, dtype=dtype)
        ours.load_state_dict(sd)
        err_ours = _error(_run(ours, c, x, h0, c0, device, dtype), want)
    except Exception as e:
        result.update(err_lstm_fused=None, tolerance=None, ok=False, error=f"{type(e).__name__}: {e}")
        return result
    tol = max(2.0 * err_torch, FLOOR[c.dtype])
    result.update(err_lstm_fused=err_ours, tolerance=tol, ok=bool(err_ours <= tol))
    return result


def run_all(device: torch.device) -> list[dict]:
    results = []
    print(f"== correctness on {device.type}: max error vs float64 nn.LSTM (relative to max(1,|ref|))")
    for c in checks_for(device):
        r = run_check(c, device)
        status = "ok" if r["ok"] else "MISMATCH"
        if "error" in r:
            print(f"  {c.name:40s} {c.dtype:9s} lstm_fused raised {r['error']}  {status}")
        else:
            print(f"  {c.name:40s} {c.dtype:9s} lstm_fused {r['err_lstm_fused']:.2e}  "
                  f"nn.LSTM {r['err_nn.LSTM']:.2e}  tol {r['tolerance']:.1e}  {status}")
        results.append(r)
    return results
