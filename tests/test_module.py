"""The module contract of lstm_fused.LSTM and GRU: parameters, state_dict both ways, init,
dtype/device, convert, pickling."""

import dataclasses
import io
import math

import pytest
import torch
from torch import nn

import lstm_fused
from utils import (CELL_NAMES, CELLS, Config, assert_results_close, call, make_data, make_pair, per_cell,
                   roundtrip, run_model)

CONFIGS = {
    "lstm": [
        Config(I=3, H=5),
        Config(I=3, H=5, num_layers=3, bias=False),
        Config(I=4, H=6, num_layers=2, bidirectional=True),
        Config(I=4, H=6, num_layers=2, bidirectional=True, proj_size=2),
        Config(I=2, H=7, num_layers=3, proj_size=3, batch_first=True, dropout=0.3),
    ],
    "gru": [
        Config(I=3, H=5, cell="gru"),
        Config(I=3, H=5, num_layers=3, bias=False, cell="gru"),
        Config(I=4, H=6, num_layers=2, bidirectional=True, cell="gru"),
        Config(I=2, H=7, num_layers=3, batch_first=True, dropout=0.3, bidirectional=True, cell="gru"),
    ],
}


def ids(cfg):
    return f"L{cfg.num_layers}-bias{int(cfg.bias)}-bi{int(cfg.bidirectional)}-p{cfg.proj_size}-bf{int(cfg.batch_first)}"


