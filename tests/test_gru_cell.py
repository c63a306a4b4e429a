"""lstm_fused.GRUCell against torch.nn.GRUCell: contract, parity, gradients, errors, autocast,
compile, export."""
import copy

import pytest
import torch
from torch import nn

import lstm_fused


def _pair(I, H, bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    ref = nn.GRUCell(I, H, bias=bias, dtype=dtype)
    ours = lstm_fused.GRUCell(I, H, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _step(cell, x, h, g):
    x = x.clone().requires_grad_()
    leaves = [x]
    if h is not None:
        h = h.clone().requires_grad_()
        leaves.append(h)
    out = cell(x, h)
    return [out.detach(), *torch.autograd.grad((out * g).sum(), leaves + list(cell.parameters()))]


def test_contract_matches_torch():
    torch.manual_seed(3)
    ref = nn.GRUCell(7, 5, bias=False)
    torch.manual_seed(3)
    ours = lstm_fused.GRUCell(7, 5, bias=False)
    assert isinstance(ours, nn.GRUCell)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))  # same init draws
    assert repr(ours) == repr(ref) == "GRUCell(7, 5, bias=False)"
    assert ours.bias_ih is None and ours.bias_hh is None
    assert ours.weight_ih.shape == (15, 7) and ours.weight_hh.shape == (15, 5)
    back = nn.GRUCell(7, 5, bias=False)
    back.load_state_dict(ours.state_dict())
    ours.load_state_dict(nn.GRUCell(7, 5, bias=False).state_dict())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 3, 17, 32, 40])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("state", [True, False])
