"""lstm_fused.LSTMCell and GRUCell against torch.nn.LSTMCell and GRUCell: contract, parity,
gradients, errors, autocast, compile, export."""
import copy

import pytest
import torch
from torch import nn

from utils import CELL_NAMES, CELLS, per_cell


def _pair(I, H, bias=True, dtype=torch.float64, seed=0, cell="lstm"):
    torch.manual_seed(seed)
    ref = CELLS[cell].torch_cell(I, H, bias=bias, dtype=dtype)
    ours = CELLS[cell].fused_cell(I, H, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _states(cell, *shape, **kwargs):
    """A state of cell's: (h, c) for an LSTM cell, h for a GRU cell, drawn in that order."""
    states = tuple(torch.randn(*shape, **kwargs) for _ in range(CELLS[cell].n_states))
    return states if len(states) > 1 else states[0]


def _tensors(result):
    """A cell's result (or state) as a list of tensors: [h, c] or [h]."""
    return list(result) if isinstance(result, tuple) else [result]


def _step(cell, x, hx, g):
    x = x.clone().requires_grad_()
    leaves = [x]
    if hx is not None:
        hx = tuple(t.clone().requires_grad_() for t in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
        leaves += _tensors(hx)
    outs = _tensors(cell(x, hx))
    loss = sum((o * go).sum() for o, go in zip(outs, _tensors(g)))
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves + list(cell.parameters())))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_contract_matches_torch(cell):
    torch_cell, fused_cell = CELLS[cell].torch_cell, CELLS[cell].fused_cell
    torch.manual_seed(3)
    ref = torch_cell(7, 5, bias=False)
    torch.manual_seed(3)
    ours = fused_cell(7, 5, bias=False)
    assert isinstance(ours, torch_cell)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))  # same init draws
    assert repr(ours).replace("lstm_fused.", "") == repr(ref) == f"{torch_cell.__name__}(7, 5, bias=False)"
    assert ours.bias_ih is None and ours.bias_hh is None
    gates = {"lstm": 4, "gru": 3}[cell] * 5
    assert ours.weight_ih.shape == (gates, 7) and ours.weight_hh.shape == (gates, 5)
    # state_dict both ways
    back = torch_cell(7, 5, bias=False)
    back.load_state_dict(ours.state_dict())
    ours.load_state_dict(torch_cell(7, 5, bias=False).state_dict())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell, B", per_cell({"lstm": [1, 3, 17, 32], "gru": [1, 3, 17, 32, 40]}))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("state", [True, False])
def test_parity(dtype, cell, B, bias, state):
    I, H = (5, 7) if B < 32 else (64, 48)
    ref, ours = _pair(I, H, bias, dtype, seed=B, cell=cell)
    gen = torch.Generator().manual_seed(B + 1)
    x = torch.randn(B, I, dtype=dtype, generator=gen)
    hx = _states(cell, B, H, dtype=dtype, generator=gen) if state else None
    g = _states(cell, B, H, dtype=dtype, generator=gen)
    actual, expected = _step(ours, x, hx, g), _step(ref, x, hx, g)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for i, (a, e) in enumerate(zip(actual, expected)):
        print(f"tensor {i}: max abs err {(a - e).abs().max().item():.3e}")
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)
    n = CELLS[cell].n_states
    with torch.no_grad():
        torch.testing.assert_close(_tensors(ours(x, hx)), _tensors(ref(x, hx)), rtol=tol, atol=tol)
    with torch.inference_mode():
        torch.testing.assert_close(_tensors(ours(x, hx)), expected[:n], rtol=tol, atol=tol)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("state", [True, False])
