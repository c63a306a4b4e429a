"""The module contract: parameters, state_dict both ways, init, dtype/device, convert, pickling."""

import io
import math

import pytest
import torch
from torch import nn

import lstm_fused
from utils import Config, assert_results_close, make_data, make_pair, roundtrip, run_model

CONFIGS = [
    Config(I=3, H=5),
    Config(I=3, H=5, num_layers=3, bias=False),
    Config(I=4, H=6, num_layers=2, bidirectional=True),
    Config(I=4, H=6, num_layers=2, bidirectional=True, proj_size=2),
    Config(I=2, H=7, num_layers=3, proj_size=3, batch_first=True, dropout=0.3),
]


def ids(cfg):
    return f"L{cfg.num_layers}-bias{int(cfg.bias)}-bi{int(cfg.bidirectional)}-p{cfg.proj_size}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_parameter_names_order_shapes(cfg):
    ref = nn.LSTM(**cfg.module_kwargs())
    ours = lstm_fused.LSTM(**cfg.module_kwargs())
    ref_params = [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    ours_params = [(n, p.shape, p.dtype) for n, p in ours.named_parameters()]
    assert ours_params == ref_params
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]
    assert all(p.requires_grad for p in ours.parameters())
    assert list(ours.buffers()) == []


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_state_dict_loads_both_ways(cfg):
    data = make_data(cfg)
    # nn.LSTM -> lstm_fused.LSTM
    torch.manual_seed(1)
    ref = nn.LSTM(**cfg.module_kwargs(), dtype=torch.float64).eval()  # eval: no dropout
    ours = lstm_fused.LSTM(**cfg.module_kwargs(), dtype=torch.float64).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)
    # lstm_fused.LSTM -> nn.LSTM
    ours2 = lstm_fused.LSTM(**cfg.module_kwargs(), dtype=torch.float64).eval()
    ref2 = nn.LSTM(**cfg.module_kwargs(), dtype=torch.float64).eval()
    result = ref2.load_state_dict(ours2.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_results_close(run_model(ours2, cfg, data), run_model(ref2, cfg, data), 1e-9, 1e-9)


def test_state_dict_mismatch_errors():
    ours = lstm_fused.LSTM(4, 5, num_layers=2)
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict(nn.LSTM(4, 5, num_layers=1).state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        ours.load_state_dict(nn.LSTM(4, 6, num_layers=2).state_dict())


def test_init_uniform_range():
    H = 64
    torch.manual_seed(0)
    ours = lstm_fused.LSTM(48, H, num_layers=2, bidirectional=True, proj_size=32)
    k = 1 / math.sqrt(H)
    values = []
    for name, p in ours.named_parameters():
        assert p.abs().max() <= k, name
        values.append(p.detach().flatten())
    values = torch.cat(values)
    print("init min/max/mean/std", values.min(), values.max(), values.mean(), values.std())
    assert values.min() < -0.98 * k and values.max() > 0.98 * k
    assert abs(values.mean()) < 0.02 * k
    assert abs(values.std() - k / math.sqrt(3)) < 0.02 * k
    # Different parameters (and different calls) get different values.
    assert not torch.equal(ours.weight_hh_l0, ours.weight_hh_l0_reverse)
    assert not torch.equal(ours.weight_ih_l1, lstm_fused.LSTM(48, H, 2, bidirectional=True,
                                                              proj_size=32).weight_ih_l1)


def test_reset_parameters_uses_global_rng():
    torch.manual_seed(123)
    a = lstm_fused.LSTM(3, 5, 2)
    torch.manual_seed(123)
    b = lstm_fused.LSTM(3, 5, 2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_and_device_kwargs(dtype):
    ours = lstm_fused.LSTM(3, 4, 2, proj_size=2, device="cpu", dtype=dtype)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in ours.parameters())
    out, (h, c) = ours(torch.randn(5, 2, 3, dtype=dtype))
    assert out.dtype == h.dtype == c.dtype == dtype
    assert out.shape == (5, 2, 2) and h.shape == (2, 2, 2) and c.shape == (2, 2, 4)


def test_to_dtype_after_construction():
    cfg = Config(T=4, B=2, I=3, H=5, num_layers=2, bidirectional=True)
    ref, ours = make_pair(cfg, dtype=torch.float32)
    ref.double()
    ours.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    data = make_data(cfg)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)


def test_flatten_parameters_is_harmless():
    cfg = Config(T=4, B=2, I=3, H=5, num_layers=2)
    ref, ours = make_pair(cfg)
    ours.flatten_parameters()
    data = make_data(cfg)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)


# -- convert ------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 6)
        self.rnn = nn.LSTM(6, 7, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x):
        return self.rnn(self.embed(x))[0]


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.stack = nn.ModuleList([nn.LSTM(14, 8, proj_size=3, batch_first=True),
                                    nn.Sequential(nn.LSTM(3, 4, bias=False, batch_first=True))])
        self.heads = nn.ModuleDict({"out": nn.Linear(4, 2)})

    def forward(self, x):
        y = self.encoder(x)
        y = self.stack[0](y)[0]
        y = self.stack[1](y)[0]
        return self.heads["out"](y)


