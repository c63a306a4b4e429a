"""lstm_fused.GRU against torch.nn.GRU: parity over a grid crossing every option (float64, float32,
bfloat16), gradients, gradcheck, the module contract, the oracle, autocast, dropout, determinism.

Every parity case draws fresh inputs (seeded per case) and odd sizes, compares outputs, h_n and the
gradients of the input, h0 and every parameter, and checks that the run went through the fused
ops (one lstm_fused::gru_forward and one gru_backward per layer and direction, no Python
fallback). Errors are in test_gru_errors.py, torch.compile and torch.export in test_gru_compile.py.
"""

import dataclasses
import itertools
import math
import random

import pytest
import torch
from torch import nn

import lstm_fused
from gru_utils import assert_gru_fused, gru_kwargs, make_gru_pair, run_gru
from utils import (
    INPUT_KINDS,
    TOLERANCES,
    Config,
    OpCounter,
    assert_bf16_rule,
    assert_results_close,
    make_data,
    num_threads,
    report,
    roundtrip,
)

SIZES_T = (1, 2, 3, 5, 8)
SIZES_B = (1, 2, 3, 5)
SIZES_I = (1, 3, 8, 17)
SIZES_H = (1, 2, 3, 5, 17)


def grid(dtype, sample=None, seed=0):
    """Every combination of the structural options; sizes drawn per case."""
    rng = random.Random(seed)
    combos = list(itertools.product(
        (1, 2, 3),  # num_layers
        (True, False),  # bias
        (False, True),  # batch_first
        (False, True),  # bidirectional
        INPUT_KINDS,
        (True, False),  # with_state
    ))
    if sample is not None:
        combos = rng.sample(combos, sample)
    return [Config(T=rng.choice(SIZES_T), B=rng.choice(SIZES_B), I=rng.choice(SIZES_I), H=rng.choice(SIZES_H),
                   num_layers=layers, bias=bias, batch_first=bf, bidirectional=bidir, input_kind=kind,
                   with_state=state, dtype=dtype)
            for layers, bias, bf, bidir, kind, state in combos]


def case_id(cfg):
    return (f"L{cfg.num_layers}-{'bias' if cfg.bias else 'nobias'}-{'bf' if cfg.batch_first else 'tm'}"
            f"-{'bi' if cfg.bidirectional else 'uni'}-{cfg.input_kind}-{'hx' if cfg.with_state else 'nohx'}"
            f"-T{cfg.T}B{cfg.B}I{cfg.I}H{cfg.H}")


def check_parity(cfg):
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    expected = run_gru(ref, cfg, data)
    with OpCounter() as counter:
        actual = run_gru(ours, cfg, data)
    assert_results_close(actual, expected, *TOLERANCES[cfg.dtype])
    assert_gru_fused(counter, cfg, backward=True)


def check_inference(cfg):
    """Outputs without autograd (nothing saved), under no_grad and in inference mode."""
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    with torch.no_grad():
        expected = run_gru(ref, cfg, data, backward=False)
        with OpCounter() as counter:
            actual = run_gru(ours, cfg, data, backward=False)
    assert_results_close(actual, expected, *TOLERANCES[cfg.dtype])
    assert_gru_fused(counter, cfg, backward=False)
    with torch.inference_mode():
        assert_results_close(run_gru(ours, cfg, data, backward=False), expected, *TOLERANCES[cfg.dtype])


@pytest.mark.parametrize("cfg", grid(torch.float64), ids=case_id)
def test_parity_float64(cfg):
    check_parity(cfg)


@pytest.mark.parametrize("cfg", grid(torch.float32, sample=96, seed=1), ids=case_id)
def test_parity_float32(cfg):
    check_parity(cfg)


@pytest.mark.parametrize("cfg", grid(torch.float64, sample=24, seed=3) + grid(torch.float32, sample=24, seed=4),
                         ids=lambda c: f"{case_id(c)}-{str(c.dtype)[6:]}")
def test_parity_inference(cfg):
    check_inference(cfg)


