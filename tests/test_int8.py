"""int8 inference: lstm_fused.quantize_dynamic, the int8 modules and the q8 ops.

- The packing and the int8 product against PyTorch (lstm_fused.quantized's reference functions):
  exact int32 sums, dequantized outputs within 1 ulp.
- The modules against int8_reference (the same numerics as an explicit loop) over a grid of
  shapes and options, against torch's float modules (accuracy), and against ONNX Runtime's
  dynamic int8 LSTM on the same weights (no worse).
- Packed input: each sequence exactly as when run alone (every row is quantized on its own).
- quantize_dynamic on models, subclasses (forecasting style), state_dict, pickling; errors;
  opcheck; torch.compile. Every instruction-set path is in test_isa.py.
"""
import copy
import os
import tempfile
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn

import lstm_fused
from lstm_fused import ops
from lstm_fused import quantized as qz
from test_convert import DirectLSTM, ForecastGRU, ForecastLSTM, ScaledLSTMCell
from utils import OpCounter, num_threads, roundtrip


def _ulps(a, b):
    """Largest distance in float32 ulps between a and b (same signs where both are nonzero)."""
    ia, ib = a.view(torch.int32).long(), b.view(torch.int32).long()
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int((ia - ib).abs().max()) if a.numel() else 0


def _ulp(t):
    return torch.nextafter(t.abs(), torch.tensor(float("inf"))) - t.abs()


