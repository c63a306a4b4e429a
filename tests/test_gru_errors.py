"""Bad input and edge cases get what torch.nn.GRU gives them.

Each case makes the same call on nn.GRU and on lstm_fused.GRU and compares the exception type and
message exactly (or the warning category and message); NaN/Inf, saturation, empty batches and
non-contiguous tensors behave as in nn.GRU.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import lstm_fused
from gru_utils import make_gru_pair, run_gru
from utils import TOLERANCES, Config, assert_results_close, make_data, report


def raised(fn):
    """The exception fn raises; fails the test if it raises none."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def assert_same_error(ref_fn, ours_fn):
    ref_exc, ours_exc = raised(ref_fn), raised(ours_fn)
    print(f"nn.GRU:       {type(ref_exc).__name__}: {ref_exc}")
    print(f"lstm_fused:   {type(ours_exc).__name__}: {ours_exc}")
    assert type(ours_exc) is type(ref_exc)
    assert str(ours_exc) == str(ref_exc)


# -- constructor -------------------------------------------------------------------------------

BAD_CTOR_ARGS = {
    "hidden_size_0": dict(input_size=4, hidden_size=0),
    "hidden_size_negative": dict(input_size=4, hidden_size=-3),
    "hidden_size_float": dict(input_size=4, hidden_size=2.5),
    "hidden_size_str": dict(input_size=4, hidden_size="5"),
    "input_size_0": dict(input_size=0, hidden_size=3),
    "input_size_float": dict(input_size=4.0, hidden_size=3),
    "num_layers_0": dict(input_size=4, hidden_size=3, num_layers=0),
    "num_layers_float": dict(input_size=4, hidden_size=3, num_layers=2.0),
    "dropout_negative": dict(input_size=4, hidden_size=3, num_layers=2, dropout=-0.1),
    "dropout_above_1": dict(input_size=4, hidden_size=3, num_layers=2, dropout=1.5),
    "dropout_bool": dict(input_size=4, hidden_size=3, num_layers=2, dropout=True),
    "dropout_str": dict(input_size=4, hidden_size=3, num_layers=2, dropout="0.1"),
    "bias_int": dict(input_size=4, hidden_size=3, bias=1),
    "batch_first_none": dict(input_size=4, hidden_size=3, batch_first=None),
    # torch.nn.GRU refuses proj_size whatever its value, before any other check.
    "proj_size": dict(input_size=4, hidden_size=3, proj_size=2),
    "proj_size_0": dict(input_size=4, hidden_size=3, proj_size=0),
    "proj_size_and_bad_hidden": dict(input_size=4, hidden_size=0, proj_size=1),
}


@pytest.mark.parametrize("kwargs", BAD_CTOR_ARGS.values(), ids=BAD_CTOR_ARGS.keys())
def test_bad_constructor_args(kwargs):
    assert_same_error(lambda: nn.GRU(**kwargs), lambda: lstm_fused.GRU(**kwargs))


def test_bad_constructor_args_positional():
    assert_same_error(lambda: nn.GRU(4, 3, 0), lambda: lstm_fused.GRU(4, 3, 0))
    assert_same_error(lambda: nn.GRU(4, 3, 2, True, False, 1.5), lambda: lstm_fused.GRU(4, 3, 2, True, False, 1.5))


