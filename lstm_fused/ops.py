"""The one place where Python touches the custom ops.

Importing lstm_fused._C registers ``torch.ops.lstm_fused.forward`` and ``.backward`` (schemas in
csrc/ops/schemas.cpp, kernels per device), and the GRU's ``gru_forward`` and ``gru_backward`` (CPU).
The int8 inference ops ``q8_pack``, ``q8_linear`` and ``q8_forward`` (CPU) come with it.
Here: their fake (meta) implementations, so that torch.compile and torch.export can trace them,
and the autograd formulas of ``forward`` and ``gru_forward``, whose backwards call the backward ops.
"""
import torch

from . import _C  # noqa: F401  (registers the ops)

forward = torch.ops.lstm_fused.forward
backward = torch.ops.lstm_fused.backward
gru_forward = torch.ops.lstm_fused.gru_forward
gru_backward = torch.ops.lstm_fused.gru_backward

_forward_unboxed = _C.forward_unboxed
_has_torch_function = torch._C._has_torch_function


def _python_op_only(args):
    """Whether a stack call must take the Python op rather than a C++ entry: torch.compile traces
    it, and __torch_function__ (modes, subclasses among args) must see ``lstm_fused.forward``."""
    return _has_torch_function(args) or torch.compiler.is_compiling()


def call_forward(*args):
    """``forward(*args)`` for the stack's eager calls: the same op entered through the dispatcher's
    C++ side (every dispatch key still runs: autograd, __torch_dispatch__ modes and fake tensors,
    tracing, profiling) instead of the Python op path, which boxes its eleven arguments (~2 µs of a
    streaming call). torch.compile and __torch_function__ (modes, subclasses) get the Python op."""
    if _python_op_only(args):
        return forward(*args)
    return _forward_unboxed(*args)


_gru_forward_unboxed = _C.gru_forward_unboxed


def call_gru_forward(*args):
    """``gru_forward(*args)``, entered as call_forward enters ``forward``."""
    if _python_op_only(args):
        return gru_forward(*args)
    return _gru_forward_unboxed(*args)


_forward_layer_unboxed = _C.forward_layer_unboxed


def call_forward_layer(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, save):
    """A stack of one layer and one direction: ``call_forward`` with h0 / c0 as the module holds
    them ([1, B, *]), returning (y, h_n, c_n) with that leading dim. Eagerly one C++ call, which
    also does the selects and unsqueezes (~1.5 µs each from Python: 25 -> 22 µs a streaming
    call); torch.compile and __torch_function__ get the Python op, as call_forward's."""
    if _python_op_only((x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes)):
        y, h, c, _, _ = forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0[0], c0[0], batch_sizes, False, save)
        return y, h.unsqueeze(0), c.unsqueeze(0)
    return _forward_layer_unboxed(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, save)


_gru_forward_layer_unboxed = _C.gru_forward_layer_unboxed


def call_gru_forward_layer(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, save):
    """call_forward_layer for a GRU: (y, h_n), h0 and h_n with their layer dim ([1, B, H])."""
    if _python_op_only((x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes)):
        y, h, _, _ = gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0[0], batch_sizes, False, save)
        return y, h.unsqueeze(0)
    return _gru_forward_layer_unboxed(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, save)


_forward_pair_unboxed = _C.forward_pair_unboxed
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_tracing_state = torch._C._get_tracing_state


def call_forward_pair(x, batch_sizes, save, args0, args1):
    """A bidirectional layer's two ``forward`` calls (args: w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 of
    the forward and the reverse direction). Eagerly on the CPU, without __torch_dispatch__ modes
    (whose Python would run on the second thread) or torch.jit.trace (whose state is the calling
    thread's), the two go to the C++ side together, which runs them at once when the ops get two
    threads; otherwise forward_pair_in_turn."""
    if (x.device.type == "cpu" and _len_dispatch_stack() == 0 and _tracing_state() is None
            and not _python_op_only((x, *args0, *args1))):
        return _forward_pair_unboxed(x, batch_sizes, save, *args0, *args1)
    return forward_pair_in_turn(x, batch_sizes, save, args0, args1)


