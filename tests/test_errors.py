"""Bad input and edge cases get what torch.nn.LSTM and torch.nn.GRU give them.

Each case makes the same call on torch's module and on ours and compares the exception type and
message (or the warning category and message); NaN/Inf, saturation, empty batches, zero-length
sequences and non-contiguous tensors behave as in torch's modules.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import lstm_fused
from utils import (CELL_NAMES, CELLS, TOLERANCES, Config, assert_results_close, call, make_data, make_pair,
                   per_cell, report, run_model)


def raised(fn):
    """Returns the exception fn raises; fails the test if it raises none."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def assert_same_error(ref_fn, ours_fn, key_phrase=None):
    """Same exception type and message; with key_phrase only type and phrase (see the caller)."""
    ref_exc = raised(ref_fn)
    ours_exc = raised(ours_fn)
    print(f"torch:        {type(ref_exc).__name__}: {ref_exc}")
    print(f"lstm_fused:   {type(ours_exc).__name__}: {ours_exc}")
    assert type(ours_exc) is type(ref_exc)
    if key_phrase is None:
        assert str(ours_exc) == str(ref_exc)
    else:
        assert key_phrase in str(ref_exc)
        assert key_phrase.lower() in str(ours_exc).lower()


# -- constructor -------------------------------------------------------------------------------

# Checks of torch.nn.RNNBase both modules share.
COMMON_CTOR_ARGS = {
    "hidden_size_0": dict(input_size=4, hidden_size=0),
    "hidden_size_negative": dict(input_size=4, hidden_size=-3),
    "hidden_size_float": dict(input_size=4, hidden_size=2.5),
    "hidden_size_str": dict(input_size=4, hidden_size="5"),
    "input_size_0": dict(input_size=0, hidden_size=3),
    "num_layers_0": dict(input_size=4, hidden_size=3, num_layers=0),
    "num_layers_float": dict(input_size=4, hidden_size=3, num_layers=2.0),
    "dropout_negative": dict(input_size=4, hidden_size=3, num_layers=2, dropout=-0.1),
    "dropout_above_1": dict(input_size=4, hidden_size=3, num_layers=2, dropout=1.5),
    "dropout_bool": dict(input_size=4, hidden_size=3, num_layers=2, dropout=True),
}

BAD_CTOR_ARGS = {
    "lstm": {
        **COMMON_CTOR_ARGS,
        "proj_size_negative": dict(input_size=4, hidden_size=3, proj_size=-1),
        "proj_size_equal_hidden": dict(input_size=4, hidden_size=3, proj_size=3),
        "proj_size_above_hidden": dict(input_size=4, hidden_size=3, proj_size=7),
    },
    "gru": {
        **COMMON_CTOR_ARGS,
        "input_size_float": dict(input_size=4.0, hidden_size=3),
        "dropout_str": dict(input_size=4, hidden_size=3, num_layers=2, dropout="0.1"),
        "bias_int": dict(input_size=4, hidden_size=3, bias=1),
        "batch_first_none": dict(input_size=4, hidden_size=3, batch_first=None),
        # torch.nn.GRU refuses proj_size whatever its value, before any other check.
        "proj_size": dict(input_size=4, hidden_size=3, proj_size=2),
        "proj_size_0": dict(input_size=4, hidden_size=3, proj_size=0),
        "proj_size_and_bad_hidden": dict(input_size=4, hidden_size=0, proj_size=1),
    },
}


@pytest.mark.parametrize("cell, kwargs", per_cell(BAD_CTOR_ARGS))
def test_bad_constructor_args(cell, kwargs):
    torch_rnn, fused_rnn = CELLS[cell].torch_rnn, CELLS[cell].fused_rnn
    assert_same_error(lambda: torch_rnn(**kwargs), lambda: fused_rnn(**kwargs))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_bad_constructor_args_positional(cell):
    torch_rnn, fused_rnn = CELLS[cell].torch_rnn, CELLS[cell].fused_rnn
    assert_same_error(lambda: torch_rnn(4, 3, 0), lambda: fused_rnn(4, 3, 0))
    assert_same_error(lambda: torch_rnn(4, 3, 2, True, False, 1.5), lambda: fused_rnn(4, 3, 2, True, False, 1.5))