@pytest.mark.parametrize("cell, cfg", per_cell(CONFIGS, ids=ids))
def test_parameters_init_and_attributes_like_torch(cell, cfg):
    """Names, order, shapes and dtypes of the parameters; under the same seed, the very same initial
    values (torch draws uniform(-1/sqrt(H), 1/sqrt(H)) parameter by parameter in this order)."""
    torch_rnn, fused_rnn = CELLS[cell].torch_rnn, CELLS[cell].fused_rnn
    kwargs = cfg.module_kwargs()
    torch.manual_seed(7)
    ref = torch_rnn(**kwargs)
    torch.manual_seed(7)
    ours = fused_rnn(**kwargs)
    assert [(n, p.shape, p.dtype) for n, p in ours.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
    assert all(p.requires_grad for p in ours.parameters()) and list(ours.buffers()) == []
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size", "mode"):
        assert getattr(ours, name) == getattr(ref, name), name
        assert type(getattr(ours, name)) is type(getattr(ref, name)), name
    assert ours._flat_weights_names == ref._flat_weights_names and ours._all_weights == ref._all_weights
    assert [[id(p) for p in ws] for ws in ours.all_weights] == [[id(getattr(ours, n)) for n in names]
                                                               for names in ours._all_weights]
    assert [id(w) for w in ours._flat_weights] == [id(getattr(ours, n)) for n in ours._flat_weights_names]
    assert ours.extra_repr() == ref.extra_repr() and repr(ours) == repr(ref)
    assert not isinstance(ours, torch_rnn) and not isinstance(ours, nn.RNNBase)


@pytest.mark.parametrize("cell, cfg", per_cell(CONFIGS, ids=ids))
def test_state_dict_loads_both_ways(cell, cfg):
    torch_rnn, fused_rnn = CELLS[cell].torch_rnn, CELLS[cell].fused_rnn
    data = make_data(cfg)
    # torch -> lstm_fused
    torch.manual_seed(1)
    ref = torch_rnn(**cfg.module_kwargs(), dtype=torch.float64).eval()  # eval: no dropout
    ours = fused_rnn(**cfg.module_kwargs(), dtype=torch.float64).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)
    # lstm_fused -> torch
    ours2 = fused_rnn(**cfg.module_kwargs(), dtype=torch.float64).eval()
    ref2 = torch_rnn(**cfg.module_kwargs(), dtype=torch.float64).eval()
    result = ref2.load_state_dict(ours2.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_results_close(run_model(ours2, cfg, data), run_model(ref2, cfg, data), 1e-9, 1e-9)
    # The other cell's checkpoint does not fit: an LSTM's gates are 4H rows, a GRU's 3H.
    other = dataclasses.replace(cfg, cell="gru" if cfg.lstm else "lstm", proj_size=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        ours.load_state_dict(CELLS[other.cell].torch_rnn(**other.module_kwargs(), dtype=torch.float64).state_dict())


def test_state_dict_mismatch_errors():
    ours = lstm_fused.LSTM(4, 5, num_layers=2)
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict(nn.LSTM(4, 5, num_layers=1).state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        ours.load_state_dict(nn.LSTM(4, 6, num_layers=2).state_dict())


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_init_uniform_range(cell):
    H = 64
    kwargs = dict(num_layers=2, bidirectional=True, **(dict(proj_size=32) if cell == "lstm" else {}))
    torch.manual_seed(0)
    ours = CELLS[cell].fused_rnn(48, H, **kwargs)
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
    assert not torch.equal(ours.weight_ih_l1, CELLS[cell].fused_rnn(48, H, **kwargs).weight_ih_l1)


def test_reset_parameters_uses_global_rng():
    torch.manual_seed(123)
    a = lstm_fused.LSTM(3, 5, 2)
    torch.manual_seed(123)
    b = lstm_fused.LSTM(3, 5, 2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_and_device_kwargs(cell, dtype):
    cfg = Config(I=3, H=4, num_layers=2, **(dict(proj_size=2) if cell == "lstm" else dict(bidirectional=True)),
                 cell=cell)
    ours = CELLS[cell].fused_rnn(**cfg.module_kwargs(), device="cpu", dtype=dtype)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in ours.parameters())
    out, h, c = call(ours, cfg, torch.randn(5, 2, 3, dtype=dtype))
    assert out.dtype == h.dtype == dtype
    assert out.shape == (5, 2, cfg.D * cfg.P) and h.shape == (2 * cfg.D, 2, cfg.P)
    if cfg.lstm:
        assert c.dtype == dtype and c.shape == (2 * cfg.D, 2, cfg.H)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_to_dtype_after_construction(cell):
    cfg = Config(T=4, B=2, I=3, H=5, num_layers=2, bidirectional=True, cell=cell)
    ref, ours = make_pair(cfg, dtype=torch.float32)
    ref.double()
    ours.to(torch.float64)
    ours.flatten_parameters()
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


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("how", ["torch_save", "pickle", "deepcopy"])
def test_pickle_and_deepcopy(cell, how):
    cfg = Config(T=4, B=3, I=3, H=5, num_layers=2, bidirectional=True, proj_size=2 if cell == "lstm" else 0,
                 input_kind="packed_unsorted", cell=cell)
    _, ours = make_pair(cfg)
    clone = roundtrip(how, ours)
    assert type(clone) is CELLS[cell].fused_rnn
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


NO_GRAD_KWARGS = {
    "lstm": [dict(num_layers=2, bidirectional=True, dropout=0.5), dict(proj_size=3)],
    "gru": [dict(num_layers=2, dropout=0.5), dict(num_layers=2, bidirectional=True, dropout=0.5)],
}


@pytest.mark.parametrize("cell, kwargs",
                         per_cell(NO_GRAD_KWARGS, ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items())))
def test_no_grad_path_equals_grad_path(cell, kwargs):
    """Without anything to differentiate the ops run below the autograd layer: same results as
    with grad, outputs that do not require grad, and in training mode the same dropout draws."""
    cfg = Config(cell=cell)
    torch.manual_seed(0)
    m = CELLS[cell].fused_rnn(5, 6, **kwargs)
    x = torch.randn(7, 3, 5)
    torch.manual_seed(1)
    with_grad = call(m, cfg, x)
    torch.manual_seed(1)
    with torch.no_grad():
        without = call(m, cfg, x)
    without, with_grad = [t for t in without if t is not None], [t for t in with_grad if t is not None]
    assert not any(t.requires_grad for t in without) and with_grad[0].requires_grad
    for a, b in zip(without, with_grad, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_forward_mode_ad_is_refused(cell):
    """The ops define no jvp: forward-mode AD raises, never a result without its tangent."""
    import torch.autograd.forward_ad as fwAD
    m = CELLS[cell].fused_rnn(3, 4)
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