def forward_pair_in_turn(x, batch_sizes, save, args0, args1):
    """call_forward_pair's two calls one after the other, each through call_forward."""
    return (call_forward(x, *args0[:5], args0[5], args0[6], batch_sizes, False, save),
            call_forward(x, *args1[:5], args1[5], args1[6], batch_sizes, True, save))


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("lstm_fused::forward")
def _forward_fake(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, save):
    H = w_ih.shape[0] // 4
    P = w_hh.shape[1]
    B = h0.shape[0]
    N = x.shape[0] if batch_sizes is not None else x.shape[0] * x.shape[1]
    acc = _acc_dtype(x.dtype)
    y = x.new_empty((*x.shape[:-1], P))
    gates = x.new_empty((N, 4 * H) if save else (0,), dtype=acc)
    cells = x.new_empty((N, H) if save else (0,), dtype=acc)
    return y, x.new_empty((B, P)), x.new_empty((B, H)), gates, cells


@torch.library.register_fake("lstm_fused::backward")
def _backward_fake(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, y, gates, cells, batch_sizes,
                   reverse, has_bias):
    # The real kernels return contiguous gradients whatever the inputs' strides.
    dw_hr = x.new_empty(w_hr.shape) if w_hr is not None else x.new_empty((0,))
    db = x.new_empty((w_ih.shape[0],) if has_bias else (0,))
    return (x.new_empty(x.shape), x.new_empty(w_ih.shape), x.new_empty(w_hh.shape), db, dw_hr,
            x.new_empty(h0.shape), x.new_empty(c0.shape))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, save = inputs
    y, _, _, gates, cells = output
    # Outputs that got no gradient reach _backward as None rather than as zero tensors: the saved
    # gates alone would be an [N, 4H] fill per backward (13 ms of 470 at B32 T256 H512 on the CPU).
    ctx.set_materialize_grads(False)
    ctx.reverse = reverse
    ctx.has_b_ih = b_ih is not None
    ctx.has_b_hh = b_hh is not None
    ctx.save_for_backward(x, w_ih, w_hh, w_hr, h0, c0, y, gates, cells, batch_sizes)


def _backward(ctx, grad_y, grad_hn, grad_cn, _grad_gates, _grad_cells):
    x, w_ih, w_hh, w_hr, h0, c0, y, gates, cells, batch_sizes = ctx.saved_tensors
    if gates.numel() == 0 and y.numel() != 0:
        raise RuntimeError("lstm_fused: backward through forward(save=False); call it with save=True")
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y
    grad_hn = torch.zeros_like(h0) if grad_hn is None else grad_hn
    grad_cn = torch.zeros_like(c0) if grad_cn is None else grad_cn
    has_bias = ctx.has_b_ih or ctx.has_b_hh
    dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0 = backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, y,
                                                     gates, cells, batch_sizes, ctx.reverse, has_bias)
    return (dx, dw_ih, dw_hh, db if ctx.has_b_ih else None, db if ctx.has_b_hh else None,
            dw_hr if w_hr is not None else None, dh0, dc0, None, None, None)


torch.library.register_autograd("lstm_fused::forward", _backward, setup_context=_setup_context)


@torch.library.register_fake("lstm_fused::gru_forward")
def _gru_forward_fake(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, save):
    H = w_hh.shape[1]
    N = x.shape[0] if batch_sizes is not None else x.shape[0] * x.shape[1]
    acc = _acc_dtype(x.dtype)
    gates = x.new_empty((N, 3 * H) if save else (0,), dtype=acc)
    hn = x.new_empty((N, H) if save else (0,), dtype=acc)
    return x.new_empty((*x.shape[:-1], H)), x.new_empty((h0.shape[0], H)), gates, hn


@torch.library.register_fake("lstm_fused::gru_backward")
def _gru_backward_fake(grad_y, grad_hn, x, w_ih, w_hh, h0, y, gates, hn, batch_sizes, reverse, has_bias):
    db = x.new_empty((w_ih.shape[0],) if has_bias else (0,))
    return (x.new_empty(x.shape), x.new_empty(w_ih.shape), x.new_empty(w_hh.shape), db, db.new_empty(db.shape),
            x.new_empty(h0.shape))


def _gru_setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, save = inputs
    y, _, gates, hn = output
    ctx.set_materialize_grads(False)  # as for forward: no [N, 3H] zero fill for the saved gates
    ctx.reverse = reverse
    ctx.has_b_ih = b_ih is not None
    ctx.has_b_hh = b_hh is not None
    ctx.save_for_backward(x, w_ih, w_hh, h0, y, gates, hn, batch_sizes)


