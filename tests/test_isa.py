"""Each instruction-set copy of the CPU loops (AMX, AVX-512, AVX2, baseline) against torch.nn.LSTM
and torch.nn.GRU, and each copy of the int8 loops (AVX512-VNNI, ymm VNNI, AVX2, baseline) against
the int8 reference and each other.

The widest path the CPU supports runs everywhere else in the suite; LSTM_FUSED_CPU_ISA caps the
choice, read once per process, so each path runs here in a subprocess of its own.
"""
import os
import subprocess
import sys

import pytest
import torch

import lstm_fused
from utils import CELL_NAMES

_ORDER = ["baseline", "avx2", "avx512", "amx"]

_PRELUDE = r"""
import sys, torch, lstm_fused
from torch.nn.utils.rnn import pack_sequence
assert lstm_fused.cpu_isa() == sys.argv[1], (lstm_fused.cpu_isa(), sys.argv[1])
torch.manual_seed(0)
worst = 0.0


def pair(cls, H, dtype, **kwargs):
    # torch's module and ours, 2 layers both ways on inputs of 11 features, on the same weights.
    ref = getattr(torch.nn, cls)(11, H, num_layers=2, bidirectional=True, dtype=dtype, **kwargs)
    ours = getattr(lstm_fused, cls)(11, H, num_layers=2, bidirectional=True, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def rand_input(B, T, packed, dtype):
    # B sequences of 1 to T steps packed unsorted, or a [T, B, 11] input that wants its gradient.
    if packed:
        seqs = [torch.randn(int(n), 11, dtype=dtype) for n in torch.randint(1, T + 1, (B,))]
        return pack_sequence(seqs, enforce_sorted=False)
    return torch.randn(T, B, 11, dtype=dtype, requires_grad=True)


"""

_SCRIPTS = {
    "lstm": _PRELUDE + r"""
for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
    # T >= 16: the forward packs W_hh, the backward packs it by column groups (with at most 16 rows
    # on AVX-512, any number with 16 registers; more rows read it in place on AVX-512).
    # T <= 4 with at most 4 rows (and no_grad below): W_hh read in place, the input fused too.
    for B, H, P, packed, T in ((1, 7, 0, False, 6), (3, 20, 0, True, 8), (9, 37, 0, False, 6), (6, 33, 19, True, 8),
                               (5, 16, 8, False, 6), (3, 21, 0, False, 20), (2, 18, 5, False, 17),
                               (3, 23, 0, False, 4), (1, 17, 6, False, 2), (4, 9, 0, True, 3),
                               (19, 24, 0, False, 16), (18, 13, 0, True, 17)):
        ref, ours = pair("LSTM", H, dtype, proj_size=P)
        inp = rand_input(B, T, packed, dtype)
        res = []
        for m in (ref, ours):
            y, (h, c) = m(inp)
            y = y.data if packed else y
            loss = (y * y.detach().sin()).sum() + h.sum() + (c * c).sum()
            res.append([y, h, c] + list(torch.autograd.grad(loss, list(m.parameters()))))
            with torch.no_grad():
                y, (h, c) = m(inp)
            res[-1] += [y.data if packed else y, h, c]
        for a, b in zip(*res):
            err = ((a - b).abs().max() / (b.abs().max() + 1)).item()
            worst = max(worst, err)
            assert err < tol, (dtype, B, H, P, packed, err)
print("max scaled error", worst)
# bfloat16 (AMX tiles on "amx", vdpbf16ps on "avx512" with AVX512-BF16, fp32 elsewhere): against
# nn.LSTM in fp64 on the same bf16 values, within twice nn.LSTM's own bf16 error plus 1e-2 (scaled).
# Batches of 20 and 40 fill AMX row tiles (pairs, a partial one) and take the input on them; 3 and
# packed 18 (rows shrink by step) run partial tiles; I = 11 and H = 21 pad k to 32.
for B, H, packed, T in ((20, 40, False, 17), (3, 21, False, 20), (18, 13, True, 17), (40, 24, False, 16)):
    ref, ours = pair("LSTM", H, torch.bfloat16)
    ref64 = torch.nn.LSTM(11, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    if packed:
        seqs = [torch.randn(int(n), 11).bfloat16() for n in torch.randint(1, T + 1, (B,))]
        inputs = [pack_sequence(seqs, enforce_sorted=False), pack_sequence([q.double() for q in seqs], enforce_sorted=False)]
    else:
        x = torch.randn(T, B, 11).bfloat16()
        inputs = [x, x.double()]
    res = []
    for m, inp in ((ours, inputs[0]), (ref, inputs[0]), (ref64, inputs[1])):
        x_in = inp if packed else inp.clone().requires_grad_()
        y, (h, c) = m(x_in)
        y = y.data if packed else y
        loss = (y.double() * y.double().detach().sin()).sum() + h.double().sum() + (c.double() ** 2).sum()
        res.append([t.double() for t in [y, h, c] + list(torch.autograd.grad(loss, list(m.parameters())))])
        with torch.no_grad():
            y, (h, c) = m(inp)
        res[-1] += [t.double() for t in (y.data if packed else y, h, c)]
    for a, b, e in zip(*res):
        scale = e.abs().max() + 1
        err, torch_err = ((a - e).abs().max() / scale).item(), ((b - e).abs().max() / scale).item()
        assert err <= 2 * torch_err + 1e-2, ("bf16", B, H, packed, err, torch_err)
        worst = max(worst, err)
print("max scaled error with bf16", worst)
""",
    # "amx" runs the AVX-512 loops for a GRU: its tiles are the LSTM's.
    "gru": _PRELUDE + r"""
for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
    # T >= 16 packs W_hh for the register tiles (and the backward's column groups); short
    # sequences of few rows, and one step of up to 32 rows, read W_hh in place.
    for B, H, packed, T in ((1, 7, False, 6), (3, 20, True, 8), (9, 37, False, 6), (3, 21, False, 20),
                            (19, 24, False, 16), (18, 13, True, 17), (1, 40, False, 24), (33, 16, False, 1)):
        ref, ours = pair("GRU", H, dtype)
        inp = rand_input(B, T, packed, dtype)
        res = []
        for m in (ref, ours):
            y, h = m(inp)
            y = y.data if packed else y
            params = list(m.parameters()) + ([] if packed else [inp])
            grads = torch.autograd.grad(y.square().sum() + h.sum(), params)
            res.append([y, h, *grads])
        err = max(((a - b).abs().max() / (b.abs().max() + 1)).item() for a, b in zip(*res))
        assert err <= tol, (dtype, B, H, packed, T, err)
        worst = max(worst, err)
print("ok", worst)
""",
}


