"""torch.compile(fullgraph=True) and torch.export of models holding lstm_fused.GRU and GRUCell.

Few tests on purpose: an inductor compile takes tens of seconds on 2 cores.
"""

import pytest
import torch
from torch import nn

import lstm_fused

pytestmark = pytest.mark.compile


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.rnn = lstm_fused.GRU(8, 10, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(20, 3)

    def forward(self, x, h0):
        y, h = self.rnn(torch.tanh(self.inp(x)), h0)
        return self.out(y), h


def make_inputs(B, T, gen):
    return torch.randn(B, T, 6, generator=gen), torch.randn(4, B, 10, generator=gen)


def fwd_bwd(model, inputs, grads):
    leaves = [t.clone().requires_grad_() for t in inputs]
    outs = model(*leaves)
    loss = sum((o * g).sum() for o, g in zip(outs, grads))
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves + list(model.parameters())))


def check(model, compiled, shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for B, T in shapes:
        inputs = make_inputs(B, T, gen)
        grads = [torch.randn(B, T, 3, generator=gen), torch.randn(4, B, 10, generator=gen)]
        expected, actual = fwd_bwd(model, inputs, grads), fwd_bwd(compiled, inputs, grads)
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            print(f"B={B} T={T} tensor {i}: max abs err {(a - e).abs().max().item():.3e}")
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_static_inductor():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    check(model, torch.compile(model, fullgraph=True, dynamic=False), [(3, 5), (3, 5)])


def test_compile_fullgraph_dynamic_no_recompile():
    """One graph with symbolic batch and sequence serves new shapes without recompiling (aot_eager:
    the graph is Dynamo's and AOTAutograd's, which is what the op's fake kernel has to serve)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    check(model, compiled, [(3, 5)])
    with torch.compiler.set_stance("fail_on_recompile"):
        check(model, compiled, [(2, 7), (6, 4), (5, 11)], seed=1)


def test_compile_packed_sequence_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = lstm_fused.GRU(3, 5, num_layers=2, bidirectional=True)

    def f(data, batch_sizes, sorted_indices, unsorted_indices):
        packed = nn.utils.rnn.PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
        out, h = rnn(packed)
        return out.data, h

    p = nn.utils.rnn.pack_sequence([torch.randn(n, 3) for n in (4, 2, 5)], enforce_sorted=False)
    args = (p.data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
    expected = f(*args)
    actual = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


def test_export_and_run():
    torch.manual_seed(0)
    model = Net().eval()
    gen = torch.Generator().manual_seed(0)
    B, T = torch.export.Dim("B", min=2, max=64), torch.export.Dim("T", min=2, max=256)
    exported = torch.export.export(model, make_inputs(3, 5, gen), dynamic_shapes=({0: B, 1: T}, {1: B}))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    print(sorted(ops))
    assert any("lstm_fused.gru_forward" in op for op in ops), ops
    assert not any("aten.gru" in op for op in ops), ops
    runnable = exported.module()
    with torch.no_grad():
        for B_, T_ in [(3, 5), (4, 9), (2, 2)]:
            inputs = make_inputs(B_, T_, gen)
            for a, e in zip(runnable(*inputs), model(*inputs)):
                print(f"B={B_} T={T_} max abs err {(a - e).abs().max().item():.3e}")
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
