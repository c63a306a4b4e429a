"""The CPU ops' large buffers (saved gates and cells, y, the backward's dgates and h_prev) come from
memory kept between calls (csrc/ops/buffer_cache.cpp): reused as it is, capped by
LSTM_FUSED_CPU_CACHE_MB, freed by lstm_fused.empty_cache()."""

import os
import subprocess
import sys
import threading

import torch

import lstm_fused
from lstm_fused import _C

fwd_op = torch.ops.lstm_fused.forward

# I = H = 128, B = 16, T = 160: y, cells and h_prev are 1.25 MB each, gates and dgates 5 MB (the
# cache takes blocks from 1 MB on).
T, B, H = 160, 16, 128


def forward_args(seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, H, generator=gen) * scale
    w_ih, w_hh = (torch.randn(4 * H, H, generator=gen) * H**-0.5 for _ in range(2))
    b = torch.randn(4 * H, generator=gen) * 0.1
    h0, c0 = torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
    return x, w_ih, w_hh, b, b, None, h0, c0, None, False, True


def make_step(seed, scale=1.0, cls=lstm_fused.LSTM):
    """A module and its input, from the global generator (not thread-safe: build before threads)."""
    torch.manual_seed(seed)
    return cls(H, H), torch.randn(T, B, H) * scale


def run_step(m, x):
    x = x.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y, (h, c) = m(x)
    (y.square().sum() + h.sum() + c.sum()).backward()
    return [y.detach(), h.detach(), c.detach(), x.grad] + [p.grad for p in m.parameters()]


def training_step(seed, scale=1.0, cls=lstm_fused.LSTM):
    return run_step(*make_step(seed, scale, cls))


def test_blocks_are_reused_by_the_next_call_of_the_same_sizes():
    lstm_fused.empty_cache()
    assert _C.cached_bytes() == 0
    out = fwd_op(*forward_args(0))
    first = {t.data_ptr() for t in (out[0], out[3], out[4])}
    sizes = sum(t.numel() * t.element_size() for t in (out[0], out[3], out[4]))
    del out
    assert _C.cached_bytes() == sizes
    out = fwd_op(*forward_args(1))
    assert {t.data_ptr() for t in (out[0], out[3], out[4])} == first
    assert _C.cached_bytes() == 0
    del out
    lstm_fused.empty_cache()
    assert _C.cached_bytes() == 0


def test_reused_memory_gives_the_results_of_fresh_memory():
    # A step on other values (scale 30) leaves its buffers, full of them, for the third to reuse.
    lstm_fused.empty_cache()
    fresh = training_step(seed=1)
    training_step(seed=2, scale=30.0)
    assert _C.cached_bytes() > 0
    reused = training_step(seed=1)
    for a, b in zip(fresh, reused):
        assert torch.equal(a, b)
    expect = training_step(seed=1, cls=torch.nn.LSTM)
    for a, b in zip(reused, expect):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4)


def test_outputs_on_kept_memory_resize_and_outlive_the_cache():
    y = fwd_op(*forward_args(0))[0]
    values = y.clone()
    lstm_fused.empty_cache()  # frees only blocks no tensor holds
    assert torch.equal(y, values)
    y.resize_(2 * y.numel())
    assert torch.equal(y[: values.numel()], values.flatten())
    del y
    assert _C.cached_bytes() > 0
    lstm_fused.empty_cache()


def test_calls_from_several_threads():
    expect = training_step(seed=3)
    steps = [make_step(seed=3) for _ in range(4)]
    results = [None] * len(steps)

    def work(i):
        for _ in range(3):
            results[i] = run_step(*steps[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        for a, b in zip(r, expect):
            assert torch.equal(a, b)


def _run_with_limit(mb, code):
    env = dict(os.environ, LSTM_FUSED_CPU_CACHE_MB=str(mb))
    prelude = f"import torch, lstm_fused\nfrom lstm_fused import _C\nimport sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\nfrom test_memory import *\n"
    r = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_limit_zero_keeps_nothing_and_gives_the_same_results():
    code = "r = training_step(seed=4)\nprint(_C.cached_bytes(), sum(t.double().sum().item() for t in r).hex())"
    expect = sum(t.double().sum().item() for t in training_step(seed=4)).hex()
    assert _run_with_limit(0, code).split() == ["0", expect]


def test_limit_drops_the_oldest_blocks_and_frees_larger_ones():
    # Gates 5 MB, y and cells 1.25 MB each, freed in that order.
    code = """
out = torch.ops.lstm_fused.forward(*forward_args(0))
y, g, c = out[0], out[3], out[4]
del out
small = y.nbytes
del g
print(_C.cached_bytes() // small)
del y
print(_C.cached_bytes() // small)
del c
print(_C.cached_bytes() // small)
"""
    # 6 MB: the gates are kept, then dropped (the oldest) to make room for y.
    assert _run_with_limit(6, code).split() == ["4", "1", "2"]
    # 4 MB: the gates alone are past the limit.
    assert _run_with_limit(4, code).split() == ["0", "1", "2"]
