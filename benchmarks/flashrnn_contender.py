"""FlashRNN (NX-AI, `pip install flashrnn`) as an optional GPU contender.

FlashRNN's LSTM takes the input projection precomputed: Wx [B, T, 4, NH, D] (batch-first, gates
i, f, g, o like torch), R [4, NH, D, D] with R[g, 0, d, p] = weight_hh[g*H + d, p], b [4, NH, D];
it returns states [S, B, T, NH, D] whose [0] is h. We use one head (NH=1, D=H), so the same
weights as torch.nn.LSTM; the input projection (x @ W_ih^T + b_ih) is part of its timed unit, as it
is inside nn.LSTM and lstm_fused. Its input is fed batch-first (its native layout), converted once
outside the timing. Its CUDA backend JIT-compiles a module per (batch, hidden size, dtype) on first
use (excluded from timing, but it takes minutes).

Never fatal: whatever fails (import, compile, an unsupported shape) comes back as a reason string
that the caller prints and writes to the JSON. The first forward is compared with nn.LSTM and the
maximum error recorded, so a wrong weight mapping shows.
"""
from __future__ import annotations

import traceback
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cases import Case


def unsupported_reason(case: Case, device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "FlashRNN runs on CUDA only"
    if case.layers != 1 or case.bidirectional or case.proj or case.lengths is not None:
        return "FlashRNN has no multi-layer, bidirectional, proj_size or packed LSTM"
    if case.stream_calls:
        return "streaming not set up for FlashRNN"
    return None


def build(
    case: Case, ref: nn.Module, inp, grad_out, device: torch.device, backend: str
) -> tuple[Optional[Callable[[], object]], Optional[str], dict]:
    """(timed callable or None, reason it cannot run or None, notes)."""
    reason = unsupported_reason(case, device)
    if reason:
        return None, reason, {}
    try:
        from flashrnn import flashrnn
    except Exception as e:
        return None, f"flashrnn not importable: {type(e).__name__}: {e}", {}

    B, T, H = case.B, case.T, case.H
    train = case.training

    def param(t: torch.Tensor, *shape) -> torch.Tensor:
        return t.detach().reshape(*shape).clone().requires_grad_(train)

    w_ih = param(ref.weight_ih_l0, 4 * H, case.I)
    b_ih = param(ref.bias_ih_l0, 4 * H)
    R = param(ref.weight_hh_l0, 4, 1, H, H)
    b = param(ref.bias_hh_l0, 4, 1, H)
    x = inp.detach().transpose(0, 1).contiguous().requires_grad_(train)

    def forward() -> torch.Tensor:
        wx = F.linear(x, w_ih, b_ih).view(B, T, 4, 1, H)
        states, _ = flashrnn(Wx=wx, R=R, b=b, function="lstm", backend=backend, dtype=case.dtype)
        return states[0].reshape(B, T, H)

    notes: dict = {"backend": backend}
    try:
        with torch.no_grad():
            got = forward().float()
            want = ref(inp.detach())[0].transpose(0, 1).float()
        notes["max_abs_err_vs_nn.LSTM"] = (got - want).abs().max().item()
    except Exception as e:
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return None, f"flashrnn failed on this case: {type(e).__name__}: {e} ({tb})", notes

    if not train:

        def infer():
            with torch.inference_mode():
                return forward()

        return infer, None, notes

    gy = grad_out.transpose(0, 1).contiguous()
    wrt = [x, w_ih, b_ih, R, b]

    def train_step():
        return torch.autograd.grad(forward(), wrt, grad_outputs=gy)

    try:
        train_step()
    except Exception as e:
        return None, f"flashrnn backward failed: {type(e).__name__}: {e}", notes
    return train_step, None, notes
