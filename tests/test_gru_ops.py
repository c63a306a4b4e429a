"""The GRU's custom ops: lstm_fused::gru_forward against an explicit float64 loop of its contract,
fp64 gradcheck, torch.library.opcheck on gru_forward and gru_backward. (Every instruction-set copy
of the CPU loops against torch's own GRU is in test_isa.py.)"""
import pytest
import torch

import lstm_fused  # noqa: F401  (loads the ops)
from utils import rand_lengths

fwd_op = torch.ops.lstm_fused.gru_forward
bwd_op = torch.ops.lstm_fused.gru_backward


def gru_args(T=4, B=3, I=5, H=6, bias=True, packed=False, first_batch=None, reverse=False, save=True,
             dtype=torch.float64, requires_grad=False, seed=0):
    """Arguments of lstm_fused::gru_forward; packed with first_batch < B leaves sequences idle."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_(requires_grad)

    batch_sizes = None
    if packed:
        lengths = rand_lengths(T, first_batch or B, gen).sort(descending=True).values
        batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.int64)
        x = randn(int(batch_sizes.sum()), I)
    else:
        x = randn(T, B, I)
    k = H**-0.5
    w_ih, w_hh = randn(3 * H, I, scale=k), randn(3 * H, H, scale=k)
    b_ih, b_hh = (randn(3 * H, scale=k), randn(3 * H, scale=k)) if bias else (None, None)
    return (x, w_ih, w_hh, b_ih, b_hh, randn(B, H), batch_sizes, reverse, save)


def gru_loop(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, save=True):
    """The op's contract as a float64 loop over each step's rows: y, h_n, gates (r, z, n), hn."""
    f64 = lambda t: None if t is None else t.detach().double()
    x, w_ih, w_hh, b_ih, b_hh, h = map(f64, (x, w_ih, w_hh, b_ih, b_hh, h0))
    H = w_hh.shape[1]
    dense_shape = None
    if batch_sizes is None:
        dense_shape, (T, B) = x.shape, x.shape[:2]
        x = x.reshape(T * B, -1)
        sizes = [B] * T
    else:
        sizes = batch_sizes.tolist()
    offs = [sum(sizes[:t]) for t in range(len(sizes))]
    y, gates, hn_rows = x.new_zeros(x.shape[0], H), x.new_zeros(x.shape[0], 3 * H), x.new_zeros(x.shape[0], H)
    h = h.clone()
    for t in (reversed(range(len(sizes))) if reverse else range(len(sizes))):
        rows = slice(offs[t], offs[t] + sizes[t])
        hp = h[: sizes[t]]
        gi = x[rows] @ w_ih.T + (b_ih if b_ih is not None else 0)
        gh = hp @ w_hh.T + (b_hh if b_hh is not None else 0)
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        hnew = (1 - z) * n + z * hp
        y[rows], gates[rows], hn_rows[rows] = hnew, torch.cat([r, z, n], 1), gh[:, 2 * H:]
        h = torch.cat([hnew, h[sizes[t]:]])
    if dense_shape is not None:
        y = y.view(*dense_shape[:2], H)
    return y, h, gates, hn_rows


CASES = {
    "dense": dict(T=5, B=3, I=4, H=6),
    "dense_nobias": dict(T=5, B=3, I=4, H=6, bias=False),
    "reverse": dict(T=6, B=2, I=3, H=5, reverse=True),
    "packed": dict(T=6, B=4, I=3, H=7, packed=True),
    "packed_idle_rows": dict(T=6, B=5, I=3, H=7, packed=True, first_batch=3),
    "packed_reverse": dict(T=7, B=4, I=5, H=9, packed=True, reverse=True),
    "tiles": dict(T=18, B=7, I=9, H=20),  # packs W_hh (the register tiles), both directions
    "tiles_reverse_packed": dict(T=17, B=6, I=5, H=19, packed=True, reverse=True),
    "one_step_many_rows": dict(T=1, B=40, I=6, H=8),
    "wide_h": dict(T=3, B=2, I=4, H=70),
    "stream_step": dict(T=1, B=1, I=6, H=33),
    "stream_packed": dict(T=4, B=4, I=5, H=17, packed=True, first_batch=3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gru_forward_op_contract(case, dtype):
    args = gru_args(**case, dtype=dtype)
    got = fwd_op(*args)
    want = gru_loop(*args)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2}[dtype]
    for name, g, w in zip(("y", "h_n", "gates", "hn"), got, want):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol, msg=name)
    assert got[2].dtype == got[3].dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    # Without save: a few steps of up to 4 rows take the input projection in the kernel.
    y, h, _, _ = fwd_op(*args[:-1], False)
    torch.testing.assert_close(y.double(), want[0], atol=tol, rtol=tol)
    torch.testing.assert_close(h.double(), want[1], atol=tol, rtol=tol)


def test_gru_forward_without_save_returns_empty_activations_and_the_same_outputs():
    args = gru_args(T=6, B=3, H=8)
    y, h, g, hn = fwd_op(*args[:-1], False)
    y2, h2, _, _ = fwd_op(*args)
    assert g.numel() == 0 and hn.numel() == 0
    assert torch.equal(y, y2) and torch.equal(h, h2)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gru_gradcheck_op(case):
    args = gru_args(**case, requires_grad=True)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*ts):
        full = list(args)
        for i, t in zip(idx, ts):
            full[i] = t
        y, h, _, _ = fwd_op(*full)
        return y, h

    assert torch.autograd.gradcheck(f, leaves, atol=1e-7, rtol=1e-6)


OPCHECK_CASES = {k: CASES[k] for k in ("dense", "dense_nobias", "packed_idle_rows", "tiles_reverse_packed",
                                       "one_step_many_rows")}


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("case", OPCHECK_CASES.values(), ids=OPCHECK_CASES.keys())
def test_opcheck_gru_forward(case, requires_grad):
    torch.library.opcheck(fwd_op, gru_args(**case, requires_grad=requires_grad))


@pytest.mark.parametrize("case", OPCHECK_CASES.values(), ids=OPCHECK_CASES.keys())
def test_opcheck_gru_backward(case):
    x, w_ih, w_hh, b_ih, b_hh, h0, bs, reverse, _ = gru_args(**case)
    y, h_n, gates, hn = fwd_op(x, w_ih, w_hh, b_ih, b_hh, h0, bs, reverse, True)
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    gh = torch.randn(h_n.shape, generator=gen, dtype=y.dtype)
    torch.library.opcheck(bwd_op, (gy, gh, x, w_ih, w_hh, h0, y, gates, hn, bs, reverse, b_ih is not None))


def test_gru_backward_op_gives_each_bias_its_own_gradient():
    # b_in and b_hn differ: r multiplies b_hn and not b_in, so their gradients differ too.
    x, w_ih, w_hh, b_ih, b_hh, h0, bs, rev, _ = gru_args(T=5, B=3, H=6, requires_grad=True)
    y, h, _, _ = fwd_op(x, w_ih, w_hh, b_ih, b_hh, h0, bs, rev, True)
    g_ih, g_hh = torch.autograd.grad(y.sum() + h.sum(), (b_ih, b_hh))
    assert torch.allclose(g_ih[:12], g_hh[:12]) and not torch.allclose(g_ih[12:], g_hh[12:])


@pytest.mark.parametrize("bad", ["w_ih rows", "h0 batch", "bias size", "batch_sizes", "unsaved backward"])
def test_gru_ops_refuse_bad_arguments(bad):
    x, w_ih, w_hh, b_ih, b_hh, h0, bs, rev, save = gru_args(T=4, B=3, H=6, packed=bad == "batch_sizes")
    if bad == "w_ih rows":
        w_ih = w_ih[:-1]
    elif bad == "h0 batch":
        h0 = h0[:2]
    elif bad == "bias size":
        b_hh = b_hh[:-3]
    elif bad == "batch_sizes":
        bs = bs.flip(0) + torch.arange(bs.numel())  # increasing
    if bad == "unsaved backward":
        y, h, g, hn = fwd_op(x, w_ih, w_hh, b_ih, b_hh, h0, bs, rev, False)
        with pytest.raises(RuntimeError, match="saved by gru_forward"):
            bwd_op(y, h, x, w_ih, w_hh, h0, y, g, hn, bs, rev, True)
        return
    with pytest.raises(RuntimeError, match="lstm_fused"):
        fwd_op(x, w_ih, w_hh, b_ih, b_hh, h0, bs, rev, save)