def test_convert_nested_model():
    torch.manual_seed(0)
    model = Model().double()
    model.stack[0].weight_hh_l0.requires_grad_(False)
    model.eval()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    expected = model(x)
    before = {n: (p.detach().clone(), p.dtype, p.requires_grad) for n, p in model.named_parameters()}
    converted = lstm_fused.convert(model)
    assert converted is model
    assert not any(isinstance(m, nn.LSTM) for m in converted.modules())
    assert sum(isinstance(m, lstm_fused.LSTM) for m in converted.modules()) == 3
    assert isinstance(converted.encoder.rnn, lstm_fused.LSTM)
    assert isinstance(converted.stack[1][0], lstm_fused.LSTM)
    assert converted.stack[0].proj_size == 3 and converted.stack[1][0].bias is False
    assert converted.encoder.rnn.batch_first and converted.encoder.rnn.bidirectional
    after = {n: (p.detach(), p.dtype, p.requires_grad) for n, p in converted.named_parameters()}
    assert list(after) == list(before)
    for name, (value, dtype, requires_grad) in before.items():
        assert torch.equal(after[name][0], value), name
        assert after[name][1] == dtype and after[name][2] == requires_grad, name
    assert not converted.training and not converted.encoder.rnn.training
    actual = converted(x)
    print("max abs err", (actual - expected).abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


def test_convert_keeps_training_mode_and_dropout():
    model = nn.Sequential(nn.LSTM(3, 4, num_layers=2, dropout=0.4))
    model.train()
    lstm_fused.convert(model)
    assert model[0].training and model[0].dropout == 0.4


def test_convert_top_level_lstm():
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    converted = lstm_fused.convert(ref)
    assert isinstance(converted, lstm_fused.LSTM)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), converted.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_convert_leaves_other_modules_alone():
    model = nn.Sequential(nn.RNN(3, 4), nn.Linear(4, 4), nn.LSTMCell(4, 4))
    lstm_fused.convert(model)
    assert [type(m) for m in model] == [nn.RNN, nn.Linear, lstm_fused.LSTMCell]


# -- pickling / copying -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["torch_save", "pickle", "deepcopy"])
def test_pickle_and_deepcopy(how):
    cfg = Config(T=4, B=3, I=3, H=5, num_layers=2, bidirectional=True, proj_size=2,
                 input_kind="packed_unsorted")
    _, ours = make_pair(cfg)
    clone = roundtrip(how, ours)
    assert type(clone) is lstm_fused.LSTM
    data = make_data(cfg)
    expected = run_model(ours, cfg, data)
    actual = run_model(clone, cfg, data)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    # The copy owns its parameters.
    with torch.no_grad():
        clone.weight_ih_l0.add_(1.0)
    assert not torch.equal(clone.weight_ih_l0, ours.weight_ih_l0)
    assert not torch.equal(run_model(clone, cfg, data)["out"], expected["out"])


def test_state_dict_torch_save_weights_only():
    cfg = Config(T=3, B=2, I=3, H=4, num_layers=2, proj_size=3)
    ref, ours = make_pair(cfg)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    ref.load_state_dict(torch.load(buf, weights_only=True))
    data = make_data(cfg)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)


@pytest.mark.parametrize("cfg", [dict(num_layers=2, bidirectional=True, dropout=0.5), dict(proj_size=3)])
def test_no_grad_path_equals_grad_path(cfg):
    """Without anything to differentiate the ops run below the autograd layer: same results as
    with grad, outputs that do not require grad, and in training mode the same dropout draws."""
    torch.manual_seed(0)
    m = lstm_fused.LSTM(5, 6, **cfg)
    x = torch.randn(7, 3, 5)
    torch.manual_seed(1)
    y_grad, (h_grad, c_grad) = m(x)
    torch.manual_seed(1)
    with torch.no_grad():
        y, (h, c) = m(x)
    assert not y.requires_grad and not h.requires_grad and not c.requires_grad
    assert y_grad.requires_grad
    for a, b in ((y, y_grad), (h, h_grad), (c, c_grad)):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_forward_mode_ad_is_refused():
    """The ops define no jvp: forward-mode AD raises, never a result without its tangent."""
    import torch.autograd.forward_ad as fwAD
    m = lstm_fused.LSTM(3, 4)
    x = torch.randn(2, 1, 3)
    with fwAD.dual_level():
        xd = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(NotImplementedError):
            m(xd)


def test_extension_built_from_this_source():
    # An extension left from before an edit of csrc/ (or from an experiment since reverted) would
    # test, and benchmark, other code than the tree's.
    assert lstm_fused._provenance.build_matches_source() in (True, None), (
        "lstm_fused._C was built from other sources than csrc/: pip install --no-build-isolation -e .")
