"""torch.onnx.export of converted GRU models, with both exporters, run by a real ONNX Runtime.

The exported graph must be the standard one (ONNX GRU nodes, no lstm_fused op) and ONNX Runtime
must reproduce the unconverted model's outputs on new batch sizes (and, with the TorchScript-based
exporter, new sequence lengths).
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
    def __init__(self, with_state, **gru_kwargs):
        super().__init__()
        self.with_state = with_state
        self.inp = nn.Linear(6, 8)
        self.rnn = nn.GRU(8, 10, **gru_kwargs)
        self.out = nn.Linear(10 * (2 if self.rnn.bidirectional else 1), 3)

    def forward(self, x, h0=None):
        y, h = self.rnn(torch.tanh(self.inp(x)), h0 if self.with_state else None)
        return self.out(y), h


class CellDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(6, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x, h0):
        h = self.cell(x, h0)
        h = self.cell(torch.tanh(self.head(h)), h)
        return self.head(h), h


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
        return torch.randn(B, 6, generator=gen), torch.randn(B, 8, generator=gen)
    rnn = model.rnn
    x = torch.randn(*((B, T) if rnn.batch_first else (T, B)), 6, generator=gen)
    if not model.with_state:
        return (x,)
    return x, torch.randn(rnn.num_layers * (2 if rnn.bidirectional else 1), B, 10, generator=gen)


def _axes(model, names):
    """Batch and time as dynamic axes: {input name: {axis: name}}."""
    if isinstance(model, CellDecoder):
        return {name: {0: "batch"} for name in names}
    axes = {"x": {0: "batch", 1: "time"} if model.rnn.batch_first else {0: "time", 1: "batch"}, "h0": {1: "batch"}}
    return {name: axes[name] for name in names}


def _export(model, inputs, path, dynamo):
    names = ["x", "h0"][:len(inputs)]
    axes = _axes(model, names)
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
    assert any(isinstance(m, (lstm_fused.GRU, lstm_fused.GRUCell)) for m in fused.modules())
    path = str(tmp_path / "model.onnx")
    names = _export(fused, _inputs(fused, 3, 5, seed=0), path, dynamo)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert not any("lstm_fused" in op for op in ops), ops
    if not isinstance(torch_model, CellDecoder):
        assert "GRU" in ops, ops
    runner = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # The TorchScript-based exporter keeps batch and time dynamic. The dynamo exporter's translation
    # of torch's own GRU (torch.nn.GRU's alike) fixes the sequence length at the example's (a Reshape
    # holds it, even where the input declares time dynamic), and in a process's first GRU export
    # the batch too: there new batch sizes are tried where the graph's input declares them.
    x_shape = next(i.shape for i in runner.get_inputs() if i.name == "x")
    print("x in the graph:", x_shape)
    if dynamo:
        shapes = [(3, 5)] + ([(4, 5), (1, 5)] if "batch" in x_shape else [])
    else:
        assert "batch" in x_shape and ("time" in x_shape or isinstance(torch_model, CellDecoder)), x_shape
        shapes = [(4, 9), (1, 2)]
    for seed, (B, T) in enumerate(shapes, start=1):
        inputs = _inputs(fused, B, T, seed)
        got = runner.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        with torch.no_grad():
            expected = torch_model(*inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            print(f"B={B} T={T} max abs err {(torch.from_numpy(g) - e).abs().max().item():.3e}")
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-5)


# Every configuration through the TorchScript-based exporter; the dynamo exporter (several seconds
# an export) on the two that cross the most options.
EXPORTS = [(config, False) for config in sorted(CONFIGS)] + [("stacked_bidirectional", True),
                                                           ("batch_first_no_bias", True)]


@pytest.mark.parametrize("config, dynamo", EXPORTS, ids=[f"{c}-{'dynamo' if d else 'torchscript'}" for c, d in EXPORTS])
def test_gru_export_runs_in_onnxruntime(config, dynamo, tmp_path):
    torch.manual_seed(0)
    _check(Tagger(**CONFIGS[config]), dynamo, tmp_path)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_gru_cell_export_runs_in_onnxruntime(dynamo, tmp_path):
    torch.manual_seed(0)
    _check(CellDecoder(), dynamo, tmp_path)


def test_eager_calls_after_export_run_fused(tmp_path):
    model = lstm_fused.GRU(4, 6).eval()
    x = torch.randn(5, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    with torch.profiler.profile() as prof:
        model(x)
    assert "lstm_fused::gru_forward" in {e.name for e in prof.events()}