def caught_warnings(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn()
    return [(w.category, str(w.message), w.filename) for w in record]


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_dropout_with_one_layer_warns_like_torch(cell):
    """The same category and message, attributed to the line that built the module."""
    torch_rnn, fused_rnn = CELLS[cell].torch_rnn, CELLS[cell].fused_rnn
    ref = caught_warnings(lambda: torch_rnn(4, 3, num_layers=1, dropout=0.5))
    ours = caught_warnings(lambda: fused_rnn(4, 3, num_layers=1, dropout=0.5))
    print(ref, ours, sep="\n")
    assert len(ref) == len(ours) == 1
    assert ours[0][:2] == ref[0][:2] and ours[0][2] == __file__


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_valid_constructor_does_not_warn(cell):
    valid = [dict(num_layers=2, dropout=0.5), dict(dropout=0.0), dict(bidirectional=True)]
    if cell == "lstm":
        valid.append(dict(proj_size=2))
    for kwargs in valid:
        assert caught_warnings(lambda: CELLS[cell].fused_rnn(4, 3, **kwargs)) == []


def test_module_attributes_and_repr():
    kwargs = dict(input_size=4, hidden_size=6, num_layers=2, bias=False, batch_first=True,
                  dropout=0.25, bidirectional=True, proj_size=3)
    ref, ours = nn.LSTM(**kwargs), lstm_fused.LSTM(**kwargs)
    for name in kwargs:
        assert getattr(ours, name) == getattr(ref, name), name
        assert type(getattr(ours, name)) is type(getattr(ref, name)), name
    assert not isinstance(ours, nn.LSTM)
    assert ref.extra_repr() == ours.extra_repr()
    # Positional arguments in nn.LSTM's order.
    ours_pos = lstm_fused.LSTM(4, 6, 2, False, True, 0.25, True, 3)
    for name in kwargs:
        assert getattr(ours_pos, name) == kwargs[name], name


# -- forward ------------------------------------------------------------------------------------


def pair(cell="lstm", **kwargs):
    return make_pair(Config(**{"I": 4, "H": 5, "num_layers": 2, "dtype": torch.float32, **kwargs}, cell=cell))


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def packed(*lengths, I=4, sort=True, dtype=torch.float32):
    return pack_sequence([randn(n, I, dtype=dtype) for n in lengths], enforce_sorted=sort)


# Calls that pass no state fail alike for both modules.
STATELESS_CALLS = {
    "input_1d": (dict(), lambda: (randn(3),)),
    "input_4d": (dict(), lambda: (randn(1, 3, 2, 4),)),
    "input_0d": (dict(), lambda: (torch.tensor(1.0),)),
    "wrong_input_size": (dict(), lambda: (randn(3, 2, 6),)),
    "wrong_input_size_unbatched": (dict(), lambda: (randn(3, 6),)),
    "input_float64_params_float32": (dict(), lambda: (randn(3, 2, 4, dtype=torch.float64),)),
    "input_bfloat16_params_float32": (dict(), lambda: (randn(3, 2, 4, dtype=torch.bfloat16),)),
    "input_int64": (dict(), lambda: (torch.randint(0, 3, (3, 2, 4)),)),
    "input_int32_unbatched": (dict(), lambda: (torch.randint(0, 3, (3, 4), dtype=torch.int32),)),
    "input_float32_params_float64": (dict(dtype=torch.float64), lambda: (randn(3, 2, 4),)),
    "zero_length_sequence": (dict(), lambda: (randn(0, 2, 4),)),
    "zero_length_unbatched": (dict(), lambda: (randn(0, 4),)),
    "zero_length_batch_first": (dict(batch_first=True), lambda: (randn(2, 0, 4),)),
}

# An LSTM's state is (h0, c0), a GRU's h0 alone.
BAD_CALLS = {
    "lstm": {
        **STATELESS_CALLS,
        "wrong_input_size_with_state": (dict(), lambda: (randn(3, 2, 6), (randn(2, 2, 5), randn(2, 2, 5)))),
        "h0_wrong_batch": (dict(), lambda: (randn(3, 2, 4), (randn(2, 3, 5), randn(2, 2, 5)))),
        "h0_wrong_layers": (dict(), lambda: (randn(3, 2, 4), (randn(1, 2, 5), randn(2, 2, 5)))),
        "h0_wrong_hidden": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 4), randn(2, 2, 5)))),
        "c0_wrong_hidden": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5), randn(2, 2, 6)))),
        "c0_wrong_batch": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5), randn(2, 1, 5)))),
        "batch_first_h0_batch_first": (
            dict(batch_first=True), lambda: (randn(2, 3, 4), (randn(2, 2, 5), randn(3, 2, 5)))),
        "bidirectional_h0_one_direction": (
            dict(bidirectional=True), lambda: (randn(3, 2, 4), (randn(2, 2, 5), randn(2, 2, 5)))),
        "proj_h0_of_hidden_size": (
            dict(H=5, proj_size=3), lambda: (randn(3, 2, 4), (randn(2, 2, 5), randn(2, 2, 5)))),
        "proj_c0_of_proj_size": (
            dict(H=5, proj_size=3), lambda: (randn(3, 2, 4), (randn(2, 2, 3), randn(2, 2, 3)))),
        "batched_input_2d_states": (dict(), lambda: (randn(3, 2, 4), (randn(2, 5), randn(2, 5)))),
        "batched_input_mixed_states": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5), randn(2, 5)))),
        "unbatched_input_3d_states": (dict(), lambda: (randn(3, 4), (randn(2, 1, 5), randn(2, 1, 5)))),
        "unbatched_wrong_c0": (dict(), lambda: (randn(3, 4), (randn(2, 5), randn(2, 6)))),
        "unbatched_wrong_layers": (dict(), lambda: (randn(3, 4), (randn(3, 5), randn(2, 5)))),
        "single_tensor_hx": (dict(), lambda: (randn(3, 2, 4), randn(2, 2, 5))),
        "single_tensor_hx_unbatched": (dict(), lambda: (randn(3, 4), randn(2, 5))),
        "hx_three_tensors": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5),) * 3)),
    },
    "gru": {
        **STATELESS_CALLS,
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
        "zero_length_and_h0_float64": (dict(), lambda: (randn(0, 2, 4), randn(2, 2, 5, dtype=torch.float64))),
        "packed_wrong_input_size": (dict(), lambda: (packed(3, 2, I=6),)),
        "packed_float64": (dict(), lambda: (packed(3, 2, dtype=torch.float64),)),
        "packed_h0_wrong_batch_sorted": (dict(), lambda: (packed(3, 2), randn(2, 3, 5))),
        "packed_h0_2d": (dict(), lambda: (packed(3, 2), randn(2, 5))),
        "packed_h0_tuple": (dict(), lambda: (packed(3, 2), (randn(2, 2, 5),))),
        "packed_unsorted_h0_tuple": (dict(), lambda: (packed(2, 3, sort=False), (randn(2, 2, 5),))),
        "packed_unsorted_h0_too_small": (dict(), lambda: (packed(2, 3, sort=False), randn(2, 1, 5))),
        "packed_h0_float64": (dict(), lambda: (packed(3, 2), randn(2, 2, 5, dtype=torch.float64))),
    },
}


