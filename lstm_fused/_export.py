"""What the modules run while torch.onnx.export traces them: torch's own LSTM and GRU ops.

ONNX has no lstm_fused op, and both exporters (the TorchScript-based one and dynamo=True) already
translate torch's aten::lstm / aten::gru (and their cells) into standard ONNX LSTM / GRU nodes (or
plain MatMul / Sigmoid / Tanh for a cell). So while an export runs, a layer stack calls those ops
on the same parameters; the exported graph is the one torch's module would give. ONNX's LSTM has
no projection, and torch cannot export proj_size either: that is refused with a clear error.

The same wrappers are the one place that calls torch's ops where lstm_fused has no fused kernel
for a call (GRU on CUDA) or where torch's semantics differ from the op's (mixed dtypes, which
torch promotes under autocast and otherwise refuses with its own error).
"""
import sys

import torch

_TORCHSCRIPT_GLOBALS = "torch.onnx._internal.torchscript_exporter._globals"
_DYNAMO_FLAGS = "torch.onnx._internal.exporter._flags"


def onnx_exporting():
    """torch.onnx.is_in_onnx_export(), at the cost of a few dict lookups: the public function
    imports two modules per call (~3 us, a seventh of a streaming step). torch.onnx is not
    imported by torch itself, so before it is there can be no export."""
    modules = sys.modules
    if "torch.onnx" not in modules:
        return False
    globals_, flags = modules.get(_TORCHSCRIPT_GLOBALS), modules.get(_DYNAMO_FLAGS)
    if torch.compiler.is_compiling():
        # Dynamo refuses to trace into torch.onnx's functions; it reads a module's attribute.
        # (The TorchScript-based exporter does not run under Dynamo.)
        return flags is not None and flags._is_onnx_exporting
    if globals_ is None or flags is None:  # another torch layout: the public, slower question
        return torch.onnx.is_in_onnx_export()
    return globals_.GLOBALS.in_onnx_export or flags._is_onnx_exporting


def lstm(x, h0, c0, weights, num_layers, bidirectional, dropout, training, batch_sizes):
    """functional.lstm's contract (time-major x or packed rows) on torch's aten::lstm."""
    if weights[0][4] is not None:
        raise RuntimeError(
            "lstm_fused: an LSTM with proj_size > 0 cannot be exported to ONNX: ONNX's LSTM operator "
            "has no projection (torch.nn.LSTM with proj_size cannot be exported either)")
    has_bias, flat = _flat(weights)
    if batch_sizes is None:
        return torch._VF.lstm(x, (h0, c0), flat, has_bias, num_layers, dropout, training, bidirectional, False)
    return torch._VF.lstm(x, batch_sizes, (h0, c0), flat, has_bias, num_layers, dropout, training, bidirectional)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """functional.lstm_cell's contract on torch's aten::lstm_cell (also what LSTMCell runs where
    torch's cell semantics differ from the fused op's: mixed dtypes under CPU autocast)."""
    return torch._VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)


def gru(x, h0, weights, num_layers, bidirectional, dropout, training, batch_sizes):
    """functional.gru's contract (time-major x or packed rows) on torch's aten::gru."""
    has_bias, flat = _flat(weights)
    if batch_sizes is None:
        return torch._VF.gru(x, h0, flat, has_bias, num_layers, dropout, training, bidirectional, False)
    return torch._VF.gru(x, batch_sizes, h0, flat, has_bias, num_layers, dropout, training, bidirectional)


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """functional.gru_cell's contract on torch's aten::gru_cell."""
    return torch._VF.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


def _flat(weights):
    """torch's flat weight list (w_ih, w_hh[, b_ih, b_hh] per layer and direction) from the stack's
    per-direction tuples, and whether it holds biases."""
    return weights[0][2] is not None, [w for ws in weights for w in ws[:4] if w is not None]
