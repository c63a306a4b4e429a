"""lstm_fused: fused LSTM and GRU kernels for PyTorch, as a drop-in torch.nn.LSTM, torch.nn.GRU,
torch.nn.LSTMCell and torch.nn.GRUCell.

    import lstm_fused
    lstm = lstm_fused.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
    gru = lstm_fused.GRU(input_size, hidden_size, num_layers=2, batch_first=True)
    cell = lstm_fused.LSTMCell(input_size, hidden_size)   # and lstm_fused.GRUCell
    model = lstm_fused.convert(model)   # swaps torch's LSTM, GRU and their cells inside a model
    model = lstm_fused.revert(model)    # and back
    model = lstm_fused.quantize_dynamic(model)   # int8 LSTM and GRU layers for CPU inference
"""
from . import _provenance, ops  # noqa: F401  (ops loads the extension, registers fake kernels and autograd)
from ._C import built_with_cuda, cpu_isa, empty_cache, int8_isa
from .cells import GRUCell, LSTMCell
from .convert import convert, revert
from .modules import GRU, LSTM
from .quantized import (QuantizedGRU, QuantizedGRUCell, QuantizedLSTM, QuantizedLSTMCell, int8_reference,
                        quantize_dynamic)
from .reference import gru_reference, lstm_reference

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "convert", "revert", "lstm_reference", "gru_reference",
           "built_with_cuda", "cpu_isa", "empty_cache", "quantize_dynamic", "QuantizedLSTM", "QuantizedGRU",
           "QuantizedLSTMCell", "QuantizedGRUCell",
           "int8_reference", "int8_isa"]
__version__ = "0.1.0"