@pytest.mark.parametrize("cell, case", per_cell(BAD_CALLS))
def test_bad_forward_args(cell, case):
    kwargs, make_args = case
    ref, ours = pair(cell, **kwargs)
    args = make_args()
    assert_same_error(lambda: ref(*args), lambda: ours(*args))


# nn.LSTM's messages for these come from its backend (oneDNN's "get_mkldnn_dtype: unsupported
# data type", or an ATen matmul's "mat1 and mat2 must have the same dtype"), not from a check of
# its own, so a fused implementation cannot reasonably reproduce them: same type plus a phrase.
STATE_DTYPE_CALLS = {
    "h0_float64_input_float32": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5, dtype=torch.float64), randn(2, 2, 5)))),
    "c0_float64_input_float32": (dict(), lambda: (randn(3, 2, 4), (randn(2, 2, 5), randn(2, 2, 5, dtype=torch.float64)))),
    "h0_int64": (dict(), lambda: (randn(3, 2, 4), (torch.zeros(2, 2, 5, dtype=torch.int64), randn(2, 2, 5)))),
    "h0_float32_input_float64": (dict(dtype=torch.float64), lambda: (randn(3, 2, 4, dtype=torch.float64), (randn(2, 2, 5), randn(2, 2, 5, dtype=torch.float64)))),
}


@pytest.mark.parametrize("case", STATE_DTYPE_CALLS.values(), ids=STATE_DTYPE_CALLS.keys())
def test_state_dtype_mismatch(case):
    kwargs, make_args = case
    ref, ours = pair(**kwargs)
    args = make_args()
    ref_exc, ours_exc = raised(lambda: ref(*args)), raised(lambda: ours(*args))
    print(f"nn.LSTM:    {type(ref_exc).__name__}: {ref_exc}")
    print(f"lstm_fused: {type(ours_exc).__name__}: {ours_exc}")
    assert type(ours_exc) is type(ref_exc) is RuntimeError
    assert "dtype" in str(ours_exc) or "data type" in str(ours_exc)