def test_parity(dtype, B, bias, state):
    I, H = (5, 7) if B < 32 else (64, 48)
    ref, ours = _pair(I, H, bias, dtype, seed=B)
    gen = torch.Generator().manual_seed(B + 1)
    x = torch.randn(B, I, dtype=dtype, generator=gen)
    h = torch.randn(B, H, dtype=dtype, generator=gen) if state else None
    g = torch.randn(B, H, dtype=dtype, generator=gen)
    actual, expected = _step(ours, x, h, g), _step(ref, x, h, g)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for i, (a, e) in enumerate(zip(actual, expected)):
        print(f"tensor {i}: max abs err {(a - e).abs().max().item():.3e}")
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, h), ref(x, h), rtol=tol, atol=tol)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x, h), expected[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("state", [True, False])
def test_unbatched(state):
    ref, ours = _pair(4, 6)
    x = torch.randn(4, dtype=torch.float64)
    h = torch.randn(6, dtype=torch.float64) if state else None
    a, e = ours(x, h), ref(x, h)
    assert a.shape == e.shape == (6,)
    torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_empty_batch_and_non_contiguous():
    ref, ours = _pair(4, 6)
    x = torch.randn(0, 4, dtype=torch.float64)
    assert ours(x).shape == ref(x).shape == (0, 6)
    x = torch.randn(3, 8, dtype=torch.float64)[:, ::2]
    for h in (torch.randn(1, 6, dtype=torch.float64).expand(3, 6), torch.randn(6, 3, dtype=torch.float64).t()):
        torch.testing.assert_close(ours(x, h), ref(x, h), rtol=1e-12, atol=1e-12)


def test_nan_propagates_like_torch():
    ref, ours = _pair(4, 6)
    x = torch.randn(3, 4, dtype=torch.float64)
    h = torch.randn(3, 6, dtype=torch.float64)
    x[0, 1], h[2, 3] = float("nan"), float("inf")
    a, e = ours(x, h), ref(x, h)
    assert torch.equal(a.isnan(), e.isnan()) and a.isnan().any()
    torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_bf16_within_twice_torchs_error():
    ref, ours = _pair(32, 64, dtype=torch.float64)
    x, h = torch.randn(8, 32, dtype=torch.float64), torch.randn(8, 64, dtype=torch.float64)
    x, h = x.bfloat16().double(), h.bfloat16().double()
    ref16, ours16 = copy.deepcopy(ref).bfloat16(), copy.deepcopy(ours).bfloat16()
    truth = copy.deepcopy(ref16).double()(x, h)  # fp64 on exactly the bf16 weights and inputs
    a, t = ours16(x.bfloat16(), h.bfloat16()), ref16(x.bfloat16(), h.bfloat16())
    err_ours, err_torch = (a.double() - truth).abs().max().item(), (t.double() - truth).abs().max().item()
    print(f"bf16 max err: ours {err_ours:.3e}, torch {err_torch:.3e}")
    assert a.dtype == torch.bfloat16 and err_ours <= 2 * err_torch + 2**-8


def test_cpu_autocast_in_one_dtype_keeps_it_as_torch():
    """Under CPU autocast torch's cell runs its two products in bf16 and promotes them with h: with
    everything in fp32 the result is fp32, which the fused step computes in fp32."""
    ref, ours = _pair(16, 32, dtype=torch.float32)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile() as prof:
        a = ours(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = ref(x)
    assert "lstm_fused::gru_forward" in {ev.name for ev in prof.events()}
    assert a.dtype == e.dtype == torch.float32
    torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(a, ref(x), rtol=1e-5, atol=1e-5)  # torch's cell without autocast


@pytest.mark.parametrize("x_dtype, h_dtype", [(torch.bfloat16, None), (torch.bfloat16, torch.bfloat16),
                                              (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_cpu_autocast_mixed_dtypes_as_torch(x_dtype, h_dtype):
    ref, ours = _pair(16, 32, dtype=torch.float32)
    x = torch.randn(4, 16).to(x_dtype)
    h = None if h_dtype is None else torch.randn(4, 32).to(h_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, e = ours(x, h), ref(x, h)
    assert a.dtype == e.dtype
    assert torch.equal(a, e)


def test_gradcheck():
    _, ours = _pair(3, 4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in ours.parameters()]

    def f(x, h, *ps):
        return torch.func.functional_call(ours, dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), ps)),
                                          (x, h))

    assert torch.autograd.gradcheck(f, (x, h, *params))


def test_one_fused_op_per_step():
    _, ours = _pair(8, 16, dtype=torch.float32)
    x = torch.randn(2, 8)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
            ours(x)
        names = [e.name for e in prof.events()]
        assert names.count("lstm_fused::gru_forward") == 1 and "aten::gru_cell" not in names, names


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
}


# Under CPU autocast the same calls fail the same way, but for a bf16 input, which autocast makes legal.
ERROR_CASES = [(case, False) for case in sorted(BAD_CALLS)] + [(case, True) for case in sorted(BAD_CALLS)
                                                                 if case != "input bf16"]


@pytest.mark.parametrize("case, autocast", ERROR_CASES, ids=[f"{c}-{'autocast' if a else 'plain'}"
                                                              for c, a in ERROR_CASES])
def test_bad_input_errors_like_torch(case, autocast):
    torch.manual_seed(0)
    results = []
    for cls in (nn.GRUCell, lstm_fused.GRUCell):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results.append(_error(lambda: BAD_CALLS[case](cls(8, 16))))
    print(case, "torch:", results[0], "ours:", results[1])
    assert results[0] is not None and results[1] == results[0]


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = lstm_fused.GRUCell(6, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x, h):
        outs = []
        for _ in range(3):
            h = self.cell(x, h)
            x = torch.tanh(self.head(h))
            outs.append(x)
        return torch.stack(outs), h


def _decoder_inputs(B):
    gen = torch.Generator().manual_seed(B)
    return torch.randn(B, 6, generator=gen), torch.randn(B, 8, generator=gen)


@pytest.mark.compile
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Decoder()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for B in (2, 5):
        inputs = _decoder_inputs(B)
        leaves = [[t.clone().requires_grad_() for t in inputs] for _ in range(2)]
        outs = [m(*ls) for m, ls in zip((model, compiled), leaves)]
        for a, e in zip(outs[1], outs[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
        grads = [torch.autograd.grad(o[0].sum(), ls + list(model.parameters())) for o, ls in zip(outs, leaves)]
        for a, e in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.compile
def test_export():
    torch.manual_seed(0)
    model = Decoder().eval()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, _decoder_inputs(3), dynamic_shapes=({0: batch}, {0: batch}))
    assert any("lstm_fused.gru_forward" in str(n.target) for n in ep.graph.nodes)
    for B in (3, 4):
        inputs = _decoder_inputs(B)
        for a, e in zip(ep.module()(*inputs), model(*inputs)):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
