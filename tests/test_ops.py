"""The custom ops themselves: the op contract against an explicit loop, gradcheck in float64
(module and op), and torch.library.opcheck on lstm_fused::forward and lstm_fused::backward."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import lstm_fused  # noqa: F401  (registers the ops)
from utils import Config, make_pair, rand_lengths

fwd_op = torch.ops.lstm_fused.forward
bwd_op = torch.ops.lstm_fused.backward


def op_args(T=4, B=3, I=5, H=6, P=None, bias=True, packed=False, first_batch=None, reverse=False,
            save=True, dtype=torch.float64, requires_grad=False, seed=0, noncontig=False):
    """Arguments of lstm_fused::forward for one layer and direction.

    packed: x holds sum(batch_sizes) rows; first_batch < B leaves trailing sequences idle.
    noncontig: x, h0 and c0 are strided views (as the module passes batch_first input).
    """
    gen = torch.Generator().manual_seed(seed)
    P = P or H

    def randn(*shape, scale=1.0, strided=False):
        if strided and len(shape) >= 2:
            t = randn(*shape[1::-1], *shape[2:], scale=scale).detach().transpose(0, 1)
            assert not t.is_contiguous() or 1 in shape
        else:
            t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    batch_sizes = None
    if packed:
        lengths = rand_lengths(T, first_batch or B, gen).sort(descending=True).values
        batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.int64)
        x = randn(int(batch_sizes.sum()), I, strided=noncontig)
    else:
        x = randn(T, B, I, strided=noncontig)
    k = H**-0.5
    w_ih, w_hh = randn(4 * H, I, scale=k), randn(4 * H, P, scale=k)
    b_ih, b_hh = (randn(4 * H, scale=k), randn(4 * H, scale=k)) if bias else (None, None)
    w_hr = randn(P, H, scale=k) if P != H else None
    h0, c0 = randn(B, P, strided=noncontig), randn(B, H, strided=noncontig)
    return (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, save)


def op_reference(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, save=True):
    """The op contract written as an explicit float64 loop over the rows of each step.

    Returns y, h_n, c_n, activated gates [N, 4H], cells [N, H] (float64).
    """
    f64 = lambda t: None if t is None else t.detach().double()
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h, c = map(f64, (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0))
    H = w_ih.shape[0] // 4
    dense_shape = None
    if batch_sizes is None:
        dense_shape = x.shape
        T, B = x.shape[:2]
        x = x.reshape(T * B, -1)
        bs = [B] * T
    else:
        bs = batch_sizes.tolist()
        T = len(bs)
    offsets = [sum(bs[:t]) for t in range(T)]
    N = x.shape[0]
    y = x.new_zeros(N, w_hh.shape[1])
    gates_out = x.new_zeros(N, 4 * H)
    cells_out = x.new_zeros(N, H)
    h, c = h.clone(), c.clone()
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        rows = slice(offsets[t], offsets[t] + bs[t])
        n = bs[t]
        pre = x[rows] @ w_ih.T + h[:n] @ w_hh.T
        if b_ih is not None:
            pre = pre + b_ih + b_hh
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_new = f * c[:n] + i * g
        h_new = o * c_new.tanh()
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h[:n], c[:n] = h_new, c_new
        y[rows] = h_new
        gates_out[rows] = torch.cat([i, f, g, o], dim=1)
        cells_out[rows] = c_new
    if dense_shape is not None:
        y = y.reshape(*dense_shape[:2], -1)
    return y, h, c, gates_out, cells_out


OP_CASES = {
    "dense": dict(),
    "dense_nobias": dict(bias=False),
    "dense_reverse": dict(reverse=True),
    "dense_proj": dict(H=6, P=3),
    "packed": dict(packed=True),
    "packed_reverse_proj": dict(packed=True, reverse=True, P=2, T=5, B=4),
    "packed_idle_rows": dict(packed=True, B=4, first_batch=2),
    "packed_idle_rows_reverse": dict(packed=True, B=5, first_batch=3, reverse=True, bias=False),
    "T1_B1": dict(T=1, B=1, I=1, H=1),
    "odd": dict(T=7, B=5, I=17, H=17, P=9),
    "noncontiguous": dict(noncontig=True, P=3, reverse=True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", OP_CASES.values(), ids=OP_CASES.keys())
def test_forward_op_contract(case, dtype):
    args = op_args(**case, dtype=dtype, seed=len(str(case)))
    y, h_n, c_n, gates, cells = fwd_op(*args)
    ref = op_reference(*args)
    acc = torch.float32 if dtype == torch.bfloat16 else dtype
    assert y.dtype == h_n.dtype == c_n.dtype == dtype
    assert gates.dtype == cells.dtype == acc
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for name, a, e in zip(("y", "h_n", "c_n", "gates", "cells"), (y, h_n, c_n, gates, cells), ref):
        assert a.shape == e.shape, (name, a.shape, e.shape)
        err = (a.double() - e).abs()
        print(f"{name}: max abs err {err.max().item():.3e} mean {err.mean().item():.3e}")
        torch.testing.assert_close(a.double(), e, rtol=tol, atol=tol, msg=name)
    _, _, _, gates0, cells0 = fwd_op(*args[:-1], False)
    assert gates0.numel() == 0 and cells0.numel() == 0


def test_forward_op_save_does_not_change_outputs():
    args = op_args(T=6, B=4, I=7, H=9, P=5, packed=True, dtype=torch.float32)
    with_save = fwd_op(*args[:-1], True)
    without = fwd_op(*args[:-1], False)
    for a, b in zip(with_save[:3], without[:3]):
        assert torch.equal(a, b)


# -- gradcheck ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", OP_CASES.values(), ids=OP_CASES.keys())
def test_gradcheck_op(case):
    """Through the op's registered autograd (backward op), every differentiable input."""
    case = {**case, "T": min(case.get("T", 4), 4), "I": min(case.get("I", 5), 4),
            "H": min(case.get("H", 6), 5)}
    if case.get("P", 0) >= case["H"]:
        case["P"] = case["H"] - 2
    args = op_args(**case, requires_grad=True)
    tensors = [a for a in args[:8] if a is not None]
    positions = [i for i, a in enumerate(args[:8]) if a is not None]

    def f(*ts):
        full = list(args)
        for i, t in zip(positions, ts):
            full[i] = t
        y, h_n, c_n, _, _ = fwd_op(*full)
        return y, h_n, c_n

    assert torch.autograd.gradcheck(f, tensors, atol=1e-7, rtol=1e-5)


