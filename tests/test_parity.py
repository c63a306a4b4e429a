"""Parity with torch.nn.LSTM and torch.nn.GRU over a grid crossing every option, for float64, float32
and bfloat16.

Every case draws fresh inputs (seeded per case) and odd sizes, compares outputs, the final states
and the gradients of the input, the initial states and every parameter, and checks that the run went
through the fused ops (one forward and one backward op per layer and direction, no Python fallback).
"""

import dataclasses
import itertools
import os
import random

import pytest
import torch

import lstm_fused
from utils import (
    CELL_NAMES,
    INPUT_KINDS,
    TOLERANCES,
    Config,
    OpCounter,
    assert_bf16_rule,
    assert_fused,
    assert_results_close,
    check_bfloat16,
    check_inference,
    check_parity,
    make_data,
    make_pair,
    num_threads,
    per_cell,
    report,
    run_model,
)

SIZES_T = (1, 2, 3, 5, 8)
SIZES_B = (1, 2, 3, 5)
SIZES_I = (1, 3, 8, 17)
SIZES_H = (1, 2, 3, 5, 17)


def grid(dtype, sample=None, seed=0, cell="lstm"):
    """Every combination of the structural options (a projection an LSTM's only); sizes drawn per
    case."""
    rng = random.Random(seed)
    combos = list(
        itertools.product(
            (1, 2, 3),  # num_layers
            (True, False),  # bias
            (False, True),  # batch_first
            (False, True),  # bidirectional
            (False, True) if cell == "lstm" else (False,),  # projection
            INPUT_KINDS,
            (True, False),  # with_state
        )
    )
    if sample is not None:
        combos = rng.sample(combos, sample)
    cases = []
    for layers, bias, bf, bidir, proj, kind, state in combos:
        H = rng.choice(SIZES_H[1:] if proj else SIZES_H)
        cases.append(
            Config(
                T=rng.choice(SIZES_T),
                B=rng.choice(SIZES_B),
                I=rng.choice(SIZES_I),
                H=H,
                num_layers=layers,
                bias=bias,
                batch_first=bf,
                bidirectional=bidir,
                proj_size=rng.randint(1, H - 1) if proj else 0,
                input_kind=kind,
                with_state=state,
                dtype=dtype,
                cell=cell,
            )
        )
    return cases


def case_id(cfg):
    return (
        f"L{cfg.num_layers}-{'bias' if cfg.bias else 'nobias'}-{'bf' if cfg.batch_first else 'tm'}"
        f"-{'bi' if cfg.bidirectional else 'uni'}-p{cfg.proj_size}-{cfg.input_kind}"
        f"-{'hx' if cfg.with_state else 'nohx'}-T{cfg.T}B{cfg.B}I{cfg.I}H{cfg.H}"
    )


def grids(dtype, samples, seed):
    """pytest parameters (cell, cfg) of grid(dtype, sample, seed) per cell, samples: {cell: sample}."""
    return per_cell({cell: grid(dtype, sample, seed, cell) for cell, sample in samples.items()}, ids=case_id)


@pytest.mark.parametrize("cell, cfg", grids(torch.float64, {"lstm": None, "gru": None}, seed=0))
def test_parity_float64(cell, cfg):
    check_parity(cfg)


@pytest.mark.parametrize("cell, cfg", grids(torch.float32, {"lstm": None, "gru": 96}, seed=1))
def test_parity_float32(cell, cfg):
    check_parity(cfg)


@pytest.mark.parametrize("cfg", grid(torch.float64, sample=24, seed=3, cell="gru")
                         + grid(torch.float32, sample=24, seed=4, cell="gru"),
                         ids=lambda c: f"{case_id(c)}-{str(c.dtype)[6:]}")
def test_gru_parity_inference(cfg):
    check_inference(cfg)


@pytest.mark.parametrize("cell, cfg", grids(torch.bfloat16, {"lstm": 64, "gru": 48}, seed=2))
def test_parity_bfloat16(cell, cfg):
    check_bfloat16(cfg)