def caught_warnings(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn()
    return [(w.category, str(w.message), w.filename) for w in record]


def test_dropout_with_one_layer_warns_like_nn_gru():
    """The same category and message, attributed to the line that built the module."""
    ref = caught_warnings(lambda: nn.GRU(4, 3, num_layers=1, dropout=0.5))
    ours = caught_warnings(lambda: lstm_fused.GRU(4, 3, num_layers=1, dropout=0.5))
    print(ref, ours, sep="\n")
    assert len(ref) == len(ours) == 1
    assert ours[0][:2] == ref[0][:2] and ours[0][2] == __file__


def test_valid_constructor_does_not_warn():
    for kwargs in (dict(num_layers=2, dropout=0.5), dict(dropout=0.0), dict(bidirectional=True)):
        assert caught_warnings(lambda: lstm_fused.GRU(4, 3, **kwargs)) == []


# -- forward ------------------------------------------------------------------------------------


def pair(**kwargs):
    return make_gru_pair(Config(**{"I": 4, "H": 5, "num_layers": 2, "dtype": torch.float32, **kwargs}))


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def packed(*lengths, I=4, sort=True, dtype=torch.float32):
    return pack_sequence([randn(n, I, dtype=dtype) for n in lengths], enforce_sorted=sort)


BAD_CALLS = {
    "input_1d": (dict(), lambda: (randn(3),)),
    "input_4d": (dict(), lambda: (randn(1, 3, 2, 4),)),
    "input_0d": (dict(), lambda: (torch.tensor(1.0),)),
    "wrong_input_size": (dict(), lambda: (randn(3, 2, 6),)),
    "wrong_input_size_unbatched": (dict(), lambda: (randn(3, 6),)),
    "wrong_input_size_with_state": (dict(), lambda: (randn(3, 2, 6), randn(2, 2, 5))),
    "h0_wrong_batch": (dict(), lambda: (randn(3, 2, 4), randn(2, 3, 5))),
    "h0_wrong_layers": (dict(), lambda: (randn(3, 2, 4), randn(1, 2, 5))),
    "h0_wrong_hidden": (dict(), lambda: (randn(3, 2, 4), randn(2, 2, 4))),
    "batch_first_h0_batch_first": (dict(batch_first=True), lambda: (randn(2, 3, 4), randn(3, 2, 5))),
    "bidirectional_h0_one_direction": (dict(bidirectional=True), lambda: (randn(3, 2, 4), randn(2, 2, 5))),
    "batched_input_2d_state": (dict(), lambda: (randn(3, 2, 4), randn(2, 5))),
    "batched_input_4d_state": (dict(), lambda: (randn(3, 2, 4), randn(1, 2, 2, 5))),
    "unbatched_input_3d_state": (dict(), lambda: (randn(3, 4), randn(2, 1, 5))),
    "unbatched_wrong_layers": (dict(), lambda: (randn(3, 4), randn(3, 5))),
    "unbatched_wrong_hidden": (dict(), lambda: (randn(3, 4), randn(2, 6))),
    "tuple_hx": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5),))),
    "tuple_hx_unbatched": (dict(), lambda: (randn(3, 4), (randn(2, 5),))),
    "list_hx": (dict(), lambda: (randn(3, 2, 4), [randn(2, 2, 5)])),
    "input_float64_params_float32": (dict(), lambda: (randn(3, 2, 4, dtype=torch.float64),)),
    "input_bfloat16_params_float32": (dict(), lambda: (randn(3, 2, 4, dtype=torch.bfloat16),)),
    "input_int64": (dict(), lambda: (torch.randint(0, 3, (3, 2, 4)),)),
    "input_int32_unbatched": (dict(), lambda: (torch.randint(0, 3, (3, 4), dtype=torch.int32),)),
    "input_float32_params_float64": (dict(dtype=torch.float64), lambda: (randn(3, 2, 4),)),
    # torch.nn.GRU has no check of its own for the state's dtype: its kernel's matmul refuses it, with
    # one message with biases (addmm) and another without (mm).
    "h0_float64": (dict(), lambda: (randn(3, 2, 4), randn(2, 2, 5, dtype=torch.float64))),
    "h0_bfloat16": (dict(), lambda: (randn(3, 2, 4), randn(2, 2, 5, dtype=torch.bfloat16))),
    "h0_int64": (dict(), lambda: (randn(3, 2, 4), torch.zeros(2, 2, 5, dtype=torch.int64))),
    "h0_float32_params_float64": (dict(dtype=torch.float64), lambda: (randn(3, 2, 4, dtype=torch.float64),
                                                                      randn(2, 2, 5))),
    "h0_float64_no_bias": (dict(bias=False), lambda: (randn(3, 2, 4), randn(2, 2, 5, dtype=torch.float64))),
    "h0_float64_bidirectional": (dict(bidirectional=True), lambda: (randn(3, 2, 4),
                                                                    randn(4, 2, 5, dtype=torch.float64))),
    "h0_float64_unbatched": (dict(), lambda: (randn(3, 4), randn(2, 5, dtype=torch.float64))),
    "zero_length_sequence": (dict(), lambda: (randn(0, 2, 4),)),
    "zero_length_unbatched": (dict(), lambda: (randn(0, 4),)),
    "zero_length_batch_first": (dict(batch_first=True), lambda: (randn(2, 0, 4),)),
    "zero_length_and_h0_float64": (dict(), lambda: (randn(0, 2, 4), randn(2, 2, 5, dtype=torch.float64))),
    "packed_wrong_input_size": (dict(), lambda: (packed(3, 2, I=6),)),
    "packed_float64": (dict(), lambda: (packed(3, 2, dtype=torch.float64),)),
    "packed_h0_wrong_batch_sorted": (dict(), lambda: (packed(3, 2), randn(2, 3, 5))),
    "packed_h0_2d": (dict(), lambda: (packed(3, 2), randn(2, 5))),
    "packed_h0_tuple": (dict(), lambda: (packed(3, 2), (randn(2, 2, 5),))),
    "packed_unsorted_h0_tuple": (dict(), lambda: (packed(2, 3, sort=False), (randn(2, 2, 5),))),
    "packed_unsorted_h0_too_small": (dict(), lambda: (packed(2, 3, sort=False), randn(2, 1, 5))),
    "packed_h0_float64": (dict(), lambda: (packed(3, 2), randn(2, 2, 5, dtype=torch.float64))),
}