def module_gradcheck(cfg, packed_lengths=None):
    _, model = make_pair(cfg)
    gen = torch.Generator().manual_seed(cfg.seed())
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    LD = cfg.num_layers * cfg.D
    if packed_lengths is not None:
        lengths = torch.tensor(packed_lengths)
        padded = torch.randn(cfg.T, len(lengths), cfg.I, generator=gen, dtype=torch.float64)
        p = torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, enforce_sorted=False)
        x = p.data.clone().requires_grad_()
        B = len(lengths)
    else:
        shape = (cfg.B, cfg.T, cfg.I) if cfg.batch_first else (cfg.T, cfg.B, cfg.I)
        x = torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
        B = cfg.B
    h0 = torch.randn(LD, B, cfg.P, generator=gen, dtype=torch.float64).requires_grad_()
    c0 = torch.randn(LD, B, cfg.H, generator=gen, dtype=torch.float64).requires_grad_()

    def f(x, h0, c0, *ps):
        inp = x
        if packed_lengths is not None:
            inp = PackedSequence(x, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        out, (h, c) = torch.func.functional_call(model, dict(zip(names, ps)), (inp, (h0, c0)))
        return (out.data if packed_lengths is not None else out), h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), atol=1e-7, rtol=1e-5)


def test_gradcheck_module_dense_bidirectional_proj():
    module_gradcheck(Config(T=3, B=2, I=3, H=3, num_layers=2, bidirectional=True, proj_size=2))


def test_gradcheck_module_packed_unsorted_bidirectional():
    module_gradcheck(Config(T=4, I=2, H=3, num_layers=2, bidirectional=True),
                     packed_lengths=[2, 4, 1])


def test_gradcheck_module_packed_proj_nobias():
    module_gradcheck(Config(T=3, I=3, H=4, proj_size=2, bias=False), packed_lengths=[3, 3, 2])


def test_gradcheck_module_batch_first_unidirectional():
    cfg = Config(T=3, B=2, I=3, H=3, num_layers=3, batch_first=True)
    module_gradcheck(cfg)


# -- opcheck ------------------------------------------------------------------------------------

