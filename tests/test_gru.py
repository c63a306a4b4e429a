"""lstm_fused.GRU against torch.nn.GRU where a GRU's behaviour is its own: gradcheck, positional
arguments, autocast, dropout, determinism, CUDA.

What an LSTM and a GRU share is tested for both: parity in test_parity.py, the module contract in
test_module.py, errors in test_errors.py, torch.compile and torch.export in test_compile.py.
"""

import pytest
import torch
from torch import nn

import lstm_fused
from utils import TOLERANCES, Config, assert_results_close, make_data, make_pair, report, run_model


def test_gradcheck_float64():
    """torch.autograd.gradcheck of the module (input, h0 and every parameter), dense and packed."""
    for kind, bidirectional in (("dense", True), ("packed_unsorted", True), ("dense", False)):
        cfg = Config(T=3, B=3, I=3, H=4, num_layers=2, bidirectional=bidirectional, input_kind=kind, cell="gru")
        _, ours = make_pair(cfg)
        data = make_data(cfg)
        names = [n for n, _ in ours.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in ours.parameters()]

        def f(x, h0, *ps):
            inp = torch.nn.utils.rnn.pack_padded_sequence(x, data.lengths, enforce_sorted=False) if cfg.packed else x
            out, h = torch.func.functional_call(ours, dict(zip(names, ps)), (inp, h0))
            return (out.data if cfg.packed else out), h

        x = data.x.clone().requires_grad_()
        h0 = data.h0.clone().requires_grad_()
        assert torch.autograd.gradcheck(f, (x, h0, *params))


def test_positional_arguments_in_torch_order():
    ours = lstm_fused.GRU(4, 6, 2, False, True, 0.25, True)
    ref = nn.GRU(4, 6, 2, False, True, 0.25, True)
    assert repr(ours) == repr(ref) == (
        "GRU(4, 6, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True)")


# -- autocast, dropout, determinism -------------------------------------------------------------


def _autocast_run(model, x, h0, g):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = model(x, h0)
    loss = (out.float() * g).sum() + h.float().sum()
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return {"out": out.detach(), "h_n": h.detach(), **{f"grad{i}": t for i, t in enumerate(grads)}}


@pytest.mark.parametrize("x_dtype, h_dtype", [(torch.float32, None), (torch.float32, torch.float32),
                                              (torch.bfloat16, None), (torch.bfloat16, torch.float32),
                                              (torch.float32, torch.bfloat16)])
def test_cpu_autocast_like_nn_gru(x_dtype, h_dtype):
    """Under CPU autocast torch.nn.GRU (unlike nn.LSTM) is not cast as a whole: its products run in
    bf16 and promote with the state. In one dtype (fp32 here) the result keeps that dtype and ours
    computes in it (so it sits within bf16 error of torch's); with mixed dtypes both run torch's
    op and agree exactly. Result dtypes are torch's in every case."""
    cfg = Config(T=5, B=3, I=8, H=16, num_layers=2, bidirectional=True, dtype=torch.float32, cell="gru")
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    x = data.x.to(x_dtype)
    h0 = None if h_dtype is None else data.h0.to(h_dtype)
    g = data.g_out.float()
    with torch.profiler.profile() as prof:
        actual = _autocast_run(ours, x, h0, g)
    expected = _autocast_run(ref, x, h0, g)
    one_dtype = x_dtype == torch.float32 and h_dtype in (None, torch.float32)
    names = {e.name for e in prof.events()}
    assert ("lstm_fused::gru_forward" in names) == one_dtype, names
    for key in expected:
        report(key, actual[key], expected[key])
        assert actual[key].dtype == expected[key].dtype, (key, actual[key].dtype, expected[key].dtype)
        if one_dtype:
            scale = max(1.0, expected[key].abs().max().item())
            torch.testing.assert_close(actual[key].float(), expected[key].float(), rtol=5e-2, atol=5e-2 * scale,
                                       msg=key)
        else:
            assert torch.equal(actual[key], expected[key]), key


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["dense", "packed_unsorted"])
def test_training_dropout_equals_nn_gru_under_the_same_seed(bidirectional, kind):
    """Dropout between layers draws its masks as torch's GRU does (one dropout of each layer's output
    but the last, in order), so under the same seed the results and gradients are nn.GRU's."""
    cfg = Config(T=6, B=4, I=5, H=7, num_layers=3, dropout=0.4, bidirectional=bidirectional, input_kind=kind,
                 cell="gru")
    ref, ours = make_pair(cfg)
    assert ours.training
    data = make_data(cfg)
    torch.manual_seed(11)
    expected = run_model(ref, cfg, data)
    torch.manual_seed(11)
    actual = run_model(ours, cfg, data)
    assert_results_close(actual, expected, *TOLERANCES[torch.float64])
    again = run_model(ours, cfg, data)  # other draws
    assert not torch.equal(again["out"], actual["out"])
    ours.eval()
    ref.eval()
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), *TOLERANCES[torch.float64])