def check_bfloat16(cfg, backward=True):
    """Our bf16 error against an fp64 run is at most ~2x that of nn.GRU run in bf16."""
    ref_bf16, ours = make_gru_pair(cfg)
    ref64, _ = make_gru_pair(cfg, dtype=torch.float64)
    # The fp64 reference sees exactly the bf16 weights and inputs.
    ref64.load_state_dict({k: v.double() for k, v in ref_bf16.state_dict().items()})
    data = make_data(cfg)
    data.x, data.g_out, data.g_h = (t.bfloat16().double() for t in (data.x, data.g_out, data.g_h))
    if cfg.with_state:
        data.h0 = data.h0.bfloat16().double()
    with torch.set_grad_enabled(backward):
        expected = run_gru(ref64, cfg, data, dtype=torch.float64, backward=backward)
        torch_bf16 = run_gru(ref_bf16, cfg, data, backward=backward)
        with OpCounter() as counter:
            actual = run_gru(ours, cfg, data, backward=backward)
    assert_bf16_rule(actual, torch_bf16, expected)
    assert_gru_fused(counter, cfg, backward=backward)


@pytest.mark.parametrize("cfg", grid(torch.bfloat16, sample=48, seed=2), ids=case_id)
def test_parity_bfloat16(cfg):
    check_bfloat16(cfg)


LARGER = [
    Config(T=20, B=16, I=33, H=64, num_layers=2, bidirectional=True, dtype=torch.float32),
    Config(T=9, B=32, I=40, H=48, num_layers=2, input_kind="packed_unsorted", dtype=torch.float32),
    Config(T=13, B=7, I=19, H=70, batch_first=True, bias=False, dtype=torch.float64),
    Config(T=6, B=64, I=16, H=128, dtype=torch.float32),
    Config(T=12, B=24, I=32, H=96, num_layers=2, bidirectional=True, input_kind="packed_sorted",
           dtype=torch.float64),
    Config(T=10, B=1, I=24, H=128, dtype=torch.float32),  # batch 1
    Config(T=40, B=2, I=24, H=100, bidirectional=True, dtype=torch.float64),  # a small batch, many steps
    Config(T=5, B=6, I=8, H=160, bidirectional=True, dtype=torch.float64),
    Config(T=4, B=5, I=8, H=300, input_kind="packed_unsorted", dtype=torch.float32),
    Config(T=1, B=40, I=16, H=48, num_layers=2, bidirectional=True, dtype=torch.float64),  # one step, many rows
    Config(T=1, B=36, I=8, H=40, input_kind="packed_unsorted", dtype=torch.float32),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cfg", LARGER, ids=case_id)
def test_parity_larger(cfg, threads):
    """Larger shapes (vector paths, hidden units split over threads), training and inference."""
    with num_threads(threads):
        check_parity(cfg)
        check_inference(cfg)


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 6, 7, 8, 13, 19, 32])
def test_every_small_batch(B):
    """Batches of 1 to 8 rows and a few larger, fp32 and fp64, one and two threads, training and
    inference (the row tiles of a step, and whatever path small batches take)."""
    for dtype in (torch.float32, torch.float64):
        for threads in (1, 2):
            with num_threads(threads):
                cfg = Config(T=7, B=B, I=24, H=48, dtype=dtype)
                check_parity(cfg)
                check_inference(cfg)