LARGER = {
    "lstm": [
        Config(T=20, B=16, I=33, H=64, num_layers=2, bidirectional=True, dtype=torch.float32),
        Config(T=9, B=32, I=40, H=48, proj_size=20, num_layers=2, input_kind="packed_unsorted",
               dtype=torch.float32),
        Config(T=13, B=7, I=19, H=70, batch_first=True, bias=False, dtype=torch.float64),
        Config(T=6, B=64, I=16, H=128, dtype=torch.float32),
        Config(T=12, B=24, I=32, H=96, num_layers=2, bidirectional=True, input_kind="packed_sorted",
               dtype=torch.float64),
        Config(T=10, B=1, I=24, H=128, proj_size=40, dtype=torch.float32),  # small-batch (GEMV) path
        Config(T=10, B=2, I=24, H=100, bidirectional=True, dtype=torch.float64),
        # The backward's dh product in panels of W_hh rows (csrc/kernels/cpu/backward.h, kBwdPanelBytes
        # in dispatch.h): 2 panels of 400 and 240 rows, then 3 of 416, 416 and 368.
        Config(T=5, B=6, I=8, H=160, bidirectional=True, dtype=torch.float64),
        Config(T=4, B=5, I=8, H=300, input_kind="packed_unsorted", dtype=torch.float32),
        # One step of more than 32 rows: the recurrent product as a GEMM in the adapter
        # (csrc/ops/lstm_cpu.cpp, step_gemm), the kernel skipping it.
        Config(T=1, B=40, I=16, H=48, num_layers=2, bidirectional=True, proj_size=24, dtype=torch.float64),
        Config(T=1, B=36, I=8, H=40, input_kind="packed_unsorted", dtype=torch.float32),
    ],
    "gru": [
        Config(T=20, B=16, I=33, H=64, num_layers=2, bidirectional=True, dtype=torch.float32, cell="gru"),
        Config(T=9, B=32, I=40, H=48, num_layers=2, input_kind="packed_unsorted", dtype=torch.float32, cell="gru"),
        Config(T=13, B=7, I=19, H=70, batch_first=True, bias=False, dtype=torch.float64, cell="gru"),
        Config(T=6, B=64, I=16, H=128, dtype=torch.float32, cell="gru"),
        Config(T=12, B=24, I=32, H=96, num_layers=2, bidirectional=True, input_kind="packed_sorted",
               dtype=torch.float64, cell="gru"),
        Config(T=10, B=1, I=24, H=128, dtype=torch.float32, cell="gru"),  # batch 1
        # a small batch, many steps
        Config(T=40, B=2, I=24, H=100, bidirectional=True, dtype=torch.float64, cell="gru"),
        Config(T=5, B=6, I=8, H=160, bidirectional=True, dtype=torch.float64, cell="gru"),
        Config(T=4, B=5, I=8, H=300, input_kind="packed_unsorted", dtype=torch.float32, cell="gru"),
        # one step, many rows
        Config(T=1, B=40, I=16, H=48, num_layers=2, bidirectional=True, dtype=torch.float64, cell="gru"),
        Config(T=1, B=36, I=8, H=40, input_kind="packed_unsorted", dtype=torch.float32, cell="gru"),
    ],
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell, cfg", per_cell(LARGER, ids=case_id))
def test_parity_larger(cell, cfg, threads):
    """A few larger shapes (vector paths, hidden units split over threads), training and inference."""
    with num_threads(threads):
        check_parity(cfg)
        check_inference(cfg)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 19, 32])
def test_lstm_forward_gate_tiles_every_batch(B, threads):
    """The forward's register tiles over batches of 4 to 13 rows and two larger (AVX-512: balanced
    tiles of up to 6 rows, 32 as 6 6 5 5 5 5; 16 registers: tiles of 6 and the rows left), with the
    input on the tiles (small weights), training and inference, fp32 and fp64."""
    for dtype in (torch.float32, torch.float64):
        with num_threads(threads):  # H = 48: from 4 rows a step is large enough for 2 threads
            cfg = Config(T=17, B=B, I=24, H=48, dtype=dtype)
            check_parity(cfg)
            check_inference(cfg)


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 6, 7, 8, 13, 19, 32])
def test_gru_every_small_batch(B):
    """Batches of 1 to 8 rows and a few larger, fp32 and fp64, one and two threads, training and
    inference (the row tiles of a step, and whatever path small batches take)."""
    for dtype in (torch.float32, torch.float64):
        for threads in (1, 2):
            with num_threads(threads):
                cfg = Config(T=7, B=B, I=24, H=48, dtype=dtype, cell="gru")
                check_parity(cfg)
                check_inference(cfg)