@pytest.mark.parametrize("gates,units,K", [(1, 1, 1), (4, 7, 3), (3, 16, 17), (4, 33, 64), (1, 40, 37)])
def test_pack_matches_per_row_symmetric_quantization(gates, units, K):
    w = torch.randn(gates * units, K) * torch.rand(gates * units, 1) * 3
    w[0] = 0  # a zero row: scale 1, all zeros
    packed, scale, colsum, shape = ops.q8_pack(w, gates)
    assert packed.shape == (-(-units // 16) * gates, -(-K // 4), 16, 4) and packed.dtype == torch.int8
    assert shape.tolist() == [units, K]
    q, s = qz.unpack_weight(packed, scale, units, gates, K)
    s_want = w.abs().amax(1) / 127
    s_want = torch.where(s_want == 0, torch.ones_like(s_want), s_want)
    q_want = torch.round(w / s_want[:, None]).clamp(-127, 127)
    assert torch.equal(s, s_want)
    assert torch.equal(q.float(), q_want)
    assert torch.equal(qz.natural_order(colsum, units, gates), q.long().sum(1).int())
    # The padding (units past the last, k past K) holds zeros, with zero scale and colsum.
    assert int(packed.abs().sum()) == int(q.abs().sum())
    assert int((scale != 0).sum()) == gates * units


@pytest.mark.parametrize("N,K,M,bias", [(1, 1, 16, False), (5, 3, 40, True), (9, 37, 64, True), (130, 256, 1024, False),
                                        (7, 300, 17, True)])
def test_linear_is_the_reference_int8_product(N, K, M, bias):
    w = torch.randn(M, K) / K**0.5
    x = torch.randn(N, K) * 2 + 0.5
    x[0, 0] = 0
    W = list(ops.q8_pack(w, 1))
    b = torch.randn(W[1].numel()) if bias else None
    out = ops.q8_linear(x, W, b)
    q, s = qz.unpack_weight(W[0], W[1], M, 1, K)
    product = qz._int8_product(x, q, qz.natural_order(W[2], M, 1), s)
    want = product + b[:M] if bias else product
    got = out[:, :M]
    # Within one ulp of the dequantized product, plus the sum's own rounding: the kernel may fuse
    # the bias add into the product (one rounding where the reference has two).
    tol = _ulp(product) + (_ulp(want) if bias else 0)
    print("max ulps of the sum", _ulps(got, want), "max abs", (got - want).abs().max().item())
    assert ((got - want).abs() <= tol).all()
    assert torch.equal(out[:, M:], b[M:].expand(N, -1) if bias else torch.zeros(N, out.shape[1] - M))


CASES = [
    # cell, I, H, proj, layers, bidirectional, B, T, bias, batch_first, state
    ("lstm", 5, 7, 0, 1, False, 1, 9, True, False, False),
    ("lstm", 13, 37, 0, 2, True, 6, 11, True, True, True),
    ("lstm", 20, 33, 9, 2, False, 4, 8, True, False, True),
    ("lstm", 1, 16, 0, 1, False, 3, 20, False, True, False),
    ("lstm", 24, 48, 16, 1, True, 9, 5, False, False, True),
    ("lstm", 64, 128, 0, 1, False, 32, 6, True, False, True),
    ("gru", 5, 7, 0, 1, False, 1, 9, True, False, False),
    ("gru", 13, 37, 0, 2, True, 6, 11, True, True, True),
    ("gru", 1, 16, 0, 1, False, 3, 20, False, True, True),
    ("gru", 64, 96, 0, 2, False, 17, 6, True, False, False),
]


def _float_module(cell, I, H, proj, layers, bidirectional, bias, batch_first, seed=0):
    torch.manual_seed(seed)
    kw = dict(num_layers=layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    if cell == "lstm":
        return nn.LSTM(I, H, proj_size=proj, **kw).eval()
    return nn.GRU(I, H, **kw).eval()


def _states(cell, layers, bidirectional, B, H, proj, gen):
    n = layers * (2 if bidirectional else 1)
    h = torch.randn(n, B, proj or H, generator=gen) * 0.5
    return (h, torch.randn(n, B, H, generator=gen)) if cell == "lstm" else h


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-I{c[1]}-H{c[2]}-P{c[3]}-L{c[4]}-bi{int(c[5])}-B{c[6]}-T{c[7]}"
                                            f"-bias{int(c[8])}-bf{int(c[9])}-h0{int(c[10])}" for c in CASES])
def test_module_matches_reference_and_float(case):
    cell, I, H, proj, layers, bi, B, T, bias, batch_first, state = case
    ref = _float_module(cell, I, H, proj, layers, bi, bias, batch_first)
    q = lstm_fused.quantize_dynamic(ref)
    assert type(q) is (qz.QuantizedLSTM if cell == "lstm" else qz.QuantizedGRU)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, generator=gen)
    hx = _states(cell, layers, bi, B, H, proj, gen) if state else None
    with torch.no_grad():
        y, hn = q(x, hx)
        y_ref, hn_ref = lstm_fused.int8_reference(q, x, hx)
        y_f, hn_f = ref(x, hx)
    outs = [y] + list(hn if cell == "lstm" else [hn])
    refs = [y_ref] + list(hn_ref if cell == "lstm" else [hn_ref])
    floats = [y_f] + list(hn_f if cell == "lstm" else [hn_f])
    for got, want, fl in zip(outs, refs, floats):
        assert got.shape == want.shape == fl.shape and got.dtype == torch.float32
        diff = (got - want).abs()
        err = ((got - fl).abs().max() / fl.abs().max()).item()
        print(f"vs reference max {diff.max().item():.2e}, within 1e-6: {(diff <= 1e-6).float().mean().item():.4f}; "
              f"vs float relative {err:.2e}")
        # The same numerics up to the activations' last ulps; where one moves a value of h across
        # a rounding boundary of its quantization, the difference is a step of h's grid.
        assert (diff <= 1e-6).float().mean() >= 0.8
        assert diff.max() <= 2e-3
        assert err < 3e-2