LARGER_BF16 = [
    Config(T=12, B=16, I=40, H=64, num_layers=2, bidirectional=True, dtype=torch.bfloat16),
    Config(T=9, B=24, I=20, H=80, input_kind="packed_unsorted", dtype=torch.bfloat16),
    Config(T=8, B=1, I=16, H=128, dtype=torch.bfloat16),
    Config(T=6, B=32, I=64, H=96, batch_first=True, dtype=torch.bfloat16),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cfg", LARGER_BF16, ids=case_id)
def test_parity_bfloat16_larger(cfg, threads):
    with num_threads(threads):
        check_bfloat16(cfg)
        check_bfloat16(cfg, backward=False)


def test_long_sequence():
    """Many steps (state carried through hundreds of steps), inference and training."""
    cfg = Config(T=300, B=3, I=16, H=64, bidirectional=True, input_kind="packed_unsorted", dtype=torch.float32)
    check_parity(cfg)
    check_inference(cfg)


PARTIAL_LOSSES = {
    "out_only": lambda out, h: out.sum(),
    "h_n_only": lambda out, h: (h * h).sum(),
    "h_n_last_layer_only": lambda out, h: h[-1].sum(),
    "h_n_of_reverse_direction": lambda out, h: h[1::2].pow(2).sum(),
}


@pytest.mark.parametrize("loss_fn", PARTIAL_LOSSES.values(), ids=PARTIAL_LOSSES.keys())
@pytest.mark.parametrize("kind", ["dense", "packed_unsorted"])
def test_backward_with_unused_outputs_and_frozen_params(loss_fn, kind):
    """Outputs that do not reach the loss (None grads) and parameters that do not require grad."""
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, input_kind=kind)
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    results = []
    for model in (ref, ours):
        model.weight_ih_l0.requires_grad_(False)
        model.bias_hh_l1_reverse.requires_grad_(False)
        x = data.x.clone().requires_grad_()
        h0 = data.h0.clone()  # no grad wanted for h0
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, data.lengths, enforce_sorted=False) if cfg.packed else x
        out, h = model(inp, h0)
        loss = loss_fn(out.data if cfg.packed else out, h)
        wanted = [x] + [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
        results.append({f"grad{i}": (torch.zeros(()) if g is None else g) for i, g in enumerate(grads)})
    assert_results_close(results[1], results[0], 1e-9, 1e-9)


def test_gradcheck_float64():
    """torch.autograd.gradcheck of the module (input, h0 and every parameter), dense and packed."""
    for kind, bidirectional in (("dense", True), ("packed_unsorted", True), ("dense", False)):
        cfg = Config(T=3, B=3, I=3, H=4, num_layers=2, bidirectional=bidirectional, input_kind=kind)
        _, ours = make_gru_pair(cfg)
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


# -- the module contract ------------------------------------------------------------------------

CONTRACT_CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=5, num_layers=3, bias=False),
    dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True),
    dict(input_size=2, hidden_size=7, num_layers=3, batch_first=True, dropout=0.3, bidirectional=True),
]


@pytest.mark.parametrize("kwargs", CONTRACT_CONFIGS, ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_parameters_init_and_attributes_like_torch(kwargs):
    """Names, order, shapes and dtypes of the parameters; under the same seed, the very same initial
    values (torch draws uniform(-1/sqrt(H), 1/sqrt(H)) parameter by parameter in this order)."""
    torch.manual_seed(7)
    ref = nn.GRU(**kwargs)
    torch.manual_seed(7)
    ours = lstm_fused.GRU(**kwargs)
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
    assert not isinstance(ours, nn.GRU) and not isinstance(ours, nn.RNNBase)


def test_init_range_and_statistics():
    H = 64
    torch.manual_seed(0)
    values = torch.cat([p.detach().flatten() for p in lstm_fused.GRU(48, H, 2, bidirectional=True).parameters()])
    k = 1 / math.sqrt(H)
    print("init min/max/mean/std", values.min(), values.max(), values.mean(), values.std())
    assert values.abs().max() <= k
    assert values.min() < -0.98 * k and values.max() > 0.98 * k
    assert abs(values.mean()) < 0.02 * k and abs(values.std() - k / math.sqrt(3)) < 0.02 * k


def test_positional_arguments_in_torch_order():
    ours = lstm_fused.GRU(4, 6, 2, False, True, 0.25, True)
    ref = nn.GRU(4, 6, 2, False, True, 0.25, True)
    assert repr(ours) == repr(ref) == "GRU(4, 6, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True)"


@pytest.mark.parametrize("kwargs", CONTRACT_CONFIGS, ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_state_dict_loads_both_ways(kwargs):
    cfg = Config(I=kwargs["input_size"], H=kwargs["hidden_size"], num_layers=kwargs.get("num_layers", 1),
                 bias=kwargs.get("bias", True), batch_first=kwargs.get("batch_first", False),
                 bidirectional=kwargs.get("bidirectional", False))
    data = make_data(cfg)
    ref = nn.GRU(**kwargs, dtype=torch.float64).eval()
    ours = lstm_fused.GRU(**kwargs, dtype=torch.float64).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)
    ours2 = lstm_fused.GRU(**kwargs, dtype=torch.float64).eval()
    ref2 = nn.GRU(**kwargs, dtype=torch.float64).eval()
    result = ref2.load_state_dict(ours2.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_results_close(run_gru(ours2, cfg, data), run_gru(ref2, cfg, data), 1e-9, 1e-9)
    # An LSTM's checkpoint does not fit: its gates are 4H rows, not 3H.
    with pytest.raises(RuntimeError, match="size mismatch"):
        ours.load_state_dict(nn.LSTM(**kwargs, dtype=torch.float64).state_dict())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_and_device_kwargs(dtype):
    ours = lstm_fused.GRU(3, 4, 2, bidirectional=True, device="cpu", dtype=dtype)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in ours.parameters())
    out, h = ours(torch.randn(5, 2, 3, dtype=dtype))
    assert out.dtype == h.dtype == dtype and out.shape == (5, 2, 8) and h.shape == (4, 2, 4)


def test_to_dtype_after_construction_and_flatten_parameters():
    cfg = Config(T=4, B=2, I=3, H=5, num_layers=2, bidirectional=True)
    ref, ours = make_gru_pair(cfg, dtype=torch.float32)
    ref.double()
    ours.to(torch.float64)
    ours.flatten_parameters()
    data = make_data(cfg)
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)


