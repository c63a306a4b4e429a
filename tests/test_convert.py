"""convert() on subclasses of torch.nn.LSTM / LSTMCell, written as forecasting libraries write them,
and revert().

The subclass below follows the pattern of the DeepAR / TFT models of forecasting libraries: a
forward(x, hx=None, lengths=None, enforce_sorted=True) that clamps zero lengths to 1, packs
unsorted, calls super().forward, writes h0 (or zeros) back into the final state of the rows whose
length was 0 (masked_scatter) and unpacks; other methods read nn.LSTM's attributes and tile
states with repeat_interleave for sampling.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn

import lstm_fused
from lstm_fused.convert import FusedLSTMMixin
from utils import roundtrip


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


class ForecastLSTM(RecurrentMixin, nn.LSTM):
    """As a forecasting library's LSTM: methods that read torch.nn.LSTM's attributes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.tag = "encoder"

    def handle_no_encoding(self, state, no_encoding, initial):
        h, c = state
        h = h.masked_scatter(no_encoding, initial[0])
        c = c.masked_scatter(no_encoding, initial[1])
        return h, c

    def init_hidden_state(self, x):
        batch = x.size(0) if self.batch_first else x.size(1)
        D = 2 if self.bidirectional else 1
        h = torch.zeros(self.num_layers * D, batch, self.proj_size or self.hidden_size, dtype=x.dtype)
        c = torch.zeros(self.num_layers * D, batch, self.hidden_size, dtype=x.dtype)
        return h, c

    def repeat_interleave(self, state, n_samples):
        return tuple(s.repeat_interleave(n_samples, 1) for s in state)


class DirectForward(nn.LSTM):
    """A subclass that calls torch.nn.LSTM.forward directly rather than through super()."""

    def forward(self, x, hx=None):
        y, state = nn.LSTM.forward(self, x, hx)
        return 2 * y, state


class ScaledCell(nn.LSTMCell):
    def forward(self, x, hx=None):
        h, c = super().forward(x, hx)
        return 0.5 * h, c


def _pair(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = cls(*args, **kwargs).double()
    ours = copy.deepcopy(ref)
    assert lstm_fused.convert(ours) is ours
    return ref, ours


def _inputs(B, T, I, batch_first, zero_rows=True, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=torch.double, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    if zero_rows:
        lengths[1::3] = 0
    return x, lengths


def _fwd_bwd(model, x, lengths, hx, gen_seed=2):
    x = x.clone().requires_grad_()
    leaves = [x]
    if hx is not None:
        hx = tuple(h.clone().requires_grad_() for h in hx)
        leaves += list(hx)
    out, (h, c) = model(x, hx, lengths=lengths, enforce_sorted=False)
    gen = torch.Generator().manual_seed(gen_seed)
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=gen)).sum() for t in (out, h, c))
    grads = torch.autograd.grad(loss, leaves + list(model.parameters()))
    return [out.detach(), h.detach(), c.detach(), *grads]


def _assert_close(actual, expected, tol=1e-9):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        err = (a - e).abs().max().item() if a.numel() else 0.0
        print(f"tensor {i}: max abs err {err:.3e}")
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def test_subclass_stays_itself_and_runs_fused():
    ref, ours = _pair(ForecastLSTM, 3, 5, 2, batch_first=True)
    ours.register_forward_hook(lambda m, args, out: m.calls.add_(1))
    assert isinstance(ours, ForecastLSTM) and isinstance(ours, nn.LSTM)
    assert isinstance(ours, FusedLSTMMixin) and type(ours).__name__ == "ForecastLSTM"
    assert ours.tag == "encoder" and ours.init_hidden_state(torch.zeros(4, 2, 3))[0].shape == (2, 4, 5)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x, lengths = _inputs(6, 7, 3, batch_first=True)
    with torch.profiler.profile() as prof:
        ours(x, lengths=lengths, enforce_sorted=False)
    names = {e.name for e in prof.events()}
    assert "lstm_fused::forward" in names and "aten::lstm" not in names
    assert int(ours.calls) == 1


def test_convert_keeps_parameter_objects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), ForecastLSTM(3, 4, 2))
    before = [id(p) for p in model.parameters()]
    lstm_fused.convert(model)
    assert isinstance(model[1], ForecastLSTM) and isinstance(model[1], FusedLSTMMixin)
    assert [id(p) for p in model.parameters()] == before


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("state", ["none", "given", "expanded"])
@pytest.mark.parametrize("training", [True, False])
def test_forecast_subclass_matches_torch(batch_first, bidirectional, state, training):
    """2 layers, unsorted lengths with zero-length rows, h0/c0 absent, given, or made with
    .expand() (stride 0) as the libraries do; outputs and gradients to fp64 1e-9."""
    ref, ours = _pair(ForecastLSTM, 3, 5, 2, batch_first=batch_first, bidirectional=bidirectional,
                      dropout=0.0)
    ref.train(training), ours.train(training)
    B, D = 7, 2 if bidirectional else 1
    x, lengths = _inputs(B, 6, 3, batch_first)
    hx = None
    if state == "given":
        hx = (torch.randn(2 * D, B, 5, dtype=torch.double), torch.randn(2 * D, B, 5, dtype=torch.double))
    elif state == "expanded":
        static = torch.randn(1, B, 5, dtype=torch.double)
        hx = (static.expand(2 * D, B, 5), torch.tanh(static).expand(2 * D, B, 5))
    _assert_close(_fwd_bwd(ours, x, lengths, hx), _fwd_bwd(ref, x, lengths, hx))