def _ort_int8_error(ref, x):
    """ONNX Runtime's dynamic int8 LSTM (DynamicQuantizeLSTM) on ref's weights: its output's max
    error relative to ref's."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ref, (x,), fp32, dynamo=False, input_names=["x"], output_names=["y", "h", "c"])
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        sess = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
        got = torch.as_tensor(sess.run(None, {"x": x.numpy()})[0])
    with torch.no_grad():
        want = ref(x)[0]
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("B,T,H,layers", [(32, 50, 128, 1), (8, 40, 256, 2)])
def test_error_no_worse_than_onnxruntime_int8(B, T, H, layers):
    pytest.importorskip("onnxruntime")
    ref = _float_module("lstm", H, H, 0, layers, False, True, False)
    x = torch.randn(T, B, H)
    q = lstm_fused.quantize_dynamic(ref)
    with torch.no_grad():
        want = ref(x)[0]
        ours = ((q(x)[0] - want).abs().max() / want.abs().max()).item()
    theirs = _ort_int8_error(ref, x)
    print(f"relative error: lstm_fused int8 {ours:.3e}, ONNX Runtime int8 {theirs:.3e}")
    assert ours <= theirs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell,proj,bi", [("lstm", 0, False), ("lstm", 5, True), ("gru", 0, True)])
def test_packed_sequences_match_each_run_alone(cell, proj, bi, threads):
    # With two threads the batch's loop takes the input projection (7 rows a step at first) and the
    # runs alone (1 row) do not: both orders of the same float operations.
    ref = _float_module(cell, 6, 21, proj, 2, bi, True, False)
    q = lstm_fused.quantize_dynamic(ref)
    gen = torch.Generator().manual_seed(2)
    lengths = [7, 1, 12, 5, 12, 3, 9]
    seqs = [torch.randn(n, 6, generator=gen) for n in lengths]
    hx = _states(cell, 2, bi, len(seqs), 21, proj, gen)
    packed = rnn.pack_sequence(seqs, enforce_sorted=False)
    with torch.no_grad(), num_threads(threads):
        y, hn = q(packed, hx)
        y, _ = rnn.pad_packed_sequence(y)
        for b, s in enumerate(seqs):
            hb = tuple(h[:, b:b + 1] for h in hx) if cell == "lstm" else hx[:, b:b + 1]
            y1, hn1 = q(s[:, None], hb)
            # Every row is quantized on its own: a sequence's results do not depend on the batch.
            assert torch.equal(y[:len(s), b], y1[:, 0])
            for got, want in zip(hn if cell == "lstm" else [hn], hn1 if cell == "lstm" else [hn1]):
                assert torch.equal(got[:, b], want[:, 0])


def test_unbatched_empty_and_nan_rows():
    q = lstm_fused.quantize_dynamic(_float_module("lstm", 4, 8, 0, 1, False, True, True))
    with torch.no_grad():
        x = torch.randn(5, 4)
        y, (h, c) = q(x)
        y2, (h2, c2) = q(x[None])
        assert y.shape == (5, 8) and h.shape == (1, 8) and torch.equal(y, y2[0]) and torch.equal(h, h2[:, 0])
        y, (h, c) = q(torch.randn(0, 5, 4))
        assert y.shape == (0, 5, 8) and h.shape == (1, 0, 8)
        x = torch.randn(3, 5, 4)
        x[1, 2, 0] = float("nan")  # batch_first: sequence 1 from step 2 on
        y = q(x)[0]
        assert torch.isnan(y[1, 2:]).all() and not torch.isnan(y[1, :2]).any()
        assert not torch.isnan(y[[0, 2]]).any()


def test_quantize_dynamic_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.LSTM(8, 16, batch_first=True))
    model.add_module("gru", lstm_fused.GRU(16, 12))
    copy_before = copy.deepcopy(model)
    q = lstm_fused.quantize_dynamic(model)
    assert type(model[1]) is nn.LSTM and type(model.gru) is lstm_fused.GRU  # not in place
    assert type(q[0]) is nn.Linear and type(q[1]) is qz.QuantizedLSTM and type(q.gru) is qz.QuantizedGRU
    assert not q[1].training and not q.gru.training
    assert q[0].weight is not model[0].weight and torch.equal(q[0].weight, copy_before[0].weight)
    only_gru = lstm_fused.quantize_dynamic(model, {nn.GRU})
    assert type(only_gru[1]) is nn.LSTM and type(only_gru.gru) is qz.QuantizedGRU
    same = lstm_fused.quantize_dynamic(model, inplace=True)
    assert same is model and type(model[1]) is qz.QuantizedLSTM
    # The state_dict holds the int8 weights and loads into a module built by the constructor.
    fresh = qz.QuantizedLSTM(8, 16, batch_first=True)
    fresh.load_state_dict(q[1].state_dict())
    x = torch.randn(2, 5, 8)
    with torch.inference_mode():
        assert torch.equal(fresh(x)[0], q[1](x)[0])
        for how in ("deepcopy", "pickle", "torch.save"):
            assert torch.equal(roundtrip(how, q[1])(x)[0], q[1](x)[0])
    assert q[1].weight_ih_l0_int8.dtype == torch.int8 and "dtype=torch.qint8" in repr(q[1])


@pytest.mark.parametrize("cls", [ForecastLSTM, ForecastGRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("converted", [False, True])
def test_forecasting_subclass_keeps_its_class_and_runs_int8(cls, converted):
    torch.manual_seed(0)
    m = cls(4, 10, num_layers=2, batch_first=True).eval()
    plain = (nn.LSTM if cls is ForecastLSTM else nn.GRU)(4, 10, num_layers=2, batch_first=True)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "calls"})
    if converted:
        m = lstm_fused.convert(m)
    q = lstm_fused.quantize_dynamic(m)
    assert isinstance(q, cls) and type(q).__name__ == cls.__name__ and q.tag == "encoder"
    want_mod = lstm_fused.quantize_dynamic(plain)
    x = torch.randn(5, 7, 4)
    lengths = torch.tensor([7, 0, 3, 7, 1])
    with torch.no_grad():
        with OpCounter() as counter:
            y, state = q(x, lengths=lengths, enforce_sorted=False)
        assert counter.count("lstm_fused::q8_forward") == 2 and not counter.count("aten::lstm")
        packed = rnn.pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        y_want, _ = rnn.pad_packed_sequence(want_mod(packed)[0], batch_first=True)
        valid = lengths > 0
        assert torch.equal(y[valid], y_want[valid])
        for how in ("deepcopy", "pickle", "torch.save"):
            again = roundtrip(how, q)
            assert type(again) is type(q)
            assert torch.equal(again(x, lengths=lengths, enforce_sorted=False)[0], y)


def test_direct_torch_forward_calls_run_int8():
    torch.manual_seed(0)
    m = DirectLSTM(4, 6).eval()
    plain = nn.LSTM(4, 6)
    plain.load_state_dict(m.state_dict())
    q = lstm_fused.quantize_dynamic(m)
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        assert torch.equal(q(x)[0], 2 * lstm_fused.quantize_dynamic(plain)(x)[0])


def test_errors():
    torch.manual_seed(0)
    q = lstm_fused.quantize_dynamic(nn.LSTM(4, 6))
    ref = nn.LSTM(4, 6)
    x = torch.randn(3, 2, 4)
    with pytest.raises(RuntimeError, match="inference only.*training mode"):
        q.train()(x)
    q.eval()
    with pytest.raises(RuntimeError, match="no gradient"):
        q(x.requires_grad_())
    x = x.detach()
    # The float module's contract: torch's exception types and messages.
    for bad in (x.double(), torch.randn(3, 2, 5), torch.randn(2, 3, 2, 4)):
        with pytest.raises(Exception) as theirs:
            ref(bad)
        with pytest.raises(type(theirs.value)) as ours:
            q(bad)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size"):
        q(x, (torch.zeros(1, 3, 6), torch.zeros(1, 2, 6)))
    with pytest.raises(ValueError, match="only torch.qint8"):
        lstm_fused.quantize_dynamic(ref, dtype=torch.float16)
    with pytest.raises(ValueError, match="torch.ao.quantization"):
        lstm_fused.quantize_dynamic(ref, {nn.Linear})
    w = list(ops.q8_pack(torch.randn(24, 4), 4))
    with pytest.raises(RuntimeError, match="packed for inputs of size 4, got 9"):
        ops.q8_forward(torch.randn(2, 1, 9), w, w, [], None, None, torch.zeros(1, 6), torch.zeros(1, 6), None, False)
    with pytest.raises(RuntimeError, match="batch_sizes must be positive"):
        ops.q8_forward(torch.randn(3, 4), w, list(ops.q8_pack(torch.randn(24, 6), 4)), [], None, None,
                       torch.zeros(2, 6), torch.zeros(2, 6), torch.tensor([1, 2]), False)
    with pytest.raises(RuntimeError, match="int8 weights take K"):
        ops.q8_pack(torch.randn(4, 40000), 1)
    # Malformed weights and sizes raise (none reaches the kernels): a weight packed for 8 inputs
    # (the layout rounds K up to 4) given 6, an empty input row, a projection of no units.
    w8 = list(ops.q8_pack(torch.randn(24, 8), 4))
    with pytest.raises(RuntimeError, match="packed for inputs of size 8, got 6"):
        ops.q8_linear(torch.randn(2, 6), w8, None)
    with pytest.raises(RuntimeError, match="packed for inputs of size 4, got 0"):
        ops.q8_linear(torch.empty(3, 0), w, None)
    with pytest.raises(RuntimeError, match="at least one unit"):
        ops.q8_pack(torch.randn(0, 16), 1)
    empty_hr = [torch.zeros(0, 4, 16, 4, dtype=torch.int8), torch.ones(0), torch.zeros(0, dtype=torch.int32),
                torch.tensor([0, 6])]
    with pytest.raises(RuntimeError, match="w_hr holds 0 units a gate, expected 1"):
        ops.q8_forward(torch.randn(2, 1, 4), w, list(ops.q8_pack(torch.randn(24, 1), 4)), empty_hr, None, None,
                       torch.zeros(1, 1), torch.zeros(1, 6), None, False)
    with pytest.raises(RuntimeError, match=r"\[packed, scale, colsum, shape\]"):
        ops.q8_linear(torch.randn(2, 4), w[:3], None)
    with pytest.raises(RuntimeError, match="float32 hx"):
        lstm_fused.quantize_dynamic(nn.GRU(4, 6))(x, torch.zeros(1, 2, 6, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float32"):
        ops.q8_linear(torch.randn(2, 4).double(), w, None)
    y, h, c = ops.q8_forward(torch.randn(2, 1, 4), w, list(ops.q8_pack(torch.randn(24, 6), 4)), [], None, None,
                             torch.zeros(1, 6, requires_grad=True), torch.zeros(1, 6), None, False)
    with pytest.raises(RuntimeError, match="inference only and have no backward"):
        y.sum().backward()


def _opcheck_args(gru, proj, packed):
    gen = torch.Generator().manual_seed(0)
    G, I, H, P = (3 if gru else 4), 5, 20, (7 if proj else 20)
    w_ih = list(ops.q8_pack(torch.randn(G * H, I, generator=gen), G))
    w_hh = list(ops.q8_pack(torch.randn(G * H, P, generator=gen), G))
    w_hr = list(ops.q8_pack(torch.randn(P, H, generator=gen), 1)) if proj else []
    bias = torch.randn(w_ih[1].numel(), generator=gen)
    bias_hn = torch.randn(32, generator=gen) if gru else None
    B = 3
    if packed:
        bs = torch.tensor([3, 2, 2, 1])
        x = torch.randn(int(bs.sum()), I, generator=gen)
    else:
        bs, x = None, torch.randn(4, B, I, generator=gen)
    c0 = None if gru else torch.randn(B, H, generator=gen)
    return (x, w_ih, w_hh, w_hr, bias, bias_hn, torch.randn(B, P, generator=gen), c0, bs, packed)


@pytest.mark.parametrize("gru,proj,packed", [(False, False, False), (False, True, True), (True, False, True)])
def test_opcheck_q8_forward(gru, proj, packed):
    torch.library.opcheck(ops.q8_forward, _opcheck_args(gru, proj, packed))


def test_opcheck_q8_pack_and_linear():
    w = torch.randn(40, 13)
    torch.library.opcheck(ops.q8_pack, (w, 4))
    torch.library.opcheck(ops.q8_linear, (torch.randn(2, 3, 13), list(ops.q8_pack(w, 1)), torch.randn(48)))


@pytest.mark.compile
def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), lstm_fused.LSTM(8, 16, num_layers=2, batch_first=True))
    q = lstm_fused.quantize_dynamic(model).eval()

    def f(x):
        return q(x)[1][0]

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for B, T in ((2, 5), (3, 7)):
            x = torch.randn(B, T, 3)
            assert torch.equal(compiled(x), f(x))


def test_buffers_swapped_by_functional_call_and_export():
    # torch.func.functional_call and torch.export replace buffers in _buffers directly: the module
    # reads them by name on every call, so each call runs the buffers it is given.
    torch.manual_seed(0)
    q1, q2 = (lstm_fused.quantize_dynamic(nn.LSTM(4, 8)) for _ in range(2))
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        want1, want2 = q1(x)[0], q2(x)[0]
        got = torch.func.functional_call(q1, dict(q2.named_buffers()), (x,))[0]
        assert torch.equal(got, want2) and torch.equal(q1(x)[0], want1)
    exported = torch.export.export(q1, (x,))
    with torch.no_grad():
        assert torch.equal(exported.module()(x)[0], want1)
        assert torch.equal(q1(x)[0], want1)  # the eager module is itself after the export


def test_dtype_conversions_keep_the_int8_module_working():
    q = lstm_fused.quantize_dynamic(nn.GRU(4, 8, num_layers=2))
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        want = q(x)[0]
        q.double()  # the scales and biases stay float32, the int8 weights int8
        assert torch.equal(q(x)[0], want)


class _PlusOne:
    """A subclass's own forward around lstm_fused's module's."""

    def forward(self, x, hx=None):
        y, state = super().forward(x, hx)
        return y + 1, state


