"""Dropout between layers: only in training, only between layers, with nn.LSTM's scaling."""

import pytest
import torch

from utils import Config, TOLERANCES, assert_results_close, make_data, make_pair, run_model


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["dense", "packed_unsorted", "unbatched"])
def test_eval_mode_equals_nn_lstm(bidirectional, kind):
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=3, dropout=0.6, bidirectional=bidirectional,
                 input_kind=kind)
    ref, ours = make_pair(cfg)
    ref.eval()
    ours.eval()
    data = make_data(cfg)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data),
                         *TOLERANCES[torch.float64])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["dense", "packed_sorted"])
def test_train_mode_dropout_one_equals_nn_lstm(bidirectional, kind):
    """p=1 zeroes every input of layers > 0 (deterministically): equal to nn.LSTM, grads too."""
    cfg = Config(T=4, B=3, I=4, H=5, num_layers=3, dropout=1.0, bidirectional=bidirectional,
                 proj_size=3, input_kind=kind)
    ref, ours = make_pair(cfg)
    assert ref.training and ours.training
    data = make_data(cfg)
    expected = run_model(ref, cfg, data)
    actual = run_model(ours, cfg, data)
    assert_results_close(actual, expected, *TOLERANCES[torch.float64])
    # Sanity of the test itself: the upper layers' input weights got no gradient.
    assert expected["grad_weight_ih_l1"].abs().max() == 0
    assert expected["grad_weight_ih_l0"].abs().max() > 0


def test_train_mode_dropout_zero_equals_eval():
    cfg = Config(T=4, B=3, I=4, H=5, num_layers=2, dropout=0.0)
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    train = run_model(ours, cfg, data)
    ours.eval()
    evald = run_model(ours, cfg, data)
    for key in train:
        assert torch.equal(train[key], evald[key]), key


def dropout_probe(model, p, n):
    """Runs a 2-layer unidirectional model built so that layer 1 shows its dropped input.

    Layer 1 (T=1, zero state) gets gate pre-activations: i, o = +30 (open), f = 0,
    g = a * (dropped layer-0 output). So h1 = sigmoid(30) * tanh(sigmoid(30) * tanh(a * z)),
    exactly 0 where the unit was dropped, else determined by z = y0 / (1 - p).
    Returns (h1, the value h1 would have if nothing were dropped).
    """
    H, a = model.hidden_size, 0.5
    with torch.no_grad():
        model.weight_ih_l1.zero_()
        model.weight_ih_l1[2 * H:3 * H] = a * torch.eye(H, dtype=torch.float64)
        model.weight_hh_l1.zero_()
        model.bias_ih_l1.zero_()
        model.bias_hh_l1.zero_()
        model.bias_ih_l1[:H] = 30.0
        model.bias_ih_l1[3 * H:] = 30.0
    x = torch.randn(1, n, model.input_size, dtype=torch.float64)
    out, (h_n, _) = model(x)
    y0 = h_n[0]  # layer 0's output at the single step: never dropped
    s = torch.sigmoid(torch.tensor(30.0, dtype=torch.float64))
    kept = s * torch.tanh(s * torch.tanh(a * y0 / (1 - p)))
    return out[0], kept


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_train_mode_dropout_statistics(p):
    """Each layer-0 unit is dropped with probability p and kept ones are scaled by 1/(1-p);
    the last layer's output is not dropped. nn.LSTM goes through the same probe as a check."""
    import lstm_fused
    from torch import nn

    n = 4000
    for cls in (nn.LSTM, lstm_fused.LSTM):
        torch.manual_seed(0)
        model = cls(3, 4, num_layers=2, dropout=p, dtype=torch.float64)
        h1, kept = dropout_probe(model, p, n)
        dropped = h1 == 0
        frac = dropped.double().mean().item()
        err_kept = (h1[~dropped] - kept[~dropped]).abs().max().item()
        print(f"{cls.__module__}: dropped fraction {frac:.4f} (p={p}), kept max err {err_kept:.2e}")
        # Binomial std over 16000 units is <= 0.004: 0.03 is > 7 std away.
        assert abs(frac - p) < 0.03
        assert err_kept < 1e-12
        # Eval mode never drops.
        model.eval()
        h1_eval, _ = dropout_probe(model, 0.0, n)
        assert (h1_eval != 0).all()


def test_train_mode_dropout_reproducible_under_seed_and_layer0_untouched():
    cfg = Config(T=6, B=4, I=5, H=7, num_layers=3, dropout=0.5, bidirectional=True)
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    torch.manual_seed(7)
    a = run_model(ours, cfg, data)
    torch.manual_seed(7)
    b = run_model(ours, cfg, data)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = run_model(ours, cfg, data)
    assert not torch.equal(a["out"], c["out"])
    ours.eval()
    evald = run_model(ours, cfg, data)
    # Layer 0 (both directions) sees no dropout: its final states equal eval mode's.
    torch.testing.assert_close(a["h_n"][:2], evald["h_n"][:2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["c_n"][:2], evald["c_n"][:2], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a["h_n"][2:], evald["h_n"][2:])
