"""lstm_fused: fused LSTM kernels for PyTorch, as a drop-in torch.nn.LSTM.

    import lstm_fused
    lstm = lstm_fused.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
    model = lstm_fused.convert(model)   # swaps every torch.nn.LSTM inside a model
"""
from . import _provenance, ops  # noqa: F401  (ops loads the extension, registers fake kernels and autograd)
from ._C import built_with_cuda, cpu_isa, empty_cache
from .modules import LSTM, convert
from .reference import lstm_reference

__all__ = ["LSTM", "convert", "lstm_reference", "built_with_cuda", "cpu_isa", "empty_cache"]
__version__ = "0.1.0"
