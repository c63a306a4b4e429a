"""Each instruction-set copy of the CPU loops (AMX, AVX-512, AVX2, baseline) against torch.nn.LSTM
and torch.nn.GRU.

The widest path the CPU supports runs everywhere else in the suite; LSTM_FUSED_CPU_ISA caps the
choice, read once per process, so each path runs here in a subprocess of its own.
"""
import os
import subprocess
import sys

import pytest

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
