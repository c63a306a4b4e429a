"""torch.onnx.export of converted models, with both exporters, run by a real ONNX Runtime.

The exported graph must be the standard one (ONNX LSTM or GRU nodes, no lstm_fused op) and ONNX
Runtime must reproduce the unconverted model's outputs on new batch sizes and (with the TorchScript-
based exporter, and the dynamo one for a GRU's) new sequence lengths.
"""
import copy
import warnings

import pytest
import torch
from torch import nn

import lstm_fused
from utils import CELL_NAMES, CELLS

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (.ci/run installs it)")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (.ci/run installs it)")


class Tagger(nn.Module):
    def __init__(self, cell, with_state, **rnn_kwargs):
        super().__init__()
        self.kind = cell
        self.with_state = with_state
        self.inp = nn.Linear(6, 8)
        self.rnn = CELLS[cell].torch_rnn(8, 10, **rnn_kwargs)
        self.out = nn.Linear(10 * (2 if self.rnn.bidirectional else 1), 3)

    def forward(self, x, h0=None, c0=None):
        """c0: an LSTM's (a GRU's state is h0 alone); returns the outputs and the final states."""
        lstm = self.kind == "lstm"
        hx = ((h0, c0) if lstm else h0) if self.with_state else None
        y, state = self.rnn(torch.tanh(self.inp(x)), hx)
        return self.out(y), *(state if lstm else (state,))


class CellDecoder(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.kind = cell
        self.cell = CELLS[cell].torch_cell(6, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x, h0, c0=None):
        lstm = self.kind == "lstm"
        state = self.cell(x, (h0, c0) if lstm else h0)
        state = self.cell(torch.tanh(self.head(state[0] if lstm else state)), state)
        return (self.head(state[0]), state[1]) if lstm else (self.head(state), state)


CONFIGS = {
    "plain": dict(with_state=False),
    "state": dict(with_state=True),
    "stacked_bidirectional": dict(with_state=True, num_layers=2, bidirectional=True),
    "batch_first_no_bias": dict(with_state=False, batch_first=True, bias=False),
    "stacked_batch_first_state": dict(with_state=True, num_layers=2, batch_first=True),
}


def _state_names(model):
    return ["h0", "c0"][:CELLS[model.kind].n_states]


def _inputs(model, B, T, seed):
    gen = torch.Generator().manual_seed(seed)
    names = _state_names(model)
    if isinstance(model, CellDecoder):
        return torch.randn(B, 6, generator=gen), *(torch.randn(B, 8, generator=gen) for _ in names)
    rnn = model.rnn
    x = torch.randn(*((B, T) if rnn.batch_first else (T, B)), 6, generator=gen)
    if not model.with_state:
        return (x,)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    return x, *(torch.randn(layers, B, 10, generator=gen) for _ in names)


def _axes(model, names):
    """Batch and time as dynamic axes: {input name: {axis: name}}."""
    if isinstance(model, CellDecoder):
        return {name: {0: "batch"} for name in names}
    axes = {"x": {0: "batch", 1: "time"} if model.rnn.batch_first else {0: "time", 1: "batch"},
            "h0": {1: "batch"}, "c0": {1: "batch"}}
    return {name: axes[name] for name in names}


def _export(model, inputs, path, dynamo):
    names = (["x"] + _state_names(model))[:len(inputs)]
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
    cell = CELLS[torch_model.kind]
    torch_model.eval()
    fused = lstm_fused.convert(copy.deepcopy(torch_model))
    assert any(isinstance(m, (cell.fused_rnn, cell.fused_cell)) for m in fused.modules())
    path = str(tmp_path / "model.onnx")
    names = _export(fused, _inputs(fused, 3, 5, seed=0), path, dynamo)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert not any("lstm_fused" in op for op in ops), ops
    if not isinstance(torch_model, CellDecoder):
        assert cell.name.upper() in ops, ops
    runner = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # The TorchScript-based exporter keeps batch and time dynamic. The dynamo exporter's translation
    # of torch's own LSTM and GRU (torch.nn's alike) fixes the sequence length at the example's (a
    # Reshape holds it, even where the input declares time dynamic), and in a process's first GRU
    # export the batch too: there new batch sizes are tried where the graph's input declares them.
    x_shape = next(i.shape for i in runner.get_inputs() if i.name == "x")
    print("x in the graph:", x_shape)
    if dynamo:
        assert "batch" in x_shape or cell.name == "gru", x_shape
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


# Every configuration through both exporters for an LSTM; a GRU's through the TorchScript-based one,
# the dynamo exporter (several seconds an export) on the two that cross the most options.
EXPORTS = ([("lstm", config, dynamo) for dynamo in (False, True) for config in sorted(CONFIGS)]
           + [("gru", config, False) for config in sorted(CONFIGS)]
           + [("gru", "stacked_bidirectional", True), ("gru", "batch_first_no_bias", True)])


@pytest.mark.parametrize("cell, config, dynamo", EXPORTS,
                         ids=[f"{c}-{config}-{'dynamo' if d else 'torchscript'}" for c, config, d in EXPORTS])
def test_export_runs_in_onnxruntime(cell, config, dynamo, tmp_path):
    torch.manual_seed(0)
    _check(Tagger(cell, **CONFIGS[config]), dynamo, tmp_path)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_cell_export_runs_in_onnxruntime(cell, dynamo, tmp_path):
    torch.manual_seed(0)
    _check(CellDecoder(cell), dynamo, tmp_path)


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


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_eager_calls_after_export_run_fused(cell, tmp_path):
    model = CELLS[cell].fused_rnn(4, 6).eval()
    x = torch.randn(5, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    with torch.profiler.profile() as prof:
        model(x)
    assert CELLS[cell].forward_op in {e.name for e in prof.events()}