def _gru_backward(ctx, grad_y, grad_hn, _grad_gates, _grad_hn_saved):
    x, w_ih, w_hh, h0, y, gates, hn, batch_sizes = ctx.saved_tensors
    if gates.numel() == 0 and y.numel() != 0:
        raise RuntimeError("lstm_fused: backward through gru_forward(save=False); call it with save=True")
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y
    grad_hn = torch.zeros_like(h0) if grad_hn is None else grad_hn
    has_bias = ctx.has_b_ih or ctx.has_b_hh
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0 = gru_backward(grad_y, grad_hn, x, w_ih, w_hh, h0, y, gates, hn,
                                                       batch_sizes, ctx.reverse, has_bias)
    return (dx, dw_ih, dw_hh, db_ih if ctx.has_b_ih else None, db_hh if ctx.has_b_hh else None, dh0,
            None, None, None)


torch.library.register_autograd("lstm_fused::gru_forward", _gru_backward, setup_context=_gru_setup_context)


# The int8 inference ops (csrc/ops/q8_cpu.cpp; numerics in csrc/kernels/cpu/q8.h).
q8_pack = torch.ops.lstm_fused.q8_pack
q8_linear = torch.ops.lstm_fused.q8_linear
q8_forward = torch.ops.lstm_fused.q8_forward
Q8_BLOCK = 16  # units per packed block
Q8_GROUP = 4   # k's per packed group


_q8_forward_layer_unboxed = _C.q8_forward_layer_unboxed


def call_q8_forward_layer(x, w_ih, w_hh, w_hr, bias, bias_hn, h0, c0, batch_sizes):
    """An int8 stack of one layer and one direction: ``q8_forward`` with the states as the module
    holds them ([1, B, *]), returning (y, h_n, c_n) with that leading dim (c_n [0] for a GRU, c0
    None). Eagerly one C++ call, as call_forward_layer."""
    if _python_op_only((x, *w_ih, *w_hh, *w_hr, bias, bias_hn, h0, c0, batch_sizes)):
        y, h, c = q8_forward(x, w_ih, w_hh, w_hr, bias, bias_hn, h0[0], None if c0 is None else c0[0], batch_sizes,
                             False)
        return y, h.unsqueeze(0), c if c0 is None else c.unsqueeze(0)
    return _q8_forward_layer_unboxed(x, w_ih, w_hh, w_hr, bias, bias_hn, h0, c0, batch_sizes)


@torch.library.register_fake("lstm_fused::q8_pack")
def _q8_pack_fake(w, gates):
    units, K = w.shape[0] // gates, w.shape[1]
    blocks = -(-units // Q8_BLOCK) * gates
    return (w.new_empty((blocks, -(-K // Q8_GROUP), Q8_BLOCK, Q8_GROUP), dtype=torch.int8),
            w.new_empty((blocks * Q8_BLOCK,)), w.new_empty((blocks * Q8_BLOCK,), dtype=torch.int32),
            w.new_empty((2,), dtype=torch.int64))


@torch.library.register_fake("lstm_fused::q8_linear")
def _q8_linear_fake(x, w, bias):
    return x.new_empty((*x.shape[:-1], w[0].shape[0] * Q8_BLOCK))


@torch.library.register_fake("lstm_fused::q8_forward")
def _q8_forward_fake(x, w_ih, w_hh, w_hr, bias, bias_hn, h0, c0, batch_sizes, reverse):
    B, P = h0.shape
    c_n = x.new_empty((0,)) if c0 is None else x.new_empty(c0.shape)
    return x.new_empty((*x.shape[:-1], P)), x.new_empty((B, P)), c_n


def _q8_no_backward(ctx, *grads):
    raise RuntimeError("lstm_fused: the int8 ops are for inference only and have no backward; "
                       "train the float model and quantize it afterwards")


def _q8_setup_context(ctx, inputs, output):
    pass


torch.library.register_autograd("lstm_fused::q8_forward", _q8_no_backward, setup_context=_q8_setup_context)
torch.library.register_autograd("lstm_fused::q8_linear", _q8_no_backward, setup_context=_q8_setup_context)