# Every path this CPU can run (three on any AVX-512 machine, four with AMX).
_AVAILABLE = _ORDER[: _ORDER.index(lstm_fused.cpu_isa()) + 1]


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("isa", _AVAILABLE)
def test_isa_path_matches_torch(cell, isa):
    env = dict(os.environ, LSTM_FUSED_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", _SCRIPTS[cell], isa], env=env, capture_output=True, text=True,
                          timeout=600)
    print(proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


# The int8 kernels' paths (q8.cpp): LSTM_FUSED_CPU_ISA=avx512 (or amx) caps them at AVX512-VNNI,
# avx_vnni at ymm VNNI (AVX-VNNI's VEX copy where the CPU has it, else AVX512-VNNI's EVEX one).
_INT8_ORDER = ["baseline", "avx2", "avx_vnni", "avx512_vnni"]
_INT8_AVAILABLE = _INT8_ORDER[: _INT8_ORDER.index(lstm_fused.int8_isa()) + 1]
_INT8_ENV = {"baseline": "baseline", "avx2": "avx2", "avx_vnni": "avx_vnni", "avx512_vnni": "avx512"}

_INT8_SCRIPT = r"""
import sys, torch, lstm_fused
from torch import nn
from torch.nn.utils.rnn import pack_sequence
from lstm_fused import ops, quantized as qz
assert lstm_fused.int8_isa() == sys.argv[1], (lstm_fused.int8_isa(), sys.argv[1])
torch.manual_seed(0)
outs = []
# q8_linear: the exact int8 product on every tile shape (rows 1..7, odd K, blocks past a tile).
for N, K, M in ((1, 1, 16), (7, 37, 100), (13, 260, 72)):
    w, x = torch.randn(M, K), torch.randn(N, K)
    W = list(ops.q8_pack(w, 1))
    got = ops.q8_linear(x, W, None)[:, :M]
    q, s = qz.unpack_weight(W[0], W[1], M, 1, K)
    assert torch.equal(got, qz._int8_product(x, q, qz.natural_order(W[2], M, 1), s)), (N, K, M)
    outs.append(got)
# Layers: B < 4 runs the input projection before the loop, B >= 32 (from 4 with two threads) in it;
# packed rows; projections.
for cls, kw, B, T, packed in ((nn.LSTM, {}, 1, 7, False), (nn.LSTM, dict(proj_size=6), 9, 5, False),
                              (nn.LSTM, dict(bidirectional=True), 6, 9, True), (nn.GRU, {}, 3, 8, False),
                              (nn.GRU, dict(bidirectional=True), 11, 6, True), (nn.LSTM, {}, 40, 3, False)):
    q = lstm_fused.quantize_dynamic(cls(11, 37, num_layers=2, **kw))
    x = torch.randn(T, B, 11)
    with torch.no_grad():
        if packed:
            seqs = [x[: int(n), b] for b, n in enumerate(torch.randint(1, T + 1, (B,)))]
            outs.append(q(pack_sequence(seqs, enforce_sorted=False))[0].data)
        else:
            y = q(x)[0]
            want = lstm_fused.int8_reference(q, x)[0]
            diff = (y - want).abs()
            assert diff.max() <= 2e-3 and (diff <= 1e-6).float().mean() >= 0.8, (cls, kw, B, diff.max())
            outs.append(y)
torch.save(outs, sys.argv[2])
print("ok")
"""


def test_int8_isa_paths_match_the_reference_and_each_other(tmp_path):
    results = {}
    for isa in _INT8_AVAILABLE:
        path = str(tmp_path / f"{isa}.pt")
        env = dict(os.environ, LSTM_FUSED_CPU_ISA=_INT8_ENV[isa])
        proc = subprocess.run([sys.executable, "-c", _INT8_SCRIPT, isa, path], env=env, capture_output=True, text=True,
                              timeout=600)
        print(isa, proc.stdout, proc.stderr[-2000:])
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
        results[isa] = torch.load(path)
    # The int32 sums are exact on every path and every float operation is rounded on its own, so
    # the paths on the portable activations (16- and 32-byte vectors) agree bit for bit; AVX-512's
    # exp differs from theirs in the last ulps.
    portable = [isa for isa in results if isa != "avx512_vnni"]
    for isa in portable[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[isa], results[portable[0]])), isa
    if "avx512_vnni" in results and portable:
        for a, b in zip(results["avx512_vnni"], results[portable[0]]):
            diff = (a - b).abs()
            assert diff.max() <= 2e-3 and (diff <= 1e-6).float().mean() >= 0.8