@pytest.mark.parametrize("how", ["torch_save", "pickle", "deepcopy"])
def test_pickle_and_deepcopy(how):
    cfg = Config(T=4, B=3, I=3, H=5, num_layers=2, bidirectional=True, input_kind="packed_unsorted")
    _, ours = make_gru_pair(cfg)
    clone = roundtrip(how, ours)
    assert type(clone) is lstm_fused.GRU
    data = make_data(cfg)
    expected = run_gru(ours, cfg, data)
    actual = run_gru(clone, cfg, data)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    with torch.no_grad():
        clone.weight_ih_l0.add_(1.0)
    assert not torch.equal(run_gru(clone, cfg, data)["out"], expected["out"])


def test_parameters_read_on_every_call():
    """An in-place update, and a replaced Parameter, show in the next call."""
    cfg = Config(T=4, B=3, I=5, H=7, num_layers=2)
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)
    with torch.no_grad():
        for p_ref, p_ours in zip(ref.parameters(), ours.parameters()):
            delta = torch.randn_like(p_ref) * 0.1
            p_ref.add_(delta)
            p_ours.add_(delta)
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)
    new = torch.randn_like(ref.weight_hh_l1)
    ref.weight_hh_l1 = nn.Parameter(new.clone())
    ours.weight_hh_l1 = nn.Parameter(new.clone())
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), 1e-9, 1e-9)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_no_grad_path_equals_grad_path(bidirectional):
    """Without anything to differentiate the ops run below the autograd layer: the same results,
    outputs that do not require grad, and in training mode the same dropout draws."""
    m = lstm_fused.GRU(5, 6, num_layers=2, bidirectional=bidirectional, dropout=0.5)
    x = torch.randn(7, 3, 5)
    torch.manual_seed(1)
    y_grad, h_grad = m(x)
    torch.manual_seed(1)
    with torch.no_grad():
        y, h = m(x)
    assert not y.requires_grad and not h.requires_grad and y_grad.requires_grad
    torch.testing.assert_close(y, y_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(h, h_grad.detach(), rtol=0, atol=0)


def test_forward_mode_ad_is_refused():
    """The op defines no jvp: forward-mode AD raises, never a result without its tangent."""
    import torch.autograd.forward_ad as fwAD
    m = lstm_fused.GRU(3, 4)
    x = torch.randn(2, 1, 3)
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError):
            m(fwAD.make_dual(x, torch.randn_like(x)))


# -- the oracle ---------------------------------------------------------------------------------


class Oracle(nn.Module):
    """Runs lstm_fused.gru_reference on the very parameters of `target`."""

    def __init__(self, target):
        super().__init__()
        for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional"):
            setattr(self, name, getattr(target, name))
        for name, p in target.named_parameters():
            self.register_parameter(name, p)

    def forward(self, input, hx=None):
        return lstm_fused.gru_reference(self, input, hx)


