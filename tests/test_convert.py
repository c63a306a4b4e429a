"""convert() and revert() with torch.nn.LSTM / GRU, their cells, and subclasses of them written as
forecasting libraries write them.

The subclasses below follow the pattern of the DeepAR / TFT models of forecasting libraries: a
forward(x, hx=None, lengths=None, enforce_sorted=True) that clamps zero lengths to 1, packs
unsorted, calls super().forward, writes h0 (or zeros) back into the final state of the rows whose
length was 0 (masked_scatter) and unpacks; other methods read torch's module's attributes and tile
states with repeat_interleave for sampling.
"""
import copy
import types

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn

import lstm_fused
from lstm_fused.convert import FusedGRUMixin, FusedLSTMMixin
from utils import CELL_NAMES, CELLS, roundtrip


def _states(state):
    """An LSTM's state (h, c) or a GRU's h as a list of tensors."""
    return list(state) if isinstance(state, tuple) else [state]


def _like(state, tensors):
    """tensors in the structure of state: a tuple for an LSTM's, the tensor for a GRU's."""
    return tuple(tensors) if isinstance(state, tuple) else tensors[0]


class RecurrentMixin:
    """The library's mixin above torch's module: the lengths= forward."""

    def forward(self, x, hx=None, lengths=None, enforce_sorted=True):
        if isinstance(x, rnn.PackedSequence) or lengths is None:
            return super().forward(x, hx=hx)
        min_length = lengths.min()
        pack_lengths = lengths.where(lengths > 0, torch.ones_like(lengths))
        packed = rnn.pack_padded_sequence(x, pack_lengths.cpu(), enforce_sorted=enforce_sorted,
                                          batch_first=self.batch_first)
        packed_out, state = super().forward(packed, hx=hx)
        if min_length == 0:
            no_encoding = (lengths == 0)[None, :, None]
            initial = self.init_hidden_state(x) if hx is None else hx
            state = self.handle_no_encoding(state, no_encoding, initial)
        out, _ = rnn.pad_packed_sequence(packed_out, batch_first=self.batch_first)
        return out, state


