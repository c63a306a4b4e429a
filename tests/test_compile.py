"""torch.compile(fullgraph=True) and torch.export of a model holding lstm_fused.LSTM.

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
        self.rnn = lstm_fused.LSTM(8, 10, num_layers=2, bidirectional=True, proj_size=4,
                                   batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x, h0, c0):
        y, (h, c) = self.rnn(torch.tanh(self.inp(x)), (h0, c0))
        return self.out(y), h, c


def make_inputs(B, T, gen):
    x = torch.randn(B, T, 6, generator=gen)
    h0 = torch.randn(4, B, 4, generator=gen)
    c0 = torch.randn(4, B, 10, generator=gen)
    return x, h0, c0


def fwd_bwd(model, inputs, grads):
    leaves = [t.clone().requires_grad_() for t in inputs]
    outs = model(*leaves)
    loss = sum((o * g).sum() for o, g in zip(outs, grads))
    params = [p for p in model.parameters()]
    grad_values = torch.autograd.grad(loss, leaves + params)
    return [o.detach() for o in outs] + list(grad_values)


def assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        print(f"tensor {i}: max abs err {(a - e).abs().max().item():.3e}")
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def check(model, compiled, shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for B, T in shapes:
        inputs = make_inputs(B, T, gen)
        grads = [torch.randn(B, T, 3, generator=gen), torch.randn(4, B, 4, generator=gen),
                 torch.randn(4, B, 10, generator=gen)]
        assert_all_close(fwd_bwd(compiled, inputs, grads), fwd_bwd(model, inputs, grads))


def test_compile_fullgraph_static():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    check(model, compiled, [(3, 5), (3, 5)])


def test_compile_fullgraph_dynamic_no_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    check(model, compiled, [(3, 5)])
    # New batch sizes and sequence lengths must reuse the dynamic graph.
    with torch.compiler.set_stance("fail_on_recompile"):
        check(model, compiled, [(2, 7), (6, 4), (5, 11)], seed=1)


def test_compile_packed_sequence_fullgraph():
    """The module's PackedSequence path also compiles without graph breaks (aot_eager: quick)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = lstm_fused.LSTM(3, 5, num_layers=2, bidirectional=True)

    def f(data, batch_sizes, sorted_indices, unsorted_indices):
        packed = nn.utils.rnn.PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
        out, (h, c) = rnn(packed)
        return out.data, h, c

    seqs = [torch.randn(n, 3) for n in (4, 2, 5)]
    p = nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    args = (p.data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
    expected = f(*args)
    actual = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


def test_export_and_run():
    torch.manual_seed(0)
    model = Net().eval()
    gen = torch.Generator().manual_seed(0)
    inputs = make_inputs(3, 5, gen)
    B, T = torch.export.Dim("B", min=2, max=64), torch.export.Dim("T", min=2, max=256)
    dynamic_shapes = ({0: B, 1: T}, {1: B}, {1: B})
    exported = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    print(sorted(ops))
    assert any("lstm_fused.forward" in op for op in ops), ops
    runnable = exported.module()
    with torch.no_grad():
        for B_, T_ in [(3, 5), (4, 9), (2, 2)]:
            inputs = make_inputs(B_, T_, gen)
            expected = model(*inputs)
            actual = runnable(*inputs)
            for a, e in zip(actual, expected):
                print(f"B={B_} T={T_} max abs err {(a - e).abs().max().item():.3e}")
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
