"""What the modules run while torch.onnx.export traces them: torch's own LSTM ops.

ONNX has no lstm_fused::forward, and both exporters (the TorchScript-based one and dynamo=True)
already translate torch's aten::lstm / aten::lstm_cell into standard ONNX LSTM nodes (or plain
MatMul / Sigmoid / Tanh for a cell). So while an export runs, a layer stack calls those ops on the
same parameters; the exported graph is the one torch.nn.LSTM would give. ONNX's LSTM has no
projection, and torch cannot export proj_size either: that is refused with a clear error.
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
    has_bias = weights[0][2] is not None
    flat = [w for ws in weights for w in ws[:4] if w is not None]
    if batch_sizes is None:
        return torch._VF.lstm(x, (h0, c0), flat, has_bias, num_layers, dropout, training, bidirectional, False)
    return torch._VF.lstm(x, batch_sizes, (h0, c0), flat, has_bias, num_layers, dropout, training, bidirectional)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """functional.lstm_cell's contract on torch's aten::lstm_cell (also what LSTMCell runs where
    torch's cell semantics differ from the fused op's: mixed dtypes under CPU autocast)."""
    return torch._VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