def test_unbatched(cell, state):
    ref, ours = _pair(4, 6, cell=cell)
    x = torch.randn(4, dtype=torch.float64)
    hx = _states(cell, 6, dtype=torch.float64) if state else None
    for a, e in zip(_tensors(ours(x, hx)), _tensors(ref(x, hx))):
        assert a.shape == e.shape == (6,)
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_empty_batch_and_non_contiguous_states(cell):
    ref, ours = _pair(4, 6, cell=cell)
    x = torch.randn(0, 4, dtype=torch.float64)
    assert _tensors(ours(x))[0].shape == _tensors(ref(x))[0].shape == (0, 6)
    x = torch.randn(3, 8, dtype=torch.float64)[:, ::2]
    expanded = torch.randn(1, 6, dtype=torch.float64).expand(3, 6)
    transposed = torch.randn(6, 3, dtype=torch.float64).t()
    # An LSTM cell takes both at once (h, c), a GRU cell each as its h.
    for hx in ([(expanded, transposed)] if cell == "lstm" else [expanded, transposed]):
        for a, e in zip(_tensors(ours(x, hx)), _tensors(ref(x, hx))):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_gru_nan_propagates_like_torch():
    ref, ours = _pair(4, 6, cell="gru")
    x = torch.randn(3, 4, dtype=torch.float64)
    h = torch.randn(3, 6, dtype=torch.float64)
    x[0, 1], h[2, 3] = float("nan"), float("inf")
    a, e = ours(x, h), ref(x, h)
    assert torch.equal(a.isnan(), e.isnan()) and a.isnan().any()
    torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_bf16_within_twice_torchs_error(cell):
    ref, ours = _pair(32, 64, dtype=torch.float64, cell=cell)
    x = torch.randn(8, 32, dtype=torch.float64).bfloat16().double()
    hx = _states(cell, 8, 64, dtype=torch.float64)
    hx = tuple(h.bfloat16().double() for h in hx) if cell == "lstm" else hx.bfloat16().double()
    ref16, ours16 = copy.deepcopy(ref).bfloat16(), copy.deepcopy(ours).bfloat16()
    truth = _tensors(copy.deepcopy(ref16).double()(x, hx))  # fp64 on exactly the bf16 weights and inputs
    hx16 = tuple(h.bfloat16() for h in hx) if cell == "lstm" else hx.bfloat16()
    for a, t, e in zip(_tensors(ours16(x.bfloat16(), hx16)), _tensors(ref16(x.bfloat16(), hx16)), truth):
        err_ours, err_torch = (a.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        print(f"bf16 max err: ours {err_ours:.3e}, torch {err_torch:.3e}")
        assert a.dtype == torch.bfloat16 and err_ours <= 2 * err_torch + 2**-8


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cpu_autocast_in_one_dtype_keeps_it_as_torch(cell):
    """Under CPU autocast torch's cells, given everything in fp32, return fp32 (an LSTM cell is
    left in fp32; a GRU cell runs its two products in bf16 and promotes them with h), which the
    fused step computes in fp32."""
    ref, ours = _pair(16, 32, dtype=torch.float32, cell=cell)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile() as prof:
        a = _tensors(ours(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = _tensors(ref(x))
    assert CELLS[cell].forward_op in {ev.name for ev in prof.events()}
    for t, r, plain in zip(a, e, _tensors(ref(x))):
        assert t.dtype == r.dtype == torch.float32
        torch.testing.assert_close(t, r, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(t, plain, rtol=1e-5, atol=1e-5)  # torch's cell without autocast


AUTOCAST_DTYPES = {
    "lstm": [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.bfloat16, None)],
    "gru": [(torch.bfloat16, None), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
            (torch.float32, torch.bfloat16)],
}


@pytest.mark.parametrize("cell, dtypes", per_cell(AUTOCAST_DTYPES, ids=lambda d: "-".join(map(str, d))))
def test_cpu_autocast_mixed_dtypes_as_torch(cell, dtypes):
    x_dtype, state_dtype = dtypes
    ref, ours = _pair(16, 32, dtype=torch.float32, cell=cell)
    x = torch.randn(4, 16).to(x_dtype)
    hx = None
    if state_dtype is not None:
        hx = _states(cell, 4, 32)
        hx = tuple(h.to(state_dtype) for h in hx) if cell == "lstm" else hx.to(state_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, e = _tensors(ours(x, hx)), _tensors(ref(x, hx))
    for t, r in zip(a, e):
        assert t.dtype == r.dtype
        assert torch.equal(t, r)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_gradcheck(cell):
    _, ours = _pair(3, 4, cell=cell)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(CELLS[cell].n_states)]
    params = [p.detach().clone().requires_grad_() for p in ours.parameters()]
    n = len(states)

    def f(x, *ts):
        hx = tuple(ts[:n]) if n > 1 else ts[0]
        return torch.func.functional_call(ours, dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), ts[n:])),
                                          (x, hx))

    assert torch.autograd.gradcheck(f, (x, *states, *params))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_one_fused_op_per_step(cell):
    _, ours = _pair(8, 16, dtype=torch.float32, cell=cell)
    x = torch.randn(2, 8)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
            ours(x)
        names = [e.name for e in prof.events()]
        assert names.count(CELLS[cell].forward_op) == 1 and f"aten::{cell}_cell" not in names, names


def _error(fn):
    try:
        fn()
    except Exception as e:  # the error itself is what is compared
        return type(e), str(e)
    return None