# nn.LSTM skips its input_size check for PackedSequence and fails in the input GEMM ("mat1 and
# mat2 shapes cannot be multiplied"), and on a state of the wrong batch inside its kernel (a
# broadcast size mismatch); ours may check the shapes up front instead: same type only. (With
# enforce_sorted=False, nn.LSTM silently index_selects a too-large h0 by sorted_indices and runs;
# a fused implementation may reject it.)
PACKED_CALLS = {
    "packed_wrong_input_size": lambda: (packed(3, 2, I=6),),
    "packed_wrong_state_batch": lambda: (packed(3, 2), (randn(2, 3, 5), randn(2, 3, 5))),
}


@pytest.mark.parametrize("make_args", PACKED_CALLS.values(), ids=PACKED_CALLS.keys())
def test_packed_bad_args_raise_the_same_type(make_args):
    ref, ours = pair()
    args = make_args()
    ref_exc, ours_exc = raised(lambda: ref(*args)), raised(lambda: ours(*args))
    print(ref_exc, ours_exc, sep="\n")
    assert type(ours_exc) is type(ref_exc) is RuntimeError


def test_packed_unsorted_h0_too_large_is_accepted_as_by_nn_gru():
    """torch.nn.GRU index_selects h0 by sorted_indices before its size check, so a too-large h0 with
    unsorted packed input passes; the same rows are used."""
    ref, ours = pair("gru")
    inp, h0 = packed(2, 3, sort=False), randn(2, 3, 5)
    (y_ref, h_ref), (y, h) = ref(inp, h0), ours(inp, h0)
    torch.testing.assert_close(y.data, y_ref.data, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


# -- NaN / Inf / extreme values -----------------------------------------------------------------


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed_input", [False, True])
def test_nan_inf_propagate_like_torch(cell, bidirectional, packed_input):
    cfg = Config(T=6, B=4, I=3, H=5, num_layers=2, bidirectional=bidirectional,
                 input_kind="packed_unsorted" if packed_input else "dense", cell=cell)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    data.x[1, 0, 2] = float("nan")
    data.x[3, 2, 0] = float("inf")
    data.x[2, 3, 1] = -float("inf")
    (data.c0 if cfg.lstm else data.h0)[0, 1, 3] = float("nan")
    expected = run_model(ref, cfg, data, backward=False)
    actual = run_model(ours, cfg, data, backward=False)
    for key in expected:
        nan_ref, nan_ours = expected[key].isnan(), actual[key].isnan()
        print(key, "NaNs torch", int(nan_ref.sum()), "ours", int(nan_ours.sum()))
        assert nan_ref.any() or (cfg.lstm and (key == "c_n" or bidirectional))
        assert torch.equal(nan_ours, nan_ref), key
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_saturating_inputs(cell, dtype):
    """Huge pre-activations saturate sigmoid/tanh to exact 0/1 without overflow NaNs."""
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, dtype=dtype, cell=cell)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    data.x *= 1e4
    data.x[2, 1, 0] = float("inf")  # one element: x W^T gets +-inf, not inf - inf
    expected = run_model(ref, cfg, data, backward=False)
    actual = run_model(ours, cfg, data, backward=False)
    for key in expected:
        report(key, actual[key], expected[key])
        assert not actual[key].isnan().any(), key
        assert not expected[key].isnan().any(), key
        tol = 1e-9 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(actual[key], expected[key], rtol=tol, atol=tol)


@pytest.mark.parametrize("T, B", [(1, 2), (20, 8)])  # the small-batch path, the register tiles
def test_float32_activations_over_their_range(T, B):
    """One float32 step from given pre-activations over [-100, 100] (and around 0) against the
    cell in float64: the vector exp, sigmoid and tanh of the CPU kernels within a few ulp."""
    H = 1024
    gen = torch.Generator().manual_seed(0)
    pre = torch.cat([torch.linspace(-100, 100, 2 * H, dtype=torch.float64),
                     torch.randn(2 * H, generator=gen, dtype=torch.float64) * 3])
    pre = pre[torch.randperm(4 * H, generator=gen)].float()
    c0 = (torch.randn(B, H, generator=gen) * 5).float()
    x = torch.ones(T, B, 1)
    with torch.no_grad():
        y, _, _, _, _ = lstm_fused.ops.forward(x, pre.view(4 * H, 1), torch.zeros(4 * H, H), None, None, None,
                                               torch.zeros(B, H), c0, None, False, False)
    i, f, g, o = pre.double().view(4, H)
    c = torch.sigmoid(f) * c0.double() + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    err = (y[0].double() - h).abs().max().item()
    print(f"max |h - h_float64| = {err:.3g}")
    assert err < 1e-6


