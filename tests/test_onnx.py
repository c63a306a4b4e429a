"""torch.onnx.export of converted models, with both exporters, run by a real ONNX Runtime.

The exported graph must be the standard one (ONNX LSTM nodes, no lstm_fused op) and ONNX Runtime
must reproduce the unconverted model's outputs on new batch sizes and sequence lengths.
"""
import copy
import warnings

import pytest
import torch
from torch import nn

import lstm_fused

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (.ci/run installs it)")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (.ci/run installs it)")


class Tagger(nn.Module):
    def __init__(self, with_state, **lstm_kwargs):
        super().__init__()
        self.with_state = with_state
        self.inp = nn.Linear(6, 8)
        self.rnn = nn.LSTM(8, 10, **lstm_kwargs)
        self.out = nn.Linear(10 * (2 if self.rnn.bidirectional else 1), 3)

    def forward(self, x, h0=None, c0=None):
        hx = (h0, c0) if self.with_state else None
        y, (h, c) = self.rnn(torch.tanh(self.inp(x)), hx)
        return self.out(y), h, c


class CellDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(6, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x, h0, c0):
        h, c = self.cell(x, (h0, c0))
        h, c = self.cell(torch.tanh(self.head(h)), (h, c))
        return self.head(h), c


CONFIGS = {
    "plain": dict(with_state=False),
    "state": dict(with_state=True),
    "stacked_bidirectional": dict(with_state=True, num_layers=2, bidirectional=True),
    "batch_first_no_bias": dict(with_state=False, batch_first=True, bias=False),
    "stacked_batch_first_state": dict(with_state=True, num_layers=2, batch_first=True),
}


def _inputs(model, B, T, seed):
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, CellDecoder):
        return tuple(torch.randn(B, n, generator=gen) for n in (6, 8, 8))
    rnn = model.rnn
    x = torch.randn(*((B, T) if rnn.batch_first else (T, B)), 6, generator=gen)
    if not model.with_state:
        return (x,)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    return x, torch.randn(layers, B, 10, generator=gen), torch.randn(layers, B, 10, generator=gen)


def _dims(model, inputs):
    """Batch and time as dynamic axes: {input name: {axis: name}}."""
    if isinstance(model, CellDecoder):
        return {name: {0: "batch"} for name in ("x", "h0", "c0")}
    bt = {0: "batch", 1: "time"} if model.rnn.batch_first else {0: "time", 1: "batch"}
    axes = {"x": bt}
    if len(inputs) == 3:
        axes.update(h0={1: "batch"}, c0={1: "batch"})
    return axes


def _export(model, inputs, path, dynamo):
    names = ["x", "h0", "c0"][:len(inputs)]
    axes = _dims(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {"batch": torch.export.Dim("batch"), "time": torch.export.Dim("time")}
            shapes = tuple({axis: dims[name] for axis, name in axes[n].items()} for n in names)
            torch.onnx.export(model, inputs, path, input_names=names, dynamo=True, dynamic_shapes=shapes)
        else:
            torch.onnx.export(model, inputs, path, input_names=names, dynamo=False, dynamic_axes=axes)
    return names


def _check(torch_model, dynamo, tmp_path):
    torch_model.eval()
    fused = lstm_fused.convert(copy.deepcopy(torch_model))
    assert any(isinstance(m, (lstm_fused.LSTM, lstm_fused.LSTMCell)) for m in fused.modules())
    path = str(tmp_path / "model.onnx")
    names = _export(fused, _inputs(fused, 3, 5, seed=0), path, dynamo)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert not any("lstm_fused" in op for op in ops)
    if not isinstance(torch_model, CellDecoder):
        assert "LSTM" in ops, ops
    runner = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # torch's own LSTM export through the dynamo exporter fixes the sequence length at the
    # example's (it does so for torch.nn.LSTM alike); the TorchScript exporter keeps both dynamic.
    shapes = [(4, 5), (1, 5)] if dynamo else [(4, 9), (1, 2)]
    for seed, (B, T) in enumerate(shapes, start=1):
        inputs = _inputs(fused, B, T, seed)
        got = runner.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        with torch.no_grad():
            expected = torch_model(*inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            err = (torch.from_numpy(g) - e).abs().max().item()
            print(f"B={B} T={T} max abs err {err:.3e}")
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_lstm_export_runs_in_onnxruntime(config, dynamo, tmp_path):
    torch.manual_seed(0)
    _check(Tagger(**CONFIGS[config]), dynamo, tmp_path)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_cell_export_runs_in_onnxruntime(dynamo, tmp_path):
    torch.manual_seed(0)
    _check(CellDecoder(), dynamo, tmp_path)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_projection_export_is_refused_clearly(dynamo, tmp_path):
    model = lstm_fused.LSTM(4, 6, proj_size=3).eval()
    with pytest.raises(Exception) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(5, 2, 4),), str(tmp_path / "p.onnx"), dynamo=dynamo)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("proj_size > 0 cannot be exported to ONNX" in s for s in chain), chain


def test_eager_calls_after_export_run_fused(tmp_path):
    model = lstm_fused.LSTM(4, 6).eval()
    x = torch.randn(5, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    with torch.profiler.profile() as prof:
        model(x)
    assert "lstm_fused::forward" in {e.name for e in prof.events()}