OPCHECK_CASES = {
    "dense_save": dict(),
    "dense_nosave": dict(save=False),
    "dense_nobias": dict(bias=False),
    "dense_proj_reverse": dict(P=3, reverse=True),
    "packed_save": dict(packed=True),
    "packed_nosave_proj": dict(packed=True, P=2, save=False),
    "packed_idle_rows_reverse": dict(packed=True, B=4, first_batch=2, reverse=True),
    "float32": dict(dtype=torch.float32, P=4),
    "bfloat16": dict(dtype=torch.bfloat16, packed=True),
    "dense_noncontiguous": dict(noncontig=True, P=4),
    "packed_noncontiguous": dict(noncontig=True, packed=True),
    # Single steps, as LSTMCell calls the op: the input inside the kernel (B <= 4, no save), the
    # in-place path (up to 32 rows), and the step GEMM (above 32 rows).
    "cell_step_b2": dict(T=1, B=2, save=False),
    "cell_step_b17": dict(T=1, B=17, dtype=torch.float32),
    "cell_step_b33": dict(T=1, B=33, save=False),
}


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("case", OPCHECK_CASES.values(), ids=OPCHECK_CASES.keys())
def test_opcheck_forward(case, requires_grad):
    args = op_args(**case, requires_grad=requires_grad and case.get("save", True))
    torch.library.opcheck(fwd_op.default, args)


def backward_args(case, seed=1):
    args = op_args(**{**case, "save": True})
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, _ = args
    y, h_n, c_n, gates, cells = fwd_op(*args)
    gen = torch.Generator().manual_seed(seed)
    g = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
    return (g(y), g(h_n), g(c_n), x, w_ih, w_hh, w_hr, h0, c0, y, gates, cells, batch_sizes,
            reverse, b_ih is not None)


@pytest.mark.parametrize("case", OPCHECK_CASES.values(), ids=OPCHECK_CASES.keys())
def test_opcheck_backward(case):
    torch.library.opcheck(bwd_op.default, backward_args(case))


@pytest.mark.parametrize("case", OP_CASES.values(), ids=OP_CASES.keys())
def test_backward_op_shapes_and_bias_grad(case):
    """db is the gradient of the summed bias; empty tensors where the contract says so."""
    args = backward_args(case)
    dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0 = bwd_op(*args)
    x, w_ih, w_hh, w_hr, h0, c0 = args[3], args[4], args[5], args[6], args[7], args[8]
    assert dx.shape == x.shape and dw_ih.shape == w_ih.shape and dw_hh.shape == w_hh.shape
    assert dh0.shape == h0.shape and dc0.shape == c0.shape
    assert db.shape == ((w_ih.shape[0],) if args[-1] else (0,))
    assert dw_hr.shape == (w_hr.shape if w_hr is not None else (0,))
    # Against autograd through the explicit loop.
    leaves = [t.detach().clone().requires_grad_() for t in (x, w_ih, w_hh, h0, c0)]
    b_ih, b_hh = op_args(**{**case, "save": True})[3:5]  # the same seed: the same biases
    bias = (b_ih + b_hh if b_ih is not None else torch.zeros(w_ih.shape[0], dtype=torch.float64))
    bias = bias.detach().clone().requires_grad_()
    whr = None if w_hr is None else w_hr.detach().clone().requires_grad_()
    y, h_n, c_n = torch_loop(leaves, bias, whr, args[12], args[13])
    loss = (y * args[0]).sum() + (h_n * args[1]).sum() + (c_n * args[2]).sum()
    expected = torch.autograd.grad(loss, leaves + [bias] + ([whr] if whr is not None else []))
    actual = [dx, dw_ih, dw_hh, dh0, dc0] + ([db] if args[-1] else []) + (
        [dw_hr] if w_hr is not None else [])
    expected = list(expected[:5]) + ([expected[5]] if args[-1] else []) + (
        [expected[6]] if w_hr is not None else [])
    for a, e in zip(actual, expected):
        print(f"max abs err {(a - e).abs().max().item():.3e}")
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def torch_loop(leaves, bias, w_hr, batch_sizes, reverse):
    """Differentiable float64 version of op_reference (one summed bias)."""
    x, w_ih, w_hh, h, c = leaves
    H = w_ih.shape[0] // 4
    dense = batch_sizes is None
    if dense:
        T, B = x.shape[:2]
        xr = x.reshape(T * B, -1)
        bs = [B] * T
    else:
        xr, bs = x, batch_sizes.tolist()
        T = len(bs)
    offsets = [sum(bs[:t]) for t in range(T)]
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        n = bs[t]
        xt = xr[offsets[t]:offsets[t] + n]
        pre = xt @ w_ih.T + h[:n] @ w_hh.T + bias
        i, f, g, o = pre.chunk(4, dim=1)
        c_new = f.sigmoid() * c[:n] + i.sigmoid() * g.tanh()
        h_new = o.sigmoid() * c_new.tanh()
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h = torch.cat([h_new, h[n:]])
        c = torch.cat([c_new, c[n:]])
        ys[t] = h_new
    y = torch.cat(ys)
    if dense:
        y = y.reshape(T, B, -1)
    return y, h, c


