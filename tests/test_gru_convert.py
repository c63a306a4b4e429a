"""convert() and revert() with torch.nn.GRU, torch.nn.GRUCell and subclasses of them written as
forecasting libraries write them.

The subclass below follows the DeepAR-style models of forecasting libraries: a forward(x, hx=None,
lengths=None, enforce_sorted=True) that clamps zero lengths to 1, packs unsorted, calls
super().forward, writes h0 (or zeros) back into the final state of the rows whose length was 0
(masked_scatter) and unpacks; other methods read nn.GRU's attributes and tile the state with
repeat_interleave for sampling.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn

import lstm_fused
from lstm_fused.convert import FusedGRUMixin, FusedLSTMMixin
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
            state = state.masked_scatter(no_encoding, initial)
        out, _ = rnn.pad_packed_sequence(packed_out, batch_first=self.batch_first)
        return out, state


class ForecastGRU(RecurrentMixin, nn.GRU):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.tag = "encoder"

    def init_hidden_state(self, x):
        batch = x.size(0) if self.batch_first else x.size(1)
        D = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * D, batch, self.hidden_size, dtype=x.dtype)

    def repeat_interleave(self, state, n_samples):
        return state.repeat_interleave(n_samples, 1)


class DirectForward(nn.GRU):
    """A subclass that calls torch.nn.GRU.forward directly rather than through super()."""

    def forward(self, x, hx=None):
        y, h = nn.GRU.forward(self, x, hx)
        return 2 * y, h


class ScaledCell(nn.GRUCell):
    def forward(self, x, hx=None):
        return 0.5 * super().forward(x, hx)


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
        hx = hx.clone().requires_grad_()
        leaves.append(hx)
    out, h = model(x, hx, lengths=lengths, enforce_sorted=False)
    gen = torch.Generator().manual_seed(2)
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=gen)).sum() for t in (out, h))
    return [out.detach(), h.detach(), *torch.autograd.grad(loss, leaves + list(model.parameters()))]


def _assert_close(actual, expected, tol=1e-9):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        print(f"tensor {i}: max abs err {(a - e).abs().max().item() if a.numel() else 0.0:.3e}")
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def _op_names(fn):
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events()}


def test_plain_modules_are_swapped_on_the_same_parameters():
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


def test_subclass_stays_itself_and_runs_fused():
    ref, ours = _pair(ForecastGRU, 3, 5, 2, batch_first=True)
    ours.register_forward_hook(lambda m, args, out: m.calls.add_(1))
    assert isinstance(ours, ForecastGRU) and isinstance(ours, nn.GRU) and isinstance(ours, FusedGRUMixin)
    assert not isinstance(ours, FusedLSTMMixin) and type(ours).__name__ == "ForecastGRU"
    assert ours.tag == "encoder" and ours.init_hidden_state(torch.zeros(4, 2, 3)).shape == (2, 4, 5)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x, lengths = _inputs(6, 7, 3, batch_first=True)
    names = _op_names(lambda: ours(x, lengths=lengths, enforce_sorted=False))
    assert "lstm_fused::gru_forward" in names and "aten::gru" not in names
    assert int(ours.calls) == 1


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("state", ["none", "given", "expanded"])
@pytest.mark.parametrize("training", [True, False])
def test_forecast_subclass_matches_torch(batch_first, bidirectional, state, training):
    """2 layers, unsorted lengths with zero-length rows, h0 absent, given, or made with .expand()
    (stride 0) as the libraries do; outputs and gradients to fp64 1e-9."""
    ref, ours = _pair(ForecastGRU, 3, 5, 2, batch_first=batch_first, bidirectional=bidirectional)
    ref.train(training), ours.train(training)
    B, D = 7, 2 if bidirectional else 1
    x, lengths = _inputs(B, 6, 3, batch_first)
    hx = None
    if state == "given":
        hx = torch.randn(2 * D, B, 5, dtype=torch.double)
    elif state == "expanded":
        hx = torch.randn(1, B, 5, dtype=torch.double).expand(2 * D, B, 5)
    _assert_close(_fwd_bwd(ours, x, lengths, hx), _fwd_bwd(ref, x, lengths, hx))


def test_forecast_subclass_without_lengths_and_repeat_interleave():
    ref, ours = _pair(ForecastGRU, 3, 4, 1)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    _assert_close([ours.repeat_interleave(ours(x)[1], 3)], [ref.repeat_interleave(ref(x)[1], 3)])


def test_direct_torch_forward_call_runs_fused():
    ref, ours = _pair(DirectForward, 3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.double)
    assert "lstm_fused::gru_forward" in _op_names(lambda: ours(x))
    _assert_close(list(ours(x)), list(ref(x)))
    # torch's own modules keep torch's forward, and so does an LSTM subclass instance.
    assert "lstm_fused::gru_forward" not in _op_names(lambda: nn.GRU(3, 4)(x.float()))
    assert "aten::gru" in _op_names(lambda: nn.GRU(3, 4)(x.float()))


def test_cell_subclass_and_plain_cell():
    ref, ours = _pair(ScaledCell, 3, 4)
    assert isinstance(ours, ScaledCell) and isinstance(ours, lstm_fused.GRUCell)
    x = torch.randn(5, 3, dtype=torch.double)
    assert "lstm_fused::gru_forward" in _op_names(lambda: ours(x))
    _assert_close([ours(x)], [ref(x)])
    cell = nn.GRUCell(3, 4)
    assert lstm_fused.convert(cell) is cell and type(cell) is lstm_fused.GRUCell


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch_save"])
def test_converted_subclass_copies_and_saves(how):
    torch.manual_seed(0)
    model = nn.Sequential(ForecastGRU(3, 4, 2, batch_first=True), ScaledCell(4, 4), nn.Linear(4, 1)).double()
    lstm_fused.convert(model)
    model[0].tag = "changed"
    clone = roundtrip(how, model)
    assert type(clone[0]) is type(model[0]) and clone[0].tag == "changed"
    assert type(clone[1]) is type(model[1]) and isinstance(clone[1], lstm_fused.GRUCell)
    x, lengths = _inputs(5, 6, 3, batch_first=True)
    expected = model[0](x, lengths=lengths, enforce_sorted=False)[0]
    assert torch.equal(clone[0](x, lengths=lengths, enforce_sorted=False)[0], expected)
    assert "lstm_fused::gru_forward" in _op_names(lambda: clone[0](x))
    with torch.no_grad():
        clone[0].weight_ih_l0.add_(1.0)
    assert not torch.equal(clone[0].weight_ih_l0, model[0].weight_ih_l0)


def test_state_dict_round_trip_with_torch_subclass():
    ref, ours = _pair(ForecastGRU, 3, 4, 2)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    fresh = ForecastGRU(3, 4, 2).double()
    fresh.load_state_dict(ours.state_dict())
    x, lengths = _inputs(4, 5, 3, batch_first=False)
    _assert_close([fresh(x, lengths=lengths, enforce_sorted=False)[0]],
                  [ours(x, lengths=lengths, enforce_sorted=False)[0]])


def test_revert():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(3, 4, 2, bidirectional=True), ForecastGRU(8, 4), nn.GRUCell(4, 4),
                          ScaledCell(4, 4), DirectForward(4, 4)).double()
    types = [type(m) for m in model]
    params = [id(p) for p in model.parameters()]
    lstm_fused.convert(model)
    assert type(model[0]) is lstm_fused.GRU and type(model[2]) is lstm_fused.GRUCell
    lstm_fused.revert(model)
    assert [type(m) for m in model] == types
    assert [id(p) for p in model.parameters()] == params
    x = torch.randn(5, 2, 3, dtype=torch.double)

    def run():
        y, _ = model[0](x)
        model[1](y, lengths=torch.tensor([5, 3]), enforce_sorted=False)
        h = model[3](model[2](y[0, :, :4]))
        model[4](h[None])

    names = _op_names(run)
    assert "lstm_fused::gru_forward" not in names and "aten::gru" in names and "aten::gru_cell" in names
    # The reverted module is torch's again, flat weights included: it computes what a fresh nn.GRU
    # holding its values does.
    fresh = nn.GRU(3, 4, 2, bidirectional=True).double()
    fresh.load_state_dict(model[0].state_dict())
    assert torch.equal(model[0](x)[0], fresh(x)[0])


def test_convert_twice_is_harmless():
    model = nn.Sequential(ForecastGRU(3, 4), nn.GRU(3, 4), nn.GRUCell(3, 4), ScaledCell(3, 4))
    lstm_fused.convert(model)
    types = [type(m) for m in model]
    lstm_fused.convert(model)
    assert [type(m) for m in model] == types
    assert type(model[0]).__mro__.count(FusedGRUMixin) == 1