ORACLE_CASES = [
    Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, input_kind="packed_unsorted"),
    Config(T=4, B=2, I=3, H=5, num_layers=3, batch_first=True, bias=False),
    Config(T=6, I=3, H=4, bidirectional=True, input_kind="unbatched", with_state=False),
    Config(T=5, B=4, I=2, H=3, bidirectional=True, input_kind="packed_sorted"),
]


@pytest.mark.parametrize("cfg", ORACLE_CASES, ids=case_id)
def test_matches_reference_oracle(cfg):
    """gru_reference agrees with nn.GRU (the oracle's sanity) and with the fused module."""
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    oracle_result = run_gru(Oracle(ref), cfg, data)
    assert_results_close(oracle_result, run_gru(ref, cfg, data), 1e-9, 1e-9)
    assert_results_close(run_gru(ours, cfg, data), oracle_result, 1e-9, 1e-9)


@pytest.mark.parametrize("cfg", ORACLE_CASES[:2], ids=case_id)
def test_float32_closer_to_float64_oracle_than_tolerance(cfg):
    """float32 against the float64 oracle on the same float32 weights: within a few times torch's
    own float32 error."""
    cfg = dataclasses.replace(cfg, dtype=torch.float32)
    ref, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    expected = run_gru(Oracle(ref), cfg, data)
    actual, torch_fp32 = run_gru(ours, cfg, data), run_gru(ref, cfg, data)
    for key in expected:
        ours_err, _ = report(key + " (ours)", actual[key], expected[key])
        torch_err, _ = report(key + " (nn.GRU)", torch_fp32[key], expected[key])
        assert ours_err <= 4 * torch_err + 1e-6 * max(1.0, expected[key].abs().max().item()), key


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
    cfg = Config(T=5, B=3, I=8, H=16, num_layers=2, bidirectional=True, dtype=torch.float32)
    ref, ours = make_gru_pair(cfg)
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
    cfg = Config(T=6, B=4, I=5, H=7, num_layers=3, dropout=0.4, bidirectional=bidirectional, input_kind=kind)
    ref, ours = make_gru_pair(cfg)
    assert ours.training
    data = make_data(cfg)
    torch.manual_seed(11)
    expected = run_gru(ref, cfg, data)
    torch.manual_seed(11)
    actual = run_gru(ours, cfg, data)
    assert_results_close(actual, expected, *TOLERANCES[torch.float64])
    again = run_gru(ours, cfg, data)  # other draws
    assert not torch.equal(again["out"], actual["out"])
    ours.eval()
    ref.eval()
    assert_results_close(run_gru(ours, cfg, data), run_gru(ref, cfg, data), *TOLERANCES[torch.float64])


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
    Config(T=9, B=6, I=17, H=33, num_layers=2, bidirectional=True, dtype=torch.float32),
    Config(T=9, B=6, I=17, H=33, num_layers=2, bidirectional=True, input_kind="packed_unsorted", dtype=torch.float32),
    Config(T=16, B=32, I=64, H=128, dtype=torch.float32),
    Config(T=7, B=5, I=8, H=24, num_layers=2, input_kind="packed_sorted", dtype=torch.bfloat16),
    Config(T=7, B=5, I=8, H=24, num_layers=3, bidirectional=True, dtype=torch.float64),
]


@pytest.mark.parametrize("cfg", DETERMINISM, ids=lambda c: f"{c.input_kind}-H{c.H}-{str(c.dtype)[6:]}")
def test_bitwise_deterministic(cfg):
    """Identical calls give bitwise-identical outputs and gradients, also under
    torch.use_deterministic_algorithms(True)."""
    _, ours = make_gru_pair(cfg)
    data = make_data(cfg)
    first = run_gru(ours, cfg, data)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [run_gru(ours, cfg, data) for _ in range(2)]
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
        cfg = Config(T=6, B=4, I=5, H=8, num_layers=2, bidirectional=True, input_kind=kind, dtype=torch.float32)
        ref, ours = make_gru_pair(cfg)
        ref.cuda(), ours.cuda()
        data = make_data(cfg)
        data.x, data.h0, data.g_out, data.g_h = (t.cuda() for t in (data.x, data.h0, data.g_out, data.g_h))
        expected, actual = run_gru(ref, cfg, data), run_gru(ours, cfg, data)
        for key in expected:
            assert torch.equal(actual[key], expected[key]), key
