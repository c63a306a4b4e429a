"""Each instruction-set copy of the CPU loops (AVX-512, AVX2, baseline) against torch.nn.LSTM.

The widest path the CPU supports runs everywhere else in the suite; LSTM_FUSED_CPU_ISA caps the
choice, read once per process, so each path runs here in a subprocess of its own.
"""
import os
import subprocess
import sys

import pytest

import lstm_fused

_ORDER = ["baseline", "avx2", "avx512"]

_SCRIPT = r"""
import sys, torch, lstm_fused
from torch.nn.utils.rnn import pack_sequence
assert lstm_fused.cpu_isa() == sys.argv[1], (lstm_fused.cpu_isa(), sys.argv[1])
torch.manual_seed(0)
worst = 0.0
for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
    # T >= 16: the forward packs W_hh, the backward packs it by column groups (with at most 16 rows
    # on AVX-512, any number with 16 registers; more rows read it in place on AVX-512).
    # T <= 4 with at most 4 rows (and no_grad below): W_hh read in place, the input fused too.
    for B, H, P, packed, T in ((1, 7, 0, False, 6), (3, 20, 0, True, 8), (9, 37, 0, False, 6), (6, 33, 19, True, 8),
                               (5, 16, 8, False, 6), (3, 21, 0, False, 20), (2, 18, 5, False, 17),
                               (3, 23, 0, False, 4), (1, 17, 6, False, 2), (4, 9, 0, True, 3),
                               (19, 24, 0, False, 16), (18, 13, 0, True, 17)):
        ref = torch.nn.LSTM(11, H, num_layers=2, bidirectional=True, proj_size=P, dtype=dtype)
        ours = lstm_fused.LSTM(11, H, num_layers=2, bidirectional=True, proj_size=P, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        if packed:
            seqs = [torch.randn(int(n), 11, dtype=dtype) for n in torch.randint(1, T + 1, (B,))]
            inp = pack_sequence(seqs, enforce_sorted=False)
        else:
            inp = torch.randn(T, B, 11, dtype=dtype, requires_grad=True)
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
"""


# Every path this CPU can run (all three on any AVX-512 machine, CI's included).
_AVAILABLE = _ORDER[: _ORDER.index(lstm_fused.cpu_isa()) + 1]


@pytest.mark.parametrize("isa", _AVAILABLE)
def test_isa_path_matches_nn_lstm(isa):
    env = dict(os.environ, LSTM_FUSED_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, isa], env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-2000:]