LARGER_BF16 = {
    "lstm": [
        Config(T=12, B=16, I=40, H=64, num_layers=2, bidirectional=True, proj_size=24,
               dtype=torch.bfloat16),
        Config(T=9, B=24, I=20, H=80, input_kind="packed_unsorted", dtype=torch.bfloat16),
        Config(T=8, B=1, I=16, H=128, dtype=torch.bfloat16),
    ],
    "gru": [
        Config(T=12, B=16, I=40, H=64, num_layers=2, bidirectional=True, dtype=torch.bfloat16, cell="gru"),
        Config(T=9, B=24, I=20, H=80, input_kind="packed_unsorted", dtype=torch.bfloat16, cell="gru"),
        Config(T=8, B=1, I=16, H=128, dtype=torch.bfloat16, cell="gru"),
        Config(T=6, B=32, I=64, H=96, batch_first=True, dtype=torch.bfloat16, cell="gru"),
    ],
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell, cfg", per_cell(LARGER_BF16, ids=case_id))
def test_parity_bfloat16_larger(cell, cfg, threads):
    with num_threads(threads):
        check_bfloat16(cfg)
        check_bfloat16(cfg, backward=False)


def test_gru_long_sequence():
    """Many steps (state carried through hundreds of steps), inference and training."""
    cfg = Config(T=300, B=3, I=16, H=64, bidirectional=True, input_kind="packed_unsorted", dtype=torch.float32,
                 cell="gru")
    check_parity(cfg)
    check_inference(cfg)


# The loss of an LSTM's test gets (out, h, c), a GRU's (out, h).
PARTIAL_LOSSES = {
    "lstm": {
        "out_only": lambda out, h, c: out.sum(),
        "h_n_only": lambda out, h, c: (h * h).sum(),
        "c_n_last_layer_only": lambda out, h, c: c[-1].sum(),
        "h_and_c_of_reverse_direction": lambda out, h, c: h[1::2].sum() + c[1::2].pow(2).sum(),
    },
    "gru": {
        "out_only": lambda out, h: out.sum(),
        "h_n_only": lambda out, h: (h * h).sum(),
        "h_n_last_layer_only": lambda out, h: h[-1].sum(),
        "h_n_of_reverse_direction": lambda out, h: h[1::2].pow(2).sum(),
    },
}


@pytest.mark.parametrize("cell, loss_fn", per_cell(PARTIAL_LOSSES))
@pytest.mark.parametrize("kind", ["dense", "packed_unsorted"])
def test_backward_with_unused_outputs_and_frozen_params(cell, loss_fn, kind):
    """Outputs that do not reach the loss (None grads) and parameters that do not require grad."""
    cfg = Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, proj_size=3 if cell == "lstm" else 0,
                 input_kind=kind, cell=cell)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    results = []
    for model in (ref, ours):
        model.weight_ih_l0.requires_grad_(False)
        model.bias_hh_l1_reverse.requires_grad_(False)
        x = data.x.clone().requires_grad_()
        h0 = data.h0.clone()  # no grad wanted for h0
        inp = x
        if cfg.packed:
            inp = torch.nn.utils.rnn.pack_padded_sequence(x, data.lengths, enforce_sorted=False)
        if cfg.lstm:
            c0 = data.c0.clone().requires_grad_()
            out, (h, c) = model(inp, (h0, c0))
            states, wanted = (h, c), [x, c0]
        else:
            out, h = model(inp, h0)
            states, wanted = (h,), [x]
        loss = loss_fn(out.data if cfg.packed else out, *states)
        wanted += [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
        results.append({f"grad{i}": (torch.zeros(()) if g is None else g) for i, g in enumerate(grads)})
    assert_results_close(results[1], results[0], 1e-9, 1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parity_eval_mode_no_grad(dtype):
    """Inference (eval + no_grad: nothing saved for backward) equals nn.LSTM."""
    cfg = Config(T=7, B=3, I=5, H=6, num_layers=2, bidirectional=True, proj_size=4,
                 dropout=0.5, input_kind="packed_unsorted", dtype=dtype)
    ref, ours = make_pair(cfg)
    ref.eval()
    ours.eval()
    data = make_data(cfg)
    with torch.no_grad():
        expected = run_model(ref, cfg, data, backward=False)
        with OpCounter() as counter:
            actual = run_model(ours, cfg, data, backward=False)
    assert_results_close(actual, expected, *TOLERANCES[dtype])
    assert_fused(counter, cfg, backward=False)


class Oracle(torch.nn.Module):
    """Runs lstm_fused.lstm_reference or gru_reference on the very parameters of `target`."""

    def __init__(self, target, cell):
        super().__init__()
        self.reference = {"lstm": lstm_fused.lstm_reference, "gru": lstm_fused.gru_reference}[cell]
        for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "bidirectional", "proj_size"):
            setattr(self, name, getattr(target, name))
        for name, p in target.named_parameters():
            self.register_parameter(name, p)

    def forward(self, input, hx=None):
        return self.reference(self, input, hx)


def _oracle_cases(cell):
    return [
        Config(T=5, B=3, I=4, H=6, num_layers=2, bidirectional=True, proj_size=3 if cell == "lstm" else 0,
               input_kind="packed_unsorted", cell=cell),
        Config(T=4, B=2, I=3, H=5, num_layers=3, batch_first=True, bias=False, cell=cell),
        Config(T=6, I=3, H=4, bidirectional=True, input_kind="unbatched", with_state=False, cell=cell),
        Config(T=5, B=4, I=2, H=3, bidirectional=True, input_kind="packed_sorted", cell=cell),
    ]


ORACLE_CASES = {cell: _oracle_cases(cell) for cell in CELL_NAMES}


@pytest.mark.parametrize("cell, cfg", per_cell(ORACLE_CASES, ids=case_id))
def test_matches_reference_oracle(cell, cfg):
    """The reference agrees with torch's module (the oracle's sanity) and with the fused module."""
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    oracle_result = run_model(Oracle(ref, cell), cfg, data)
    assert_results_close(oracle_result, run_model(ref, cfg, data), 1e-9, 1e-9)
    assert_results_close(run_model(ours, cfg, data), oracle_result, 1e-9, 1e-9)


@pytest.mark.parametrize("cell, cfg", per_cell({cell: cases[:2] for cell, cases in ORACLE_CASES.items()}, ids=case_id))
def test_float32_closer_to_float64_oracle_than_tolerance(cell, cfg):
    """float32 run against the float64 oracle (computed on the same float32 weights): within a few
    times torch's own float32 error."""
    cfg = dataclasses.replace(cfg, dtype=torch.float32)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    expected = run_model(Oracle(ref, cell), cfg, data)  # the reference computes in float64
    actual = run_model(ours, cfg, data)
    torch_fp32 = run_model(ref, cfg, data)
    for key in expected:
        ours_err, _ = report(key + " (ours)", actual[key], expected[key])
        torch_err, _ = report(key + " (torch)", torch_fp32[key], expected[key])
        scale = max(1.0, expected[key].abs().max().item())
        assert ours_err <= 4 * torch_err + 1e-6 * scale, key


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_repeated_calls_and_param_updates(cell):
    """Parameters are read on every call: an in-place update shows in the next call."""
    cfg = Config(T=4, B=3, I=5, H=7, num_layers=2, dtype=torch.float64, cell=cell)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)
    with torch.no_grad():
        for p_ref, p_ours in zip(ref.parameters(), ours.parameters()):
            delta = torch.randn_like(p_ref) * 0.1
            p_ref.add_(delta)
            p_ours.add_(delta)
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)
    # Replacing a parameter's tensor (as an optimizer or load_state_dict(assign=True) may do).
    new = torch.randn_like(ref.weight_hh_l1)
    ref.weight_hh_l1 = torch.nn.Parameter(new.clone())
    ours.weight_hh_l1 = torch.nn.Parameter(new.clone())
    assert_results_close(run_model(ours, cfg, data), run_model(ref, cfg, data), 1e-9, 1e-9)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_autocast_bfloat16_like_nn_lstm(x_dtype):
    """Under torch.autocast("cpu", bfloat16) nn.LSTM runs in bf16 on fp32 parameters (a GRU's
    autocast is test_gru.py's)."""
    cfg = Config(T=5, B=3, I=8, H=16, num_layers=2, bidirectional=True, dtype=torch.float32)
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    # nn.LSTM under bf16 autocast takes oneDNN's LSTM, which fails to build its primitive on CPUs
    # without bf16 instructions (an AVX2-only Zen 3: "could not create a primitive descriptor").
    # There the reference is what autocast does on the others, spelled out: nn.LSTM run on bf16
    # casts of the input and of every parameter.
    cast_by_hand = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    results = []
    for model in (ref, ours):
        x = data.x.to(x_dtype).requires_grad_()
        if model is ref and cast_by_hand:
            bf16 = {name: p.to(torch.bfloat16) for name, p in ref.named_parameters()}
            out, (h, c) = torch.func.functional_call(ref, bf16, (x.to(torch.bfloat16),))
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, (h, c) = model(x)
        loss = (out.float() * data.g_out.float()).sum() + (h.float() * data.g_h.float()).sum()
        grads = torch.autograd.grad(loss, [x, *model.parameters()])
        results.append({"out": out.detach(), "h_n": h.detach(), "c_n": c.detach(),
                        **{f"grad{i}": g for i, g in enumerate(grads)}})
    expected, actual = results
    for key in expected:
        report(key, actual[key], expected[key])
        assert actual[key].dtype == expected[key].dtype, (key, actual[key].dtype)
        scale = max(1.0, expected[key].abs().max().item())
        torch.testing.assert_close(actual[key].float(), expected[key].float(), rtol=5e-2,
                                   atol=5e-2 * scale, msg=key)