class MyFusedLSTM(_PlusOne, lstm_fused.LSTM):
    pass


class MyFusedGRU(_PlusOne, lstm_fused.GRU):
    pass


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_subclass_of_lstm_fused_modules_runs_int8(cell):
    base, Mine = (lstm_fused.LSTM, MyFusedLSTM) if cell == "lstm" else (lstm_fused.GRU, MyFusedGRU)
    torch.manual_seed(0)
    m = Mine(4, 8).eval()
    plain = base(4, 8)
    plain.load_state_dict(m.state_dict())
    q = lstm_fused.quantize_dynamic(m)
    assert isinstance(q, Mine)
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        assert torch.equal(q(x)[0], lstm_fused.quantize_dynamic(plain)(x)[0] + 1)
        assert not torch.equal(q(x)[0], m(x)[0])
        q.to(torch.float32)
        assert torch.equal(roundtrip("pickle", q)(x)[0], q(x)[0])


def test_convert_leaves_int8_modules_alone():
    torch.manual_seed(0)
    model = nn.Sequential(ForecastLSTM(4, 8), nn.GRU(8, 8))
    q = lstm_fused.convert(lstm_fused.quantize_dynamic(model))
    assert isinstance(q[0], qz.QuantizedLSTMMixin) and type(q[1]) is qz.QuantizedGRU
    again = roundtrip("torch.save", q)
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        assert torch.equal(again[0](x)[0], q[0](x)[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bias,state", [(True, True), (False, False)])
def test_cells_are_one_step_of_the_int8_stack(cell, bias, state):
    torch.manual_seed(0)
    torch_cell, stack_cls = (nn.LSTMCell, nn.LSTM) if cell == "lstm" else (nn.GRUCell, nn.GRU)
    c = torch_cell(5, 19, bias=bias)
    q = lstm_fused.quantize_dynamic(c)
    assert type(q) is (qz.QuantizedLSTMCell if cell == "lstm" else qz.QuantizedGRUCell) and not q.training
    stack = stack_cls(5, 19, bias=bias)
    stack.load_state_dict({k + "_l0": v for k, v in c.state_dict().items()})
    qs = lstm_fused.quantize_dynamic(stack)
    x = torch.randn(7, 5)
    hx = ((torch.randn(7, 19), torch.randn(7, 19)) if cell == "lstm" else torch.randn(7, 19)) if state else None
    as_list = (lambda out: list(out)) if cell == "lstm" else (lambda out: [out])
    with torch.no_grad():
        # The step is the stack's with T = 1 (the same op call), bit for bit.
        stack_hx = None if hx is None else tuple(s[None] for s in hx) if cell == "lstm" else hx[None]
        want = [s[0] for s in as_list(qs(x[None], stack_hx)[1])]
        got = as_list(q(x, hx))
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        # Unbatched input: a row alone (rows are quantized on their own).
        one = None if hx is None else tuple(s[0] for s in hx) if cell == "lstm" else hx[0]
        assert all(torch.equal(g, w[0]) for g, w in zip(as_list(q(x[0], one)), want))
        fresh = (qz.QuantizedLSTMCell if cell == "lstm" else qz.QuantizedGRUCell)(5, 19, bias=bias)
        fresh.load_state_dict(q.state_dict())
        assert all(torch.equal(g, w) for g, w in zip(as_list(fresh(x, hx)), want))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_errors_are_torchs(cell):
    torch.manual_seed(0)
    ref = nn.LSTMCell(4, 6) if cell == "lstm" else nn.GRUCell(4, 6)
    q = lstm_fused.quantize_dynamic(ref)
    state = (lambda b, h: (torch.zeros(b, h), torch.zeros(b, h))) if cell == "lstm" else (lambda b, h: torch.zeros(b, h))
    bad = [(torch.randn(3, 5),), (torch.randn(3, 4), state(2, 6)), (torch.randn(3, 4), state(3, 7)),
           (torch.randn(3, 4).double(),), (torch.randn(2, 3, 4),)]
    for args in bad:
        with pytest.raises(Exception) as theirs:
            ref(*args)
        with pytest.raises(type(theirs.value)) as ours:
            q(*args)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(RuntimeError, match="training mode"):
        q.train()(torch.randn(3, 4))


class Decoder(nn.Module):
    """A greedy decoder: a subclass of torch's LSTMCell, lstm_fused's GRUCell, a linear head."""

    def __init__(self):
        super().__init__()
        self.cell = ScaledLSTMCell(4, 8)
        self.gru = lstm_fused.GRUCell(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x, steps=5):
        h = c = torch.zeros(x.shape[0], 8)
        g = torch.zeros(x.shape[0], 8)
        outs = []
        for _ in range(steps):
            h, c = self.cell(x, (h, c))
            g = self.gru(h, g)
            x = self.head(g)
            outs.append(x)
        return torch.stack(outs)


def test_decoder_cells_in_a_model_and_subclasses():
    torch.manual_seed(0)
    model = Decoder().eval()
    q = lstm_fused.quantize_dynamic(model)
    assert isinstance(q.cell, ScaledLSTMCell) and isinstance(q.cell, qz.QuantizedLSTMCellMixin)
    assert type(q.gru) is qz.QuantizedGRUCell
    x = torch.randn(3, 4)
    with torch.no_grad(), OpCounter() as counter:
        y = q(x)
    assert counter.count("lstm_fused::q8_forward") == 10 and not counter.count("lstm_fused::forward")
    with torch.no_grad():
        want = model(x)
        assert ((y - want).abs().max() / want.abs().max()) < 3e-2
        assert torch.equal(roundtrip("torch.save", q)(x), y)
        assert torch.equal(lstm_fused.convert(q)(x), y)


class MyFusedLSTMCell(lstm_fused.LSTMCell):
    def forward(self, x, hx=None):
        h, c = super().forward(x, hx)
        return 2 * h, c


def test_subclass_of_lstm_fused_cell_runs_int8():
    torch.manual_seed(0)
    m = MyFusedLSTMCell(4, 8)
    plain = nn.LSTMCell(4, 8)
    plain.load_state_dict(m.state_dict())
    q = lstm_fused.quantize_dynamic(m)
    assert isinstance(q, MyFusedLSTMCell)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(q(x)[0], 2 * lstm_fused.quantize_dynamic(plain)(x)[0])
