"""lstm_fused.LSTMCell and lstm_fused.GRUCell: torch.nn.LSTMCell's and torch.nn.GRUCell's
contracts, one step through one call of the fused op (lstm_fused::forward, lstm_fused::gru_forward).

Subclasses of torch's cells (Dynamo traces cells, unlike torch's RNN modules), so the
constructor, parameters, init, extra_repr and state_dict are torch's own, and code that checks
isinstance(m, nn.LSTMCell) or isinstance(m, nn.GRUCell) keeps working. Only forward differs: a
decoder steps a cell once per token, so the call path is kept short (the checks read each
attribute once).
"""
import torch
from torch import nn

from . import _export, functional


class LSTMCell(nn.LSTMCell):
    """A drop-in torch.nn.LSTMCell whose step runs lstm_fused's fused kernel (a layer with T = 1)."""

    def forward(self, input, hx=None):
        input, h, c, batched = lstm_step_args(input, hx, self.hidden_size)
        H = self.hidden_size
        w_ih, w_hh = self.weight_ih, self.weight_hh
        b_ih, b_hh = self.bias_ih, self.bias_hh
        if (torch.is_autocast_enabled("cpu") and not input.is_cuda
                and not input.dtype == h.dtype == c.dtype == w_ih.dtype):
            # Under CPU autocast torch's cell runs its two linears in the autocast dtype and
            # promotes them with the states, which also makes mixed dtypes legal: its own op
            # keeps exactly those result dtypes.
            h, c = _export.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
            return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
        _check_step(input, (h, c), self.input_size, H, w_ih.dtype)
        if input.is_cuda and torch.is_autocast_enabled("cuda"):
            # As torch.nn.LSTMCell under autocast, whose lstm_cell is on CUDA's list of ops run in
            # the autocast dtype (not on the CPU's): input, states and weights in that dtype.
            dtype = torch.get_autocast_dtype("cuda")
            input, h, c, w_ih, w_hh = input.to(dtype), h.to(dtype), c.to(dtype), w_ih.to(dtype), w_hh.to(dtype)
            b_ih = b_ih.to(dtype) if b_ih is not None else None
            b_hh = b_hh.to(dtype) if b_hh is not None else None
        h, c = functional.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
        if not batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


def lstm_step_args(input, hx, hidden_size):
    """torch.nn.LSTMCell.forward's argument checks, with its messages: (input [B, I], h, c, whether
    the input was batched), zero states where hx is None."""
    dim = input.dim()
    if dim not in (1, 2):
        raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {dim}D instead")
    if hx is not None:
        for idx, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
    batched = dim == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        h = c = input.new_zeros(input.shape[0], hidden_size)
    else:
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
                            f"not {type(hx).__name__}")
        h, c = (hx[0], hx[1]) if batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
    return input, h, c, batched


def gru_step_args(input, hx, hidden_size):
    """torch.nn.GRUCell.forward's argument checks, with its messages: (input [B, I], h, whether the
    input was batched), a zero state where hx is None."""
    dim = input.dim()
    if dim not in (1, 2):
        raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {dim}D instead")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    batched = dim == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        h = input.new_zeros(input.shape[0], hidden_size)
    else:
        h = hx if batched else hx.unsqueeze(0)
    return input, h, batched


def _check_step(input, states, input_size, hidden_size, w_dtype):
    """torch's checks of an RNN cell step (ATen's check_rnn_cell_forward_*), with its messages;
    states: (h, c) of an LSTM cell, (h,) of a GRU cell."""
    batch, got = input.shape
    if got != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {got} expected {input_size}")
    for i, state in enumerate(states):
        name = f"hidden{i}"
        shape = state.shape
        if shape[0] != batch:
            raise RuntimeError(f"Input batch size {batch} doesn't match {name} batch size {shape[0]}")
        if shape[1] != hidden_size:
            raise RuntimeError(f"{name} has inconsistent hidden_size: got {shape[1]}, expected {hidden_size}")
    if not (input.is_cuda and torch.is_autocast_enabled("cuda")):
        for t in (input, *states):
            if t.dtype != w_dtype:
                raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_dtype_name(t.dtype)} "
                                   f"and {_dtype_name(w_dtype)}")


def _dtype_name(dtype):
    # ATen's names in its messages: Float, Double, BFloat16, Half.
    return {torch.float32: "Float", torch.float64: "Double", torch.bfloat16: "BFloat16",
            torch.float16: "Half"}.get(dtype, str(dtype))


class GRUCell(nn.GRUCell):
    """A drop-in torch.nn.GRUCell whose step runs lstm_fused's fused kernel (a layer with T = 1)."""

    def forward(self, input, hx=None):
        input, h, batched = gru_step_args(input, hx, self.hidden_size)
        w_ih, w_hh = self.weight_ih, self.weight_hh
        b_ih, b_hh = self.bias_ih, self.bias_hh
        shape = input.shape
        if (input.dtype == h.dtype == w_ih.dtype and shape[1] == self.input_size
                and h.shape == (shape[0], self.hidden_size)):
            h = functional.gru_cell(input, h, w_ih, w_hh, b_ih, b_hh)
        else:
            # What the fused step does not take goes to torch's own op, which answers as
            # torch.nn.GRUCell does: its error for a bad size or dtype, or, under CPU autocast,
            # which makes mixed dtypes legal, its products in the autocast dtype promoted with h.
            # (With everything in one dtype, torch's result under CPU autocast has that dtype too;
            # the fused step computes it in that dtype.)
            h = _export.gru_cell(input, h, w_ih, w_hh, b_ih, b_hh)
        return h if batched else h.squeeze(0)
