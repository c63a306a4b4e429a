"""FLOPs and bytes of a case: the performance model of docs/ARCHITECTURE.md.

FLOPs per layer and direction: 2*rows*4H*(I_l + P), plus 2*rows*H*P with a projection
(rows = T*B dense, sum(lengths) packed; I_l = I for layer 0, D*P above it); x3 for training
(forward + backward: dgates->dx/dh and the weight-gradient GEMMs each cost about a forward).

Fewest bytes ("fused"): read x and the weights once, write y and the final states (read h0/c0);
training adds the saved activations (gates 4H + cells H per row in the accumulation dtype, written
in forward, read in backward), reading grad_y, x and y again, reading the weights again, writing dx
and the weight gradients. A streaming loop pays all of that once per call.
"Unfused" adds re-reading W_hh every step after the first (twice per step when training: forward
and backward), which is what a non-persistent kernel does.
"""
from __future__ import annotations

from .cases import Case

ELEMENT_SIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def _acc_size(dtype: str) -> int:
    return 4 if dtype in ("float16", "bfloat16") else ELEMENT_SIZE[dtype]


def _gates(case: Case) -> int:
    return 3 if case.cell == "gru" else 4


def _layer_inputs(case: Case) -> list[int]:
    return [case.I] + [case.directions * case.P] * (case.layers - 1)


def flops(case: Case) -> float:
    H, P, D = case.H, case.P, case.directions
    total = 0.0
    for i_l in _layer_inputs(case):
        per_dir = 2.0 * case.rows * _gates(case) * H * (i_l + P)
        if case.proj:
            per_dir += 2.0 * case.rows * H * P
        total += D * per_dir
    return 3.0 * total if case.training else total


def _weight_bytes(case: Case, i_l: int, es: int) -> int:
    H, P = case.H, case.P
    g = _gates(case)
    n = g * H * i_l + g * H * P + 2 * g * H + (P * H if case.proj else 0)
    return case.directions * n * es


def _one_call_bytes(case: Case, rows: int, steps: int) -> tuple[float, float]:
    """(fused, unfused) bytes of one call processing `rows` rows over `steps` time steps."""
    es, acc = ELEMENT_SIZE[case.dtype], _acc_size(case.dtype)
    H, P, D, B = case.H, case.P, case.directions, case.B
    fused = unfused = 0.0
    for i_l in _layer_inputs(case):
        w = _weight_bytes(case, i_l, es)
        x = rows * i_l * es
        y = rows * D * P * es
        # read h0, c0; write h_n, c_n (a GRU: h alone)
        states = 2 * D * B * (P + (H if case.cell == "lstm" else 0)) * es
        layer = x + w + y + states
        w_hh_step = D * _gates(case) * H * P * es
        if case.training:
            saved = D * rows * (_gates(case) + 1) * H * acc  # the gates and c (a GRU: h W_hn^T + b_hn)
            layer += 2 * saved + y + x + y + w + x + w  # grad_y, x, y, W again; dx, dW
            extra = 2 * max(steps - 1, 0) * w_hh_step
        else:
            extra = max(steps - 1, 0) * w_hh_step
        fused += layer
        unfused += layer + extra
    return fused, unfused


def bytes_moved(case: Case) -> tuple[float, float]:
    """(fused, unfused) bytes of the whole timed unit (one call, or the whole streaming loop)."""
    if case.stream_calls:
        f, u = _one_call_bytes(case, rows=case.B, steps=1)
        return f * case.stream_calls, u * case.stream_calls
    return _one_call_bytes(case, rows=case.rows, steps=case.T)


def rates(case: Case, seconds: float) -> dict:
    """Achieved GFLOP/s and GB/s of a contender that took `seconds` for the case's timed unit."""
    f, (b, bu) = flops(case), bytes_moved(case)
    return {
        "gflops": f / seconds / 1e9,
        "gbps": b / seconds / 1e9,
        "gbps_unfused": bu / seconds / 1e9,
    }