@pytest.mark.parametrize("case", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_forward_args(case):
    kwargs, make_args = case
    ref, ours = pair(**kwargs)
    args = make_args()
    assert_same_error(lambda: ref(*args), lambda: ours(*args))


def test_packed_unsorted_h0_too_large_is_accepted_as_by_nn_gru():
    """torch.nn.GRU index_selects h0 by sorted_indices before its size check, so a too-large h0 with
    unsorted packed input passes; the same rows are used."""
    ref, ours = pair()
    inp, h0 = packed(2, 3, sort=False), randn(2, 3, 5)
    (y_ref, h_ref), (y, h) = ref(inp, h0), ours(inp, h0)
    torch.testing.assert_close(y.data, y_ref.data, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


# -- NaN / Inf / extreme values -----------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed_input", [False, True])
def test_nan_inf_propagate_like_nn_gru(bidirectional, packed_input):
    cfg = Config(T=6, B=4, I=3, H=5, num_layers=2, bidirectional=bidirectional,
                 input_kind="packed_unsorted" if packed_input else "dense")
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    data.x[1, 0, 2] = float("nan")
    data.x[3, 2, 0] = float("inf")
    data.x[2, 3, 1] = -float("inf")
    data.h0[0, 1, 3] = float("nan")
    expected = run_gru(ref, cfg, data, backward=False)
    actual = run_gru(ours, cfg, data, backward=False)
    for key in expected:
        nan_ref, nan_ours = expected[key].isnan(), actual[key].isnan()
        print(key, "NaNs nn.GRU", int(nan_ref.sum()), "ours", int(nan_ours.sum()))
        assert nan_ref.any()
        assert torch.equal(nan_ours, nan_ref), key
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_saturating_inputs(dtype):
    """Huge pre-activations saturate sigmoid/tanh to exact 0/1 without overflow NaNs."""
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, dtype=dtype)
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    data.x *= 1e4
    data.x[2, 1, 0] = float("inf")  # one element: x W^T gets +-inf, not inf - inf
    expected = run_gru(ref, cfg, data, backward=False)
    actual = run_gru(ours, cfg, data, backward=False)
    for key in expected:
        report(key, actual[key], expected[key])
        assert not actual[key].isnan().any() and not expected[key].isnan().any(), key
        tol = 1e-9 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(actual[key], expected[key], rtol=tol, atol=tol)


# -- empty batches, non-contiguous tensors, inputs left alone ----------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_empty_batch(batch_first, with_state):
    cfg = Config(T=3, B=0, I=4, H=5, num_layers=2, bidirectional=True, batch_first=batch_first,
                 with_state=with_state)
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)


def test_non_contiguous_input_state_and_parameters():
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True)
    ref, ours = make_gru_pair(cfg)
    for model in (ref, ours):
        for name in ("weight_ih_l0", "weight_hh_l1_reverse"):
            p = getattr(model, name)
            p.data = p.data.t().contiguous().t()
    base_x = torch.randn(3, 10, 4, dtype=torch.float64)  # [B, 2T, I]
    base_h = torch.randn(3, 4, 14, dtype=torch.float64)  # [B, L*D, 2H+2]

    def run(model):
        bx, bh = base_x.clone().requires_grad_(), base_h.clone().requires_grad_()
        x = bx.transpose(0, 1)[::2]  # [T, B, I], strided in T and B
        h0 = bh.transpose(0, 1)[..., 1:13:2]  # [L*D, B, H], every stride odd
        assert not (x.is_contiguous() or h0.is_contiguous() or model.weight_ih_l0.is_contiguous())
        out, h_n = model(x, h0)
        loss = (out * out.detach().cos()).sum() + (h_n**2).sum()
        grads = torch.autograd.grad(loss, [bx, bh, *model.parameters()])
        return {"out": out.detach(), "h_n": h_n.detach(), **{f"grad{i}": g for i, g in enumerate(grads)}}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.GRU warns about non-contiguous weights
        expected = run(ref)
    assert_results_close(run(ours), expected, *TOLERANCES[torch.float64])


def test_non_contiguous_batch_first_and_unbatched():
    for cfg in (Config(T=4, B=3, I=5, H=3, batch_first=True, num_layers=2),
                Config(T=4, I=5, H=3, num_layers=2, input_kind="unbatched")):
        ref, ours = make_gru_pair(cfg)
        data = make_data(cfg)
        data.x = data.x.transpose(0, -1).contiguous().transpose(0, -1)
        data.h0 = data.h0.transpose(0, -1).contiguous().transpose(0, -1)
        assert not data.x.is_contiguous() and not data.h0.is_contiguous()
        assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)


def test_inputs_not_modified():
    cfg = Config(T=4, B=3, I=5, H=6, num_layers=2, bidirectional=True, input_kind="packed_unsorted")
    _, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    before = [t.clone() for t in (data.x, data.h0)]
    params_before = [p.detach().clone() for p in ours.parameters()]
    run_gru(ours, cfg, data)
    for a, b in zip((data.x, data.h0), before):
        assert torch.equal(a, b)
    for p, b in zip(ours.parameters(), params_before):
        assert torch.equal(p.detach(), b)