# -- empty batches, non-contiguous tensors, inputs left alone ----------------------------------


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_empty_batch(cell, batch_first, with_state):
    cfg = Config(T=3, B=0, I=4, H=5, num_layers=2, bidirectional=True, proj_size=2 if cell == "lstm" else 0,
                 batch_first=batch_first, with_state=with_state, cell=cell)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_non_contiguous_input_states_and_parameters(cell):
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, proj_size=3 if cell == "lstm" else 0,
                 cell=cell)
    ref, ours = make_pair(cfg)
    for model in (ref, ours):
        for name in ("weight_ih_l0", "weight_hh_l1_reverse"):
            p = getattr(model, name)
            p.data = p.data.t().contiguous().t()
    P = cfg.P
    base_x = torch.randn(3, 10, 4, dtype=torch.float64)  # [B, 2T, I]
    base_h = torch.randn(3, 4, 2 * P + 2, dtype=torch.float64)  # [B, L*D, 2P+2]
    base_c = torch.randn(1, 3, 6, dtype=torch.float64)

    def run(model):
        bx, bh, bc = (t.clone().requires_grad_() for t in (base_x, base_h, base_c))
        x = bx.transpose(0, 1)[::2]  # [T, B, I], strided in T and B
        h0 = bh.transpose(0, 1)[..., 1:2 * P + 1:2]  # [L*D, B, P], every stride odd
        c0 = bc.expand(4, 3, 6)  # [L*D, B, H], stride 0 over layers
        assert not (x.is_contiguous() or h0.is_contiguous() or c0.is_contiguous()
                    or model.weight_ih_l0.is_contiguous())
        out, h_n, c_n = call(model, cfg, x, h0, c0)
        loss = (out * out.detach().cos()).sum() + (h_n**2).sum()
        leaves, result = [bx, bh], {"out": out.detach(), "h_n": h_n.detach()}
        if cfg.lstm:
            loss = loss + (c_n * 3).sum()
            leaves.append(bc)
            result["c_n"] = c_n.detach()
        grads = torch.autograd.grad(loss, leaves + list(model.parameters()))
        return {**result, **{f"grad{i}": g for i, g in enumerate(grads)}}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's modules warn about non-contiguous weights
        expected = run(ref)
    assert_results_close(run(ours), expected, *TOLERANCES[torch.float64])


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_non_contiguous_batch_first_and_unbatched(cell):
    for cfg in (Config(T=4, B=3, I=5, H=3, batch_first=True, num_layers=2, cell=cell),
                Config(T=4, I=5, H=3, num_layers=2, input_kind="unbatched", cell=cell)):
        ref, ours = make_pair(cfg)
        data = make_data(cfg)
        # A transposed copy transposed back: same values, non-contiguous strides.
        data.x = data.x.transpose(0, -1).contiguous().transpose(0, -1)
        data.h0 = data.h0.transpose(0, -1).contiguous().transpose(0, -1)
        assert not data.x.is_contiguous() and not data.h0.is_contiguous()
        assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)


def test_non_contiguous_parameters():
    cfg = Config(T=4, B=3, I=5, H=6, num_layers=2, proj_size=2, dtype=torch.float64)
    ref, ours = make_pair(cfg)
    for model in (ref, ours):
        for name in ("weight_ih_l0", "weight_hh_l1", "weight_hr_l0"):
            p = getattr(model, name)
            p.data = p.data.t().contiguous().t()
            assert not p.is_contiguous()
    data = make_data(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.LSTM warns about non-contiguous weights
        expected = run_model(ref, cfg, data)
    actual = run_model(ours, cfg, data)
    assert_results_close(actual, expected, *TOLERANCES[torch.float64])


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_inputs_not_modified(cell):
    cfg = Config(T=4, B=3, I=5, H=6, num_layers=2, bidirectional=True, proj_size=4 if cell == "lstm" else 0,
                 input_kind="packed_unsorted", cell=cell)
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    before = [t.clone() for t in (data.x, data.h0, data.c0)]
    params_before = [p.detach().clone() for p in ours.parameters()]
    run_model(ours, cfg, data)
    for a, b in zip((data.x, data.h0, data.c0), before):
        assert torch.equal(a, b)
    for p, b in zip(ours.parameters(), params_before):
        assert torch.equal(p.detach(), b)