KEPT_CHUNKS = Config(T=4200, B=2, I=16, H=256, dtype=torch.float32)
KEPT_CHUNKS_PACKED = Config(T=9000, B=3, I=8, H=256, bidirectional=True, input_kind="packed_sorted",
                            dtype=torch.float32)
# H = 1024 (1024 rows a chunk) with a projection: both packs (W_hh, W_hr^T) kept across chunks.
KEPT_CHUNKS_PROJ = Config(T=2200, B=2, I=8, H=1024, proj_size=64, bidirectional=True, dtype=torch.float32)
CHUNKED = [  # inference whose whole gate buffer would pass 8 MB while W_hh is small, or 32 MB
    # fp32/fp64 batches of 4 rows or more take the input in the register tiles instead
    # (cpu::tiles_take_input), so these have 3.
    Config(T=3000, B=3, I=8, H=32, num_layers=2, dtype=torch.float64),
    Config(T=6000, B=3, I=8, H=32, num_layers=2, bidirectional=True, dtype=torch.float32),
    # bf16 in a batch under 16 rows (from 16 the AMX tiles take the input, and nothing is chunked).
    Config(T=3000, B=12, I=8, H=32, bidirectional=True, batch_first=True, dtype=torch.bfloat16),
    # Past 32 MB of gates with W_hh larger (1 MB, 512 KB): chunks of 16 MB, 2048 steps here (the
    # last 104) and 1365 (the last 70). Batches of 2 and 3 do not take the input on the tiles.
    KEPT_CHUNKS,
    Config(T=2800, B=3, I=8, H=128, bidirectional=True, dtype=torch.float64),
    # Packed, lengths in [1, T] (so at least T + 2 rows: over 8 MB and over 32 MB of gates):
    # sequences end inside chunks and, reversed, start inside them.
    Config(T=9000, B=3, I=8, H=64, input_kind="packed_unsorted", dtype=torch.float32),
    KEPT_CHUNKS_PACKED,
    KEPT_CHUNKS_PROJ,
]