def test_forecast_subclass_without_lengths_and_repeat_interleave():
    ref, ours = _pair(ForecastLSTM, 3, 4, 1)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    _, state_ref = ref(x)
    _, state = ours(x)
    _assert_close(list(ours.repeat_interleave(state, 3)), list(ref.repeat_interleave(state_ref, 3)))


def test_direct_torch_forward_call_runs_fused():
    ref, ours = _pair(DirectForward, 3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    with torch.profiler.profile() as prof:
        out = ours(x)
    assert "lstm_fused::forward" in {e.name for e in prof.events()}
    _assert_close([out[0], *out[1]], [ref(x)[0], *ref(x)[1]])
    # torch's own modules keep torch's forward.
    plain = nn.LSTM(3, 4)
    with torch.profiler.profile() as prof:
        plain(x.float())
    assert "lstm_fused::forward" not in {e.name for e in prof.events()}


def test_cell_subclass_and_plain_cell():
    ref, ours = _pair(ScaledCell, 3, 4)
    assert isinstance(ours, ScaledCell) and isinstance(ours, lstm_fused.LSTMCell)
    x = torch.randn(5, 3, dtype=torch.double)
    _assert_close(list(ours(x)), list(ref(x)))
    cell = nn.LSTMCell(3, 4)
    assert lstm_fused.convert(cell) is cell and type(cell) is lstm_fused.LSTMCell


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch_save"])
def test_converted_subclass_copies_and_saves(how):
    torch.manual_seed(0)
    model = nn.Sequential(ForecastLSTM(3, 4, 2, batch_first=True), nn.Linear(4, 1)).double()
    lstm_fused.convert(model)
    model[0].tag = "changed"
    clone = roundtrip(how, model)
    assert type(clone[0]) is type(model[0]) and clone[0].tag == "changed"
    x, lengths = _inputs(5, 6, 3, batch_first=True)
    expected = model[0](x, lengths=lengths, enforce_sorted=False)[0]
    assert torch.equal(clone[0](x, lengths=lengths, enforce_sorted=False)[0], expected)
    with torch.no_grad():
        clone[0].weight_ih_l0.add_(1.0)
    assert not torch.equal(clone[0].weight_ih_l0, model[0].weight_ih_l0)


def test_state_dict_round_trip_with_torch_subclass():
    ref, ours = _pair(ForecastLSTM, 3, 4, 2)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    fresh = ForecastLSTM(3, 4, 2).double()
    fresh.load_state_dict(ours.state_dict())
    x, lengths = _inputs(4, 5, 3, batch_first=False)
    _assert_close([fresh(x, lengths=lengths, enforce_sorted=False)[0]],
                  [ours(x, lengths=lengths, enforce_sorted=False)[0]])
    ours.load_state_dict(ForecastLSTM(3, 4, 2).double().state_dict())


def test_revert():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4, 2, bidirectional=True), ForecastLSTM(8, 4), nn.LSTMCell(4, 4),
                          ScaledCell(4, 4)).double()
    types = [type(m) for m in model]
    params = [id(p) for p in model.parameters()]
    lstm_fused.convert(model)
    assert type(model[0]) is lstm_fused.LSTM and type(model[2]) is lstm_fused.LSTMCell
    lstm_fused.revert(model)
    assert [type(m) for m in model] == types
    assert [id(p) for p in model.parameters()] == params
    x = torch.randn(5, 2, 3, dtype=torch.double)
    with torch.profiler.profile() as prof:
        y, _ = model[0](x)
        model[1](y, lengths=torch.tensor([5, 3]), enforce_sorted=False)
        model[3](model[2](y[0, :, :4])[0])
    names = {e.name for e in prof.events()}
    assert "lstm_fused::forward" not in names and "aten::lstm" in names


def test_convert_twice_is_harmless():
    model = nn.Sequential(ForecastLSTM(3, 4), nn.LSTM(3, 4), nn.LSTMCell(3, 4))
    lstm_fused.convert(model)
    types = [type(m) for m in model]
    lstm_fused.convert(model)
    assert [type(m) for m in model] == types
    assert type(model[0]).__mro__.count(FusedLSTMMixin) == 1