# -- the stack's eager entry (ops.call_forward) ------------------------------------------------


def test_call_forward_is_the_op_bitwise_and_with_its_errors():
    """The C++ dispatcher entry gives the Python op's outputs bit for bit, its gradients, and its
    errors (type and message)."""
    args = op_args(T=5, B=3, I=4, H=6, P=4, packed=True, dtype=torch.float32, requires_grad=True)
    outs = [lstm_fused.ops.call_forward(*args), fwd_op(*args)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    grads = [torch.autograd.grad(o[0].sum() + o[2].sum(), [args[0], args[1], args[6]]) for o in outs]
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    bad = list(args)
    bad[6] = bad[6][:2]  # h0 of the wrong batch
    errors = []
    for fn in (lstm_fused.ops.call_forward, fwd_op):
        with pytest.raises(Exception) as info:
            fn(*bad)
        errors.append((type(info.value), str(info.value)))
    print(errors)
    assert errors[0] == errors[1]


@pytest.mark.parametrize("packed", [False, True])
def test_call_forward_layer_is_the_op_bitwise(packed):
    """The one-layer entry (h0 / c0 and h_n / c_n with their layer dim; selects and unsqueezes in
    C++) gives the Python op's outputs, shapes and gradients bit for bit."""
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, bs, _, _ = op_args(T=5, B=3, I=4, H=6, P=4, packed=packed,
                                                               dtype=torch.float32, requires_grad=True)
    h0l, c0l = h0.unsqueeze(0), c0.unsqueeze(0)
    y, h, c, _, _ = fwd_op(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, bs, False, True)
    ref = (y, h.unsqueeze(0), c.unsqueeze(0))
    eager = lstm_fused.ops.call_forward_layer(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0l, c0l, bs, True)
    outs = [ref, eager]
    for a, b in zip(*outs):
        assert torch.equal(a, b) and a.shape == b.shape
    grads = [torch.autograd.grad(o[0].sum() + o[1].sum() + 2 * o[2].sum(), [x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0])
             for o in outs]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_module_eager_calls_take_the_cpp_entry(monkeypatch):
    """Eager module calls enter the op through lstm_fused._C.forward_unboxed (one-layer stacks
    through _C.forward_layer_unboxed); a __torch_function__ mode gets the Python op instead (it
    sees lstm_fused.forward), and a __torch_dispatch__ mode sees the op on either entry."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []
    real = lstm_fused.ops._forward_unboxed
    monkeypatch.setattr(lstm_fused.ops, "_forward_unboxed", lambda *a: calls.append(1) or real(*a))
    real_pair = lstm_fused.ops._forward_pair_unboxed  # a bidirectional layer's two calls at once
    monkeypatch.setattr(lstm_fused.ops, "_forward_pair_unboxed", lambda *a: calls.extend((1, 1)) or real_pair(*a))
    m = lstm_fused.LSTM(4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4)
    with torch.inference_mode():
        y = m(x)[0]
    assert len(calls) == 4

    def recording(base, hook):
        """A mode of class base whose hook (__torch_function__ or __torch_dispatch__) records ops."""
        seen = []

        def record(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

        return type("Recording", (base,), {hook: record})(), seen

    layer_calls = []
    real_layer = lstm_fused.ops._forward_layer_unboxed  # one layer, one direction
    monkeypatch.setattr(lstm_fused.ops, "_forward_layer_unboxed", lambda *a: layer_calls.append(1) or real_layer(*a))
    single = lstm_fused.LSTM(4, 6)
    y1, hc1 = single(x)
    assert len(layer_calls) == 1 and y1.requires_grad

    calls.clear()
    layer_calls.clear()
    mode, seen = recording(TorchFunctionMode, "__torch_function__")
    with mode:
        y1_mode, hc1_mode = single(x)
    assert not layer_calls and seen.count("lstm_fused.forward") == 1, seen
    for a, b in zip((y1, *hc1), (y1_mode, *hc1_mode)):  # the Python op's path: h_n, c_n as [1, B, *]
        assert a.shape == b.shape and torch.equal(a, b)
    mode, seen = recording(TorchFunctionMode, "__torch_function__")
    with torch.inference_mode(), mode:
        y_mode = m(x)[0]
    assert not calls and seen.count("lstm_fused.forward") == 4, seen
    assert torch.equal(y, y_mode)
    mode, seen = recording(TorchDispatchMode, "__torch_dispatch__")
    with torch.inference_mode(), mode:
        m(x)
    assert len(calls) == 4 and seen.count("lstm_fused.forward.default") == 4, seen
    mode, seen = recording(TorchDispatchMode, "__torch_dispatch__")
    with mode:
        y1_dispatch = single(x)[0]
    assert len(layer_calls) == 1 and seen.count("lstm_fused.forward.default") == 1, seen
    assert torch.equal(y1, y1_dispatch)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_bidirectional_inference_runs_the_directions_as_a_pair(monkeypatch, threads, packed, mode):
    """Bidirectional inference enters each layer's two directions through
    _C.forward_pair_unboxed (on two threads, at once): outputs as nn.LSTM's and as the directions
    one after the other, no autograd history under no_grad, inference tensors under
    inference_mode, and every call seen by the profiler."""
    torch.manual_seed(0)
    from utils import num_threads

    ref = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=12 if packed else 0)
    m = lstm_fused.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=12 if packed else 0)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(9, 5, 8)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([9, 7, 7, 3, 1]), enforce_sorted=False)
    pairs = []
    real_pair = lstm_fused.ops._forward_pair_unboxed
    monkeypatch.setattr(lstm_fused.ops, "_forward_pair_unboxed", lambda *a: pairs.append(1) or real_pair(*a))
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with num_threads(threads), ctx():
        with torch.profiler.profile() as prof:
            y, (h, c) = m(x)
        y_ref, (h_ref, c_ref) = ref(x)
        monkeypatch.setattr(lstm_fused.ops, "call_forward_pair", lstm_fused.ops.forward_pair_in_turn)
        y_seq, (h_seq, c_seq) = m(x)
    assert len(pairs) == 2
    names = [e.name for e in prof.events()]
    assert names.count("lstm_fused::forward") == 4, names
    if packed:
        y, y_ref, y_seq = y.data, y_ref.data, y_seq.data
    for a, b, s in ((y, y_ref, y_seq), (h, h_ref, h_seq), (c, c_ref, c_seq)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, s, rtol=1e-6, atol=1e-6)
        assert not a.requires_grad and a.grad_fn is None
        assert a.is_inference() == (mode == "inference_mode")


@pytest.mark.parametrize("bad", ["h0 of the reverse direction", "w_hh of the forward direction"])
def test_forward_pair_gives_the_ops_errors(bad):
    """An error in either direction's call reaches the caller as the op's own (type and message),
    from the second thread too."""
    from utils import num_threads

    args = [op_args(T=5, B=3, I=4, H=6, seed=s, dtype=torch.float32, save=False)[:8] for s in (0, 1)]
    x, batch_sizes = args[0][0], None
    d, i = (1, 6) if bad.startswith("h0") else (0, 2)
    args[d] = list(args[d])
    args[d][i] = args[d][i][:2] if i == 6 else args[d][i][:, :3]
    errors = []
    with num_threads(2):
        with pytest.raises(Exception) as info:
            lstm_fused.ops._forward_pair_unboxed(x, batch_sizes, False, *args[0][1:], *args[1][1:])
        errors.append((type(info.value), str(info.value)))
        with pytest.raises(Exception) as info:
            fwd_op(x, *args[d][1:], batch_sizes, d == 1, False)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1], errors


@pytest.mark.parametrize("used", ["y", "h_n", "c_n"])
def test_backward_gets_no_zero_filled_grads_for_unused_outputs(used):
    """Outputs that got no gradient (the saved gates and cells always, y or the states sometimes)
    reach the backward as None, not as zero tensors the autograd engine fills: the gates' would
    be an [N, 4H] fill per training step. Gradients stay those of nn.LSTM."""
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 8, 16
    ref = torch.nn.LSTM(I, H)
    model = lstm_fused.LSTM(I, H)
    model.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    y, (h, c) = model(x)
    out = {"y": y, "h_n": h, "c_n": c}[used]
    with torch.profiler.profile(record_shapes=True) as prof:
        (gx,) = torch.autograd.grad(out.square().sum(), x)
    filled = [e.input_shapes[0] for e in prof.events()
              if e.name in ("aten::fill_", "aten::zero_") and e.input_shapes]
    assert [T * B, 4 * H] not in filled and [T * B, H] not in filled, filled
    y2, (h2, c2) = ref(x)
    (want,) = torch.autograd.grad({"y": y2, "h_n": h2, "c_n": c2}[used].square().sum(), x)
    torch.testing.assert_close(gx, want, rtol=1e-4, atol=1e-5)
