"""torch.compile(fullgraph=True) and torch.export of models holding lstm_fused.LSTM and GRU.

Few tests on purpose: an inductor compile takes tens of seconds on 2 cores.
"""

import pytest
import torch
from torch import nn

import lstm_fused
from utils import CELL_NAMES, CELLS

pytestmark = pytest.mark.compile


class Net(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.lstm = cell == "lstm"
        self.inp = nn.Linear(6, 8)
        if self.lstm:
            self.rnn = lstm_fused.LSTM(8, 10, num_layers=2, bidirectional=True, proj_size=4, batch_first=True)
        else:
            self.rnn = lstm_fused.GRU(8, 10, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * (self.rnn.proj_size or 10), 3)

    def state_shapes(self, B):
        """Shapes of h0 (and an LSTM's c0)."""
        h = (4, B, self.rnn.proj_size or 10)
        return [h, (4, B, 10)] if self.lstm else [h]

    def forward(self, x, h0, c0=None):
        y, state = self.rnn(torch.tanh(self.inp(x)), (h0, c0) if self.lstm else h0)
        return self.out(y), *(state if self.lstm else (state,))


def make_inputs(model, B, T, gen):
    return torch.randn(B, T, 6, generator=gen), *(torch.randn(s, generator=gen) for s in model.state_shapes(B))


def fwd_bwd(model, inputs, grads):
    leaves = [t.clone().requires_grad_() for t in inputs]
    outs = model(*leaves)
    loss = sum((o * g).sum() for o, g in zip(outs, grads))
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves + list(model.parameters())))


def check(model, compiled, shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for B, T in shapes:
        inputs = make_inputs(model, B, T, gen)
        grads = [torch.randn(B, T, 3, generator=gen), *(torch.randn(s, generator=gen) for s in model.state_shapes(B))]
        expected, actual = fwd_bwd(model, inputs, grads), fwd_bwd(compiled, inputs, grads)
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            print(f"B={B} T={T} tensor {i}: max abs err {(a - e).abs().max().item():.3e}")
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_compile_fullgraph_static_inductor(cell):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net(cell)
    check(model, torch.compile(model, fullgraph=True, dynamic=False), [(3, 5), (3, 5)])


# One inductor compile of a dynamic graph, the LSTM's; the GRU's on aot_eager, Dynamo's and
# AOTAutograd's graph, which is what the op's fake kernel has to serve.
@pytest.mark.parametrize("cell, backend", [("lstm", "inductor"), ("gru", "aot_eager")])
def test_compile_fullgraph_dynamic_no_recompile(cell, backend):
    """One graph with symbolic batch and sequence serves new shapes without recompiling."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net(cell)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    check(model, compiled, [(3, 5)])
    with torch.compiler.set_stance("fail_on_recompile"):
        check(model, compiled, [(2, 7), (6, 4), (5, 11)], seed=1)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_compile_packed_sequence_fullgraph(cell):
    """The module's PackedSequence path also compiles without graph breaks (aot_eager: quick)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = CELLS[cell].fused_rnn(3, 5, num_layers=2, bidirectional=True)

    def f(data, batch_sizes, sorted_indices, unsorted_indices):
        packed = nn.utils.rnn.PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
        out, state = rnn(packed)
        return out.data, *(state if cell == "lstm" else (state,))

    p = nn.utils.rnn.pack_sequence([torch.randn(n, 3) for n in (4, 2, 5)], enforce_sorted=False)
    args = (p.data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
    expected = f(*args)
    actual = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_export_and_run(cell):
    torch.manual_seed(0)
    model = Net(cell).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = make_inputs(model, 3, 5, gen)
    B, T = torch.export.Dim("B", min=2, max=64), torch.export.Dim("T", min=2, max=256)
    dynamic_shapes = ({0: B, 1: T}, *({1: B} for _ in inputs[1:]))
    exported = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    print(sorted(ops))
    assert any(CELLS[cell].forward_op.replace("::", ".") in op for op in ops), ops
    assert not any(f"aten.{cell}" in op for op in ops), ops
    runnable = exported.module()
    with torch.no_grad():
        for B_, T_ in [(3, 5), (4, 9), (2, 2)]:
            inputs = make_inputs(model, B_, T_, gen)
            for a, e in zip(runnable(*inputs), model(*inputs)):
                print(f"B={B_} T={T_} max abs err {(a - e).abs().max().item():.3e}")
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
