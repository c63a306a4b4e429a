"""lstm_fused.LSTMCell against torch.nn.LSTMCell: contract, parity, gradients, errors, compile, export."""
import copy

import pytest
import torch
from torch import nn

import lstm_fused


def _pair(I, H, bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    ref = nn.LSTMCell(I, H, bias=bias, dtype=dtype)
    ours = lstm_fused.LSTMCell(I, H, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _step(cell, x, hx, g):
    x = x.clone().requires_grad_()
    leaves = [x]
    if hx is not None:
        hx = tuple(t.clone().requires_grad_() for t in hx)
        leaves += list(hx)
    h, c = cell(x, hx)
    loss = (h * g[0]).sum() + (c * g[1]).sum()
    return [h.detach(), c.detach(), *torch.autograd.grad(loss, leaves + list(cell.parameters()))]


def test_contract_matches_torch():
    torch.manual_seed(3)
    ref = nn.LSTMCell(7, 5, bias=False)
    torch.manual_seed(3)
    ours = lstm_fused.LSTMCell(7, 5, bias=False)
    assert isinstance(ours, nn.LSTMCell)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))  # same init draws
    assert repr(ours).replace("lstm_fused.", "") == repr(ref) == "LSTMCell(7, 5, bias=False)"
    assert ours.bias_ih is None and ours.bias_hh is None
    # state_dict both ways
    back = nn.LSTMCell(7, 5, bias=False)
    back.load_state_dict(ours.state_dict())
    ours.load_state_dict(nn.LSTMCell(7, 5, bias=False).state_dict())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 3, 17, 32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("state", [True, False])
def test_parity(dtype, B, bias, state):
    I, H = (5, 7) if B != 32 else (64, 48)
    ref, ours = _pair(I, H, bias, dtype, seed=B)
    gen = torch.Generator().manual_seed(B + 1)
    x = torch.randn(B, I, dtype=dtype, generator=gen)
    hx = (torch.randn(B, H, dtype=dtype, generator=gen), torch.randn(B, H, dtype=dtype, generator=gen)) if state else None
    g = (torch.randn(B, H, dtype=dtype, generator=gen), torch.randn(B, H, dtype=dtype, generator=gen))
    actual, expected = _step(ours, x, hx, g), _step(ref, x, hx, g)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for i, (a, e) in enumerate(zip(actual, expected)):
        print(f"tensor {i}: max abs err {(a - e).abs().max().item():.3e}")
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("state", [True, False])
def test_unbatched(state):
    ref, ours = _pair(4, 6)
    x = torch.randn(4, dtype=torch.float64)
    hx = (torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)) if state else None
    for a, e in zip(ours(x, hx), ref(x, hx)):
        assert a.shape == e.shape == (6,)
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_empty_batch_and_non_contiguous_states():
    ref, ours = _pair(4, 6)
    x = torch.randn(0, 4, dtype=torch.float64)
    assert ours(x)[0].shape == ref(x)[0].shape == (0, 6)
    x = torch.randn(3, 8, dtype=torch.float64)[:, ::2]
    h = torch.randn(1, 6, dtype=torch.float64).expand(3, 6)
    c = torch.randn(6, 3, dtype=torch.float64).t()
    for a, e in zip(ours(x, (h, c)), ref(x, (h, c))):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_bf16_within_twice_torchs_error():
    ref, ours = _pair(32, 64, dtype=torch.float64)
    x, h, c = (torch.randn(8, n, dtype=torch.float64) for n in (32, 64, 64))
    truth = ref(x, (h, c))
    ref16, ours16 = copy.deepcopy(ref).bfloat16(), copy.deepcopy(ours).bfloat16()
    args = (x.bfloat16(), (h.bfloat16(), c.bfloat16()))
    for a, t, e in zip(ours16(*args), ref16(*args), truth):
        err_ours, err_torch = (a.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        print(f"bf16 max err: ours {err_ours:.3e}, torch {err_torch:.3e}")
        assert a.dtype == torch.bfloat16 and err_ours <= 2 * err_torch + 1e-3


def test_cpu_autocast_leaves_the_cell_in_fp32_as_torch():
    ref, ours = _pair(16, 32, dtype=torch.float32)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, e = ours(x), ref(x)
    for t, r in zip(a, e):
        assert t.dtype == r.dtype
        torch.testing.assert_close(t.float(), r.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32, None])
def test_cpu_autocast_mixed_dtypes_as_torch(state_dtype):
    ref, ours = _pair(16, 32, dtype=torch.float32)
    x = torch.randn(4, 16).bfloat16()
    hx = None if state_dtype is None else (torch.randn(4, 32).to(state_dtype), torch.randn(4, 32).to(state_dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, e = ours(x, hx), ref(x, hx)
    for t, r in zip(a, e):
        assert t.dtype == r.dtype
        torch.testing.assert_close(t.float(), r.float(), rtol=0, atol=0)


def test_gradcheck():
    _, ours = _pair(3, 4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(ours.parameters())

    def f(x, h, c, *ps):
        return torch.func.functional_call(ours, dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), ps)),
                                          (x, (h, c)))

    assert torch.autograd.gradcheck(f, (x, h, c, *[p.detach().clone().requires_grad_() for p in params]))


def test_one_fused_op_per_step():
    _, ours = _pair(8, 16, dtype=torch.float32)
    x = torch.randn(2, 8)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
            ours(x)
        names = [e.name for e in prof.events()]
        assert names.count("lstm_fused::forward") == 1 and "aten::lstm_cell" not in names


def _error(fn):
    try:
        fn()
    except Exception as e:  # the error itself is what is compared
        return type(e), str(e)
    return None


BAD_CALLS = {
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
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_errors_like_torch(case):
    torch.manual_seed(0)
    expected = _error(lambda: BAD_CALLS[case](nn.LSTMCell(8, 16)))
    actual = _error(lambda: BAD_CALLS[case](lstm_fused.LSTMCell(8, 16)))
    print(case, "torch:", expected, "ours:", actual)
    assert expected is not None and actual == expected


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = lstm_fused.LSTMCell(6, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x, h, c):
        outs = []
        for _ in range(3):
            h, c = self.cell(x, (h, c))
            x = torch.tanh(self.head(h))
            outs.append(x)
        return torch.stack(outs), h, c


def _decoder_inputs(B):
    gen = torch.Generator().manual_seed(B)
    return torch.randn(B, 6, generator=gen), torch.randn(B, 8, generator=gen), torch.randn(B, 8, generator=gen)


@pytest.mark.compile
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic):
    torch.manual_seed(0)
    model = Decoder()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for B in (2, 5):
        inputs = _decoder_inputs(B)
        leaves = [[t.clone().requires_grad_() for t in inputs] for _ in range(2)]
        outs = [m(*ls) for m, ls in zip((model, compiled), leaves)]
        for a, e in zip(outs[1], outs[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
        grads = [torch.autograd.grad(o[0].sum(), ls) for o, ls in zip(outs, leaves)]
        for a, e in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.compile
def test_export():
    torch.manual_seed(0)
    model = Decoder().eval()
    inputs = _decoder_inputs(3)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, inputs, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    assert any("lstm_fused.forward" in str(n.target) for n in ep.graph.nodes)
    for B in (3, 4):
        inputs = _decoder_inputs(B)
        for a, e in zip(ep.module()(*inputs), model(*inputs)):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
