"""lstm_fused: fused LSTM kernels for PyTorch, as a drop-in torch.nn.LSTM and torch.nn.LSTMCell.

    import lstm_fused
    lstm = lstm_fused.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
    cell = lstm_fused.LSTMCell(input_size, hidden_size)
    model = lstm_fused.convert(model)   # swaps torch's LSTM and LSTMCell inside a model
    model = lstm_fused.revert(model)    # and back
"""
from . import _provenance, ops  # noqa: F401  (ops loads the extension, registers fake kernels and autograd)
from ._C import built_with_cuda, cpu_isa, empty_cache
from .cells import LSTMCell
from .convert import convert, revert
from .modules import LSTM
from .reference import lstm_reference

__all__ = ["LSTM", "LSTMCell", "convert", "revert", "lstm_reference", "built_with_cuda", "cpu_isa", "empty_cache"]
__version__ = "0.1.0"