@pytest.mark.parametrize("cfg", CHUNKED, ids=case_id)
def test_parity_inference_in_time_chunks(cfg):
    """Such inference runs the input projection and the recurrence in time chunks
    (csrc/ops/lstm_cpu.cpp): 2 MB of gates per chunk where W_hh is small (682 or 1365 steps of
    3 rows here, 341 or 682 of 12 in bf16), 16 MB otherwise, with a partial last one, visited
    backwards for the reverse direction, state carried between them."""
    ref, ours = make_pair(cfg)
    data = make_data(cfg)
    if cfg.dtype == torch.bfloat16:
        ref64, _ = make_pair(cfg, dtype=torch.float64)
        ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
        data.x = data.x.bfloat16().double()
        data.h0, data.c0 = data.h0.bfloat16().double(), data.c0.bfloat16().double()
        with torch.no_grad():
            expected = run_model(ref64, cfg, data, dtype=torch.float64, backward=False)
            torch_bf16 = run_model(ref, cfg, data, backward=False)
            actual = run_model(ours, cfg, data, backward=False)
        assert_bf16_rule(actual, torch_bf16, expected)
        return
    with torch.no_grad():
        expected = run_model(ref, cfg, data, backward=False)
        actual = run_model(ours, cfg, data, backward=False)
    assert_results_close(actual, expected, *TOLERANCES[cfg.dtype])