# An LSTM cell's state is (h, c), a GRU cell's h alone.
BAD_CALLS = {
    "lstm": {
        "3d input": lambda c: c(torch.randn(2, 3, 8)),
        "0d input": lambda c: c(torch.tensor(1.0)),
        "input size": lambda c: c(torch.randn(3, 5)),
        "h batch": lambda c: c(torch.randn(3, 8), (torch.randn(2, 16), torch.randn(3, 16))),
        "c batch": lambda c: c(torch.randn(3, 8), (torch.randn(3, 16), torch.randn(2, 16))),
        "h size": lambda c: c(torch.randn(3, 8), (torch.randn(3, 15), torch.randn(3, 16))),
        "c size": lambda c: c(torch.randn(3, 8), (torch.randn(3, 16), torch.randn(3, 15))),
        "3d state": lambda c: c(torch.randn(3, 8), (torch.randn(1, 3, 16), torch.randn(3, 16))),
        "unbatched input, batched state": lambda c: c(torch.randn(8), (torch.randn(3, 16), torch.randn(3, 16))),
        "batched input, unbatched state": lambda c: c(torch.randn(3, 8), (torch.randn(16), torch.randn(16))),
        "input dtype": lambda c: c(torch.randn(3, 8, dtype=torch.float64)),
        "state dtype": lambda c: c(torch.randn(3, 8), (torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 16))),
        "hx not a tuple": lambda c: c(torch.randn(3, 8), torch.randn(3, 16)),
    },
    "gru": {
        "3d input": lambda c: c(torch.randn(2, 3, 8)),
        "0d input": lambda c: c(torch.tensor(1.0)),
        "input size": lambda c: c(torch.randn(3, 5)),
        "input size unbatched": lambda c: c(torch.randn(5)),
        "h batch": lambda c: c(torch.randn(3, 8), torch.randn(2, 16)),
        "h size": lambda c: c(torch.randn(3, 8), torch.randn(3, 15)),
        "h size unbatched": lambda c: c(torch.randn(8), torch.randn(15)),
        "3d state": lambda c: c(torch.randn(3, 8), torch.randn(1, 3, 16)),
        "unbatched input, batched state": lambda c: c(torch.randn(8), torch.randn(3, 16)),
        "unbatched input, square batched state": lambda c: c(torch.randn(8), torch.randn(16, 16)),
        "batched input, unbatched state": lambda c: c(torch.randn(3, 8), torch.randn(16)),
        "batched input of H rows, unbatched state": lambda c: c(torch.randn(16, 8), torch.randn(16)),
        "input dtype": lambda c: c(torch.randn(3, 8, dtype=torch.float64)),
        "input bf16": lambda c: c(torch.randn(3, 8, dtype=torch.bfloat16)),
        "input int": lambda c: c(torch.randint(0, 2, (3, 8))),
        "state dtype": lambda c: c(torch.randn(3, 8), torch.randn(3, 16, dtype=torch.float64)),
        "state int": lambda c: c(torch.randn(3, 8), torch.zeros(3, 16, dtype=torch.long)),
        "hx a tuple": lambda c: c(torch.randn(3, 8), (torch.randn(3, 16),)),
    },
}


# Under CPU autocast a GRU cell's calls fail the same way, but for a bf16 input, which autocast makes
# legal.
ERROR_CASES = ([("lstm", case, False) for case in sorted(BAD_CALLS["lstm"])]
               + [("gru", case, False) for case in sorted(BAD_CALLS["gru"])]
               + [("gru", case, True) for case in sorted(BAD_CALLS["gru"]) if case != "input bf16"])


@pytest.mark.parametrize("cell, case, autocast", ERROR_CASES,
                         ids=[f"{c}-{case}-{'autocast' if a else 'plain'}" for c, case, a in ERROR_CASES])
def test_bad_input_errors_like_torch(cell, case, autocast):
    torch.manual_seed(0)
    results = []
    for cls in (CELLS[cell].torch_cell, CELLS[cell].fused_cell):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results.append(_error(lambda: BAD_CALLS[cell][case](cls(8, 16))))
    print(case, "torch:", results[0], "ours:", results[1])
    assert results[0] is not None and results[1] == results[0]


class Decoder(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = CELLS[cell].fused_cell(6, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x, h, c=None):
        """c: an LSTM cell's (a GRU cell has h alone); returns the outputs and the last state."""
        outs = []
        for _ in range(3):
            if c is None:
                h = self.cell(x, h)
            else:
                h, c = self.cell(x, (h, c))
            x = torch.tanh(self.head(h))
            outs.append(x)
        return (torch.stack(outs), h) if c is None else (torch.stack(outs), h, c)


def _decoder_inputs(cell, B):
    gen = torch.Generator().manual_seed(B)
    return torch.randn(B, 6, generator=gen), *_tensors(_states(cell, B, 8, generator=gen))


@pytest.mark.compile
@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(cell, dynamic):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Decoder(cell)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for B in (2, 5):
        inputs = _decoder_inputs(cell, B)
        leaves = [[t.clone().requires_grad_() for t in inputs] for _ in range(2)]
        outs = [m(*ls) for m, ls in zip((model, compiled), leaves)]
        for a, e in zip(outs[1], outs[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
        grads = [torch.autograd.grad(o[0].sum(), ls + list(model.parameters())) for o, ls in zip(outs, leaves)]
        for a, e in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.compile
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_export(cell):
    torch.manual_seed(0)
    model = Decoder(cell).eval()
    inputs = _decoder_inputs(cell, 3)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    op = CELLS[cell].forward_op.replace("::", ".")
    assert any(op in str(n.target) for n in ep.graph.nodes)
    for B in (3, 4):
        inputs = _decoder_inputs(cell, B)
        for a, e in zip(ep.module()(*inputs), model(*inputs)):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