def test_dropout_statistics_and_scaling():
    """Each layer-0 unit is dropped with probability p and a kept one is scaled by 1/(1 - p); the
    last layer's output is not dropped. Layer 1 (T=1, zero state, z = 0) computes h1 = tanh(a * in),
    exactly 0 where its input was dropped."""
    n, p, a = 4000, 0.3, 0.5
    torch.manual_seed(0)
    model = lstm_fused.GRU(3, 4, num_layers=2, dropout=p, dtype=torch.float64)
    H = model.hidden_size
    with torch.no_grad():
        model.weight_ih_l1.zero_()
        model.weight_ih_l1[2 * H:] = a * torch.eye(H, dtype=torch.float64)
        model.weight_hh_l1.zero_()
        model.bias_ih_l1.zero_()
        model.bias_hh_l1.zero_()
        model.bias_ih_l1[H:2 * H] = -40.0  # z = sigmoid(-40): h1 = n
    x = torch.randn(1, n, 3, dtype=torch.float64)
    out, h_n = model(x)
    y0 = h_n[0]
    h1 = out[0]
    dropped = h1 == 0
    frac = dropped.double().mean().item()
    kept = torch.tanh(a * y0 / (1 - p))
    err = (h1[~dropped] - kept[~dropped]).abs().max().item()
    print(f"dropped fraction {frac:.4f} (p={p}), kept max err {err:.2e}")
    assert abs(frac - p) < 0.03 and err < 1e-12
    model.eval()
    assert (model(x)[0] != 0).all()


DETERMINISM = [
    Config(T=9, B=6, I=17, H=33, num_layers=2, bidirectional=True, dtype=torch.float32, cell="gru"),
    Config(T=9, B=6, I=17, H=33, num_layers=2, bidirectional=True, input_kind="packed_unsorted", dtype=torch.float32,
           cell="gru"),
    Config(T=16, B=32, I=64, H=128, dtype=torch.float32, cell="gru"),
    Config(T=7, B=5, I=8, H=24, num_layers=2, input_kind="packed_sorted", dtype=torch.bfloat16, cell="gru"),
    Config(T=7, B=5, I=8, H=24, num_layers=3, bidirectional=True, dtype=torch.float64, cell="gru"),
]


@pytest.mark.parametrize("cfg", DETERMINISM, ids=lambda c: f"{c.input_kind}-H{c.H}-{str(c.dtype)[6:]}")
def test_bitwise_deterministic(cfg):
    """Identical calls give bitwise-identical outputs and gradients, also under
    torch.use_deterministic_algorithms(True)."""
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    first = run_model(ours, cfg, data)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [run_model(ours, cfg, data) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(old)
    for again in runs:
        for key in first:
            assert torch.equal(again[key], first[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_torchs_gru_on_the_same_parameters():
    """On CUDA tensors there is no fused GRU kernel: the module runs torch's own (cuDNN) GRU, so its
    results are torch.nn.GRU's, bit for bit, packed or not."""
    for kind in ("dense", "packed_unsorted"):
        cfg = Config(T=6, B=4, I=5, H=8, num_layers=2, bidirectional=True, input_kind=kind, dtype=torch.float32,
                     cell="gru")
        ref, ours = make_pair(cfg)
        ref.cuda(), ours.cuda()
        data = make_data(cfg)
        data.x, data.h0, data.g_out, data.g_h = (t.cuda() for t in (data.x, data.h0, data.g_out, data.g_h))
        expected, actual = run_model(ref, cfg, data), run_model(ours, cfg, data)
        for key in expected:
            assert torch.equal(actual[key], expected[key]), key