@pytest.mark.parametrize("cfg", [KEPT_CHUNKS, KEPT_CHUNKS_PACKED, KEPT_CHUNKS_PROJ], ids=case_id)
def test_large_inference_projects_in_kept_chunks(cfg):
    """Past 32 MB of gates, more than glibc keeps between calls (fresh pages every call cost
    B128 T256 I=H=512 11-15% of its time), the input projection runs per chunk of 16 MB of gates
    whatever the size of W_hh (chunks of 2048, 1365 and 512 steps here; packed, their rows are the
    steps' batch sizes), the reverse direction's chunks from the end."""
    _, ours = make_pair(cfg)
    data = make_data(cfg)
    x = data.x.float()
    if cfg.packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, data.lengths, enforce_sorted=data.enforce_sorted)
        steps = x.batch_sizes.tolist()
    else:
        steps = [cfg.B] * cfg.T
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        ours(x)
    # Each thread's GEMMs in order (a bidirectional layer's directions may run on two threads at
    # once: ops.call_forward_pair).
    rows = {}
    for e in prof.events():
        if e.name in ("mkldnn::_linear_pointwise", "aten::mm") and e.input_shapes:
            rows.setdefault(e.thread, []).append(e.input_shapes[0][0])
    tc = (16 << 20) // (cfg.B * 4 * cfg.H * 4)
    want = [[sum(steps[t:t + tc]) for t in range(0, cfg.T, tc)]]
    if cfg.bidirectional:
        want.append([sum(steps[max(0, t - tc):t]) for t in range(cfg.T, 0, -tc)])
    got = sorted(rows.values())
    assert sum(map(len, want)) > 2 and got in (sorted(want), [sum(want, [])]), (got, want)


LOOKAHEAD = [  # batch 1, at most 512 KB of weights: x W_ih^T a chunk of 8 steps ahead (AVX-512)
    Config(T=16, B=1, I=24, H=40, dtype=torch.float64),  # two whole chunks
    Config(T=61, B=1, I=33, H=70, num_layers=2, bidirectional=True, proj_size=20, dtype=torch.float64),
    Config(T=300, B=1, I=128, H=128, dtype=torch.float32),
    Config(T=45, B=1, I=7, H=17, bias=False, input_kind="packed_unsorted", dtype=torch.float32),
    Config(T=23, B=1, I=3, H=33, input_kind="unbatched", batch_first=True, dtype=torch.float64),
    Config(T=17, B=1, I=1, H=16, bidirectional=True, with_state=False, dtype=torch.float32),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cfg", LOOKAHEAD, ids=case_id)
def test_parity_batch1_lookahead(cfg, threads):
    """Batch 1 computes the input projection inside the recurrence, each step adding a piece of the
    next 8 steps' (csrc/kernels/cpu/gate_tiles.h, lookahead_tile): whole and partial last
    chunks, the reverse direction, quarters of I with no columns (I < 4), with and without saving
    activations for the backward."""
    with num_threads(threads):
        check_parity(cfg)
        check_inference(cfg)


def _intel_cpu():
    with open("/proc/cpuinfo") as f:
        return "GenuineIntel" in f.read()


@pytest.mark.parametrize("training", [False, True])
def test_bf16_input_projection_gemm_dtype(training):
    """The bf16 input projection's GEMM runs on bf16 operands where oneDNN's bf16 GEMM outruns
    its fp32 one (a Zen 4, AMX), on fp32 ones widened from them where it does not (Intel without
    AMX: half the fp32 rate) or where oneDNN takes no bf16 at all."""
    from torch.profiler import profile

    widened = lstm_fused._C.bf16_gemm_widened()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert widened
    elif "LSTM_FUSED_CPU_ISA" not in os.environ:  # which caps cpu_isa() but not the rule
        # cpu_isa() is "amx" exactly where AMX is usable (CPUID, XCR0, the kernel's permission).
        assert widened == (_intel_cpu() and lstm_fused.cpu_isa() != "amx")
    model = lstm_fused.LSTM(64, 64).bfloat16()
    x = torch.randn(20, 8, 64).bfloat16().requires_grad_(training)
    with profile(record_shapes=True) as prof, torch.set_grad_enabled(training):
        y, _ = model(x)
        if training:
            y.float().sum().backward()
    gemms = [e for e in prof.events() if e.name in ("mkldnn::_linear_pointwise", "aten::mm")
             and e.input_shapes[:2] in ([[160, 64], [256, 64]], [[160, 64], [64, 256]])]
    assert len(gemms) == 1, [(e.name, e.input_shapes) for e in prof.events()]
    assert (gemms[0].input_dtypes[0] == "float") == widened, gemms[0].input_dtypes