class ForecastMixin(RecurrentMixin):
    """As a forecasting library's LSTM or GRU: methods that read torch's module's attributes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.tag = "encoder"

    def handle_no_encoding(self, state, no_encoding, initial):
        return _like(state, [s.masked_scatter(no_encoding, i) for s, i in zip(_states(state), _states(initial))])

    def init_hidden_state(self, x):
        batch = x.size(0) if self.batch_first else x.size(1)
        D = 2 if self.bidirectional else 1
        h = torch.zeros(self.num_layers * D, batch, self.proj_size or self.hidden_size, dtype=x.dtype)
        if self.mode == "GRU":
            return h
        return h, torch.zeros(self.num_layers * D, batch, self.hidden_size, dtype=x.dtype)

    def repeat_interleave(self, state, n_samples):
        return _like(state, [s.repeat_interleave(n_samples, 1) for s in _states(state)])


class ForecastLSTM(ForecastMixin, nn.LSTM):
    pass


class ForecastGRU(ForecastMixin, nn.GRU):
    pass


class DirectLSTM(nn.LSTM):
    """A subclass that calls torch.nn.LSTM.forward directly rather than through super()."""

    def forward(self, x, hx=None):
        y, state = nn.LSTM.forward(self, x, hx)
        return 2 * y, state


class DirectGRU(nn.GRU):
    """A subclass that calls torch.nn.GRU.forward directly rather than through super()."""

    def forward(self, x, hx=None):
        y, h = nn.GRU.forward(self, x, hx)
        return 2 * y, h


class ScaledLSTMCell(nn.LSTMCell):
    def forward(self, x, hx=None):
        h, c = super().forward(x, hx)
        return 0.5 * h, c


class ScaledGRUCell(nn.GRUCell):
    def forward(self, x, hx=None):
        return 0.5 * super().forward(x, hx)


KINDS = {
    "lstm": types.SimpleNamespace(forecast=ForecastLSTM, direct=DirectLSTM, scaled=ScaledLSTMCell,
                                  mixin=FusedLSTMMixin, other_mixin=FusedGRUMixin, torch_op="aten::lstm"),
    "gru": types.SimpleNamespace(forecast=ForecastGRU, direct=DirectGRU, scaled=ScaledGRUCell,
                                 mixin=FusedGRUMixin, other_mixin=FusedLSTMMixin, torch_op="aten::gru"),
}


def _pair(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = cls(*args, **kwargs).double()
    ours = copy.deepcopy(ref)
    assert lstm_fused.convert(ours) is ours
    return ref, ours


def _inputs(B, T, I, batch_first, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=torch.double, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    lengths[1::3] = 0
    return x, lengths


def _fwd_bwd(model, x, lengths, hx):
    x = x.clone().requires_grad_()
    leaves = [x]
    if hx is not None:
        hx = _like(hx, [h.clone().requires_grad_() for h in _states(hx)])
        leaves += _states(hx)
    out, state = model(x, hx, lengths=lengths, enforce_sorted=False)
    gen = torch.Generator().manual_seed(2)
    outs = [out, *_states(state)]
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=gen)).sum() for t in outs)
    return [t.detach() for t in outs] + list(torch.autograd.grad(loss, leaves + list(model.parameters())))


def _assert_close(actual, expected, tol=1e-9):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        print(f"tensor {i}: max abs err {(a - e).abs().max().item() if a.numel() else 0.0:.3e}")
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def _op_names(fn):
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events()}


def test_plain_gru_modules_are_swapped_on_the_same_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.GRU(4, 5, 2, bidirectional=True, dropout=0.2),
                          nn.Sequential(nn.GRUCell(4, 6)), nn.LSTM(4, 5)).double()
    model[1].weight_hh_l0.requires_grad_(False)
    model.eval()
    hook_calls = []
    model[1].register_forward_hook(lambda m, args, out: hook_calls.append(type(m)))
    x = torch.randn(6, 2, 4, dtype=torch.double)
    expected = model[1](x), model[2][0](x[0])
    params = [(id(p), p.requires_grad) for p in model.parameters()]
    assert lstm_fused.convert(model) is model
    assert [type(m) for m in (model[1], model[2][0], model[3])] == [lstm_fused.GRU, lstm_fused.GRUCell,
                                                                   lstm_fused.LSTM]
    assert [(id(p), p.requires_grad) for p in model.parameters()] == params
    assert not model[1].training and model[1].dropout == 0.2 and model[1].bidirectional
    names = _op_names(lambda: model[1](x))
    assert "lstm_fused::gru_forward" in names and "aten::gru" not in names
    _assert_close([*model[1](x), model[2][0](x[0])], [*expected[0], expected[1]])
    assert hook_calls == [nn.GRU, lstm_fused.GRU, lstm_fused.GRU]  # before and after convert
    top = nn.GRU(3, 4)
    assert type(lstm_fused.convert(top)) is lstm_fused.GRU


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_subclass_stays_itself_and_runs_fused(cell):
    kind = KINDS[cell]
    ref, ours = _pair(kind.forecast, 3, 5, 2, batch_first=True)
    ours.register_forward_hook(lambda m, args, out: m.calls.add_(1))
    assert isinstance(ours, kind.forecast) and isinstance(ours, CELLS[cell].torch_rnn)
    assert isinstance(ours, kind.mixin) and not isinstance(ours, kind.other_mixin)
    assert type(ours).__name__ == kind.forecast.__name__
    assert ours.tag == "encoder" and _states(ours.init_hidden_state(torch.zeros(4, 2, 3)))[0].shape == (2, 4, 5)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x, lengths = _inputs(6, 7, 3, batch_first=True)
    names = _op_names(lambda: ours(x, lengths=lengths, enforce_sorted=False))
    assert CELLS[cell].forward_op in names and kind.torch_op not in names
    assert int(ours.calls) == 1


def test_convert_keeps_parameter_objects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), ForecastLSTM(3, 4, 2))
    before = [id(p) for p in model.parameters()]
    lstm_fused.convert(model)
    assert isinstance(model[1], ForecastLSTM) and isinstance(model[1], FusedLSTMMixin)
    assert [id(p) for p in model.parameters()] == before


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("state", ["none", "given", "expanded"])
@pytest.mark.parametrize("training", [True, False])
def test_forecast_subclass_matches_torch(cell, batch_first, bidirectional, state, training):
    """2 layers, unsorted lengths with zero-length rows, the initial state absent, given, or made
    with .expand() (stride 0) as the libraries do; outputs and gradients to fp64 1e-9."""
    ref, ours = _pair(KINDS[cell].forecast, 3, 5, 2, batch_first=batch_first, bidirectional=bidirectional,
                      dropout=0.0)
    ref.train(training), ours.train(training)
    B, D = 7, 2 if bidirectional else 1
    x, lengths = _inputs(B, 6, 3, batch_first)
    hx = None
    if state == "given":
        hx = [torch.randn(2 * D, B, 5, dtype=torch.double) for _ in range(CELLS[cell].n_states)]
    elif state == "expanded":
        static = torch.randn(1, B, 5, dtype=torch.double)
        hx = [static.expand(2 * D, B, 5), torch.tanh(static).expand(2 * D, B, 5)][:CELLS[cell].n_states]
    if hx is not None:
        hx = tuple(hx) if cell == "lstm" else hx[0]
    _assert_close(_fwd_bwd(ours, x, lengths, hx), _fwd_bwd(ref, x, lengths, hx))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_forecast_subclass_without_lengths_and_repeat_interleave(cell):
    ref, ours = _pair(KINDS[cell].forecast, 3, 4, 1)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    _, state_ref = ref(x)
    _, state = ours(x)
    _assert_close(_states(ours.repeat_interleave(state, 3)), _states(ref.repeat_interleave(state_ref, 3)))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_direct_torch_forward_call_runs_fused(cell):
    op = CELLS[cell].forward_op
    ref, ours = _pair(KINDS[cell].direct, 3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    assert op in _op_names(lambda: ours(x))
    out, state = ours(x)
    out_ref, state_ref = ref(x)
    _assert_close([out, *_states(state)], [out_ref, *_states(state_ref)])
    # torch's own modules keep torch's forward.
    plain = CELLS[cell].torch_rnn(3, 4)
    names = _op_names(lambda: plain(x.float()))
    assert op not in names and KINDS[cell].torch_op in names


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cell_subclass_and_plain_cell(cell):
    fused_cell = CELLS[cell].fused_cell
    ref, ours = _pair(KINDS[cell].scaled, 3, 4)
    assert isinstance(ours, KINDS[cell].scaled) and isinstance(ours, fused_cell)
    x = torch.randn(5, 3, dtype=torch.double)
    assert CELLS[cell].forward_op in _op_names(lambda: ours(x))
    _assert_close(_states(ours(x)), _states(ref(x)))
    plain = CELLS[cell].torch_cell(3, 4)
    assert lstm_fused.convert(plain) is plain and type(plain) is fused_cell


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch_save"])
def test_converted_subclass_copies_and_saves(cell, how):
    kind = KINDS[cell]
    torch.manual_seed(0)
    model = nn.Sequential(kind.forecast(3, 4, 2, batch_first=True), kind.scaled(4, 4), nn.Linear(4, 1)).double()
    lstm_fused.convert(model)
    model[0].tag = "changed"
    clone = roundtrip(how, model)
    assert type(clone[0]) is type(model[0]) and clone[0].tag == "changed"
    assert type(clone[1]) is type(model[1]) and isinstance(clone[1], CELLS[cell].fused_cell)
    x, lengths = _inputs(5, 6, 3, batch_first=True)
    expected = model[0](x, lengths=lengths, enforce_sorted=False)[0]
    assert torch.equal(clone[0](x, lengths=lengths, enforce_sorted=False)[0], expected)
    assert CELLS[cell].forward_op in _op_names(lambda: clone[0](x))
    with torch.no_grad():
        clone[0].weight_ih_l0.add_(1.0)
    assert not torch.equal(clone[0].weight_ih_l0, model[0].weight_ih_l0)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_state_dict_round_trip_with_torch_subclass(cell):
    forecast = KINDS[cell].forecast
    ref, ours = _pair(forecast, 3, 4, 2)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    fresh = forecast(3, 4, 2).double()
    fresh.load_state_dict(ours.state_dict())
    x, lengths = _inputs(4, 5, 3, batch_first=False)
    _assert_close([fresh(x, lengths=lengths, enforce_sorted=False)[0]],
                  [ours(x, lengths=lengths, enforce_sorted=False)[0]])
    ours.load_state_dict(forecast(3, 4, 2).double().state_dict())


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_revert(cell):
    kind, spec = KINDS[cell], CELLS[cell]
    torch.manual_seed(0)
    model = nn.Sequential(spec.torch_rnn(3, 4, 2, bidirectional=True), kind.forecast(8, 4), spec.torch_cell(4, 4),
                          kind.scaled(4, 4), kind.direct(4, 4)).double()
    types_before = [type(m) for m in model]
    params = [id(p) for p in model.parameters()]
    lstm_fused.convert(model)
    assert type(model[0]) is spec.fused_rnn and type(model[2]) is spec.fused_cell
    lstm_fused.revert(model)
    assert [type(m) for m in model] == types_before
    assert [id(p) for p in model.parameters()] == params
    x = torch.randn(5, 2, 3, dtype=torch.double)

    def run():
        y, _ = model[0](x)
        model[1](y, lengths=torch.tensor([5, 3]), enforce_sorted=False)
        h = _states(model[3](_states(model[2](y[0, :, :4]))[0]))[0]
        model[4](h[None])

    names = _op_names(run)
    assert spec.forward_op not in names and kind.torch_op in names and f"{kind.torch_op}_cell" in names
    # The reverted module is torch's again, flat weights included: it computes what a fresh module
    # of torch's holding its values does.
    fresh = spec.torch_rnn(3, 4, 2, bidirectional=True).double()
    fresh.load_state_dict(model[0].state_dict())
    assert torch.equal(model[0](x)[0], fresh(x)[0])


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_convert_twice_is_harmless(cell):
    kind, spec = KINDS[cell], CELLS[cell]
    model = nn.Sequential(kind.forecast(3, 4), spec.torch_rnn(3, 4), spec.torch_cell(3, 4), kind.scaled(3, 4))
    lstm_fused.convert(model)
    types_before = [type(m) for m in model]
    lstm_fused.convert(model)
    assert [type(m) for m in model] == types_before
    assert type(model[0]).__mro__.count(kind.mixin) == 1
