"""lstm_fused.LSTM and lstm_fused.GRU: torch.nn.LSTM's and torch.nn.GRU's contracts (constructor,
parameters, shapes, errors) on our ops.

Not subclasses of torch's modules: torch.compile (Dynamo) refuses to trace instances of torch's
RNN modules. What both share with torch.nn.RNNBase (constructor checks, parameters, init,
extra_repr) is FusedRNNBase. The parameters are read by name on every call, so there is no
flat-weight cache to go stale; flatten_parameters() does nothing. Each forward lives in a mixin
(LSTMForward, GRUForward), which convert() also puts under subclasses of torch's modules
(convert.py), and with their _fused_layers replaced, under the int8 modules (quantized.py).
"""
import math
import numbers
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _export, functional


def _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size,
                            stacklevel):
    # The checks and messages of torch.nn.RNNBase.__init__, in its order.
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=stacklevel,
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


class _FusedForward:
    """What LSTMForward and GRUForward share: the parameters by name and torch's input checks.
    _WEIGHTS names a layer's parameters in the order the stack takes them."""

    _WEIGHTS = ()

    def _fused_weight_dtype(self):
        """The dtype the input and states must have (torch's check_input message names it)."""
        return self._parameters["weight_ih_l0"].dtype

    def _layer_weights(self):
        # Read by name on every call (a parameter may have been replaced); the names are fixed.
        names = self.__dict__.get("_weight_names")
        if names is None:
            D = 2 if self.bidirectional else 1
            names = [tuple(f"{w}_l{layer}{'_reverse' if d else ''}" for w in self._WEIGHTS)
                     for layer in range(self.num_layers) for d in range(D)]
            self.__dict__["_weight_names"] = names
        get = self._parameters.get
        return [tuple(map(get, ws)) for ws in names]

    # torch.nn.RNNBase.check_input, with its messages and in its order. Written for a short
    # per-call path (a streaming step is ~20 us in all): each tensor attribute read once.
    def _fused_check_input(self, input, batch_sizes, w_dtype, autocast):
        if input.dtype != w_dtype and not autocast:
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({w_dtype}). "
                f"Convert input: input.to({w_dtype}), or convert model: model.to({input.dtype})")
        shape = input.shape
        expected_dim = 2 if batch_sizes is not None else 3
        if len(shape) != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {len(shape)}")
        if self.input_size != shape[-1]:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {shape[-1]}")


class LSTMForward(_FusedForward):
    """torch.nn.LSTM.forward's contract on lstm_fused's ops, for a module with torch.nn.LSTM's
    attributes (input_size, hidden_size, num_layers, bidirectional, proj_size, batch_first,
    dropout, training) and parameters by their names: lstm_fused.LSTM, and subclasses of
    torch.nn.LSTM once converted."""

    _WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")

    def _fused_check_hidden(self, hx, batch, w_dtype, autocast):
        D = 2 if self.bidirectional else 1
        expected_h = (self.num_layers * D, batch, self.proj_size if self.proj_size > 0 else self.hidden_size)
        expected_c = (self.num_layers * D, batch, self.hidden_size)
        h, c = hx[0], hx[1]
        if h.shape != expected_h:
            raise RuntimeError(f"Expected hidden[0] size {expected_h}, got {list(h.shape)}")
        if c.shape != expected_c:
            raise RuntimeError(f"Expected hidden[1] size {expected_c}, got {list(c.shape)}")
        if (h.dtype != w_dtype or c.dtype != w_dtype) and not autocast:
            raise RuntimeError(
                f"hx and cx must have the dtype of the weights ({w_dtype}), got {h.dtype} and {c.dtype}")

    def forward(self, input, hx=None):
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        w_dtype = self._fused_weight_dtype()
        autocast = torch._C._is_any_autocast_enabled()
        packed = isinstance(input, PackedSequence)
        batch_sizes = sorted_indices = unsorted_indices = None
        unbatched = False
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            self._fused_check_input(input, batch_sizes, w_dtype, autocast)
            batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
            x = input
        else:
            ndim = input.dim()
            if ndim not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {ndim}D instead")
            unbatched = ndim == 2
            if hx is not None:
                want = 2 if unbatched else 3
                if hx[0].dim() != want or hx[1].dim() != want:
                    kind = "unbatched 2-D" if unbatched else "batched 3-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                if unbatched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            if unbatched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            self._fused_check_input(input, None, w_dtype, autocast)
            x = input.transpose(0, 1) if self.batch_first else input
            batch = x.shape[1]
        if hx is None:
            h0 = x.new_zeros(self.num_layers * D, batch, P)
            c0 = x.new_zeros(self.num_layers * D, batch, self.hidden_size)
        else:
            self._fused_check_hidden(hx, batch, w_dtype, autocast)
            if len(hx) != 2:
                raise RuntimeError("lstm expects two hidden states")
            h0, c0 = hx
            if sorted_indices is not None:
                h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        if not packed and x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        y, h_n, c_n = self._fused_layers(x, h0, c0, batch_sizes, autocast)
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        if packed:
            return PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        if self.batch_first:
            y = y.transpose(0, 1)
        if unbatched:
            y = y.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return y, (h_n, c_n)

    def _fused_layers(self, x, h0, c0, batch_sizes, autocast):
        """The layers on checked, time-major input and states ordered as the op takes them."""
        weights = self._layer_weights()
        if autocast and torch.is_autocast_enabled(x.device.type):
            # As torch.nn.LSTM under autocast: input, states and weights in the autocast dtype.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, h0, c0 = x.to(dtype), h0.to(dtype), c0.to(dtype)
            weights = [tuple(w.to(dtype) if w is not None else None for w in ws) for ws in weights]
        return functional.lstm(x, h0, c0, weights, self.num_layers, self.bidirectional, self.dropout, self.training,
                               batch_sizes)


class GRUForward(_FusedForward):
    """torch.nn.GRU.forward's contract on lstm_fused's ops, for a module with torch.nn.GRU's
    attributes (input_size, hidden_size, num_layers, bidirectional, batch_first, dropout,
    training) and parameters by their names: lstm_fused.GRU, and subclasses of torch.nn.GRU once
    converted. Its checks are torch's, in torch's order and on the same calls (hx.dim(),
    hx.size(), hx.index_select), so that a bad argument fails with torch's exception."""

    _WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def forward(self, input, hx=None):
        D = 2 if self.bidirectional else 1
        w_dtype = self._fused_weight_dtype()
        autocast = torch._C._is_any_autocast_enabled()
        packed = isinstance(input, PackedSequence)
        batch_sizes = sorted_indices = unsorted_indices = None
        unbatched = False
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
        else:
            ndim = input.dim()
            if ndim not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {ndim}D instead")
            unbatched = ndim == 2
            if unbatched:
                input = input.unsqueeze(0 if self.batch_first else 1)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            batch = input.shape[0 if self.batch_first else 1]
        if hx is None:
            hx = input.new_zeros(self.num_layers * D, batch, self.hidden_size)
        elif sorted_indices is not None:
            hx = hx.index_select(1, sorted_indices)
        self._fused_check_input(input, batch_sizes, w_dtype, autocast)
        expected = (self.num_layers * D, batch, self.hidden_size)
        if hx.size() != expected:
            raise RuntimeError(f"Expected hidden size {expected}, got {list(hx.size())}")
        x = input if packed or not self.batch_first else input.transpose(0, 1)
        if not packed and x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        # Mixed dtypes (a state not in the weights' dtype; under autocast, any mix) go to torch's
        # own op, which decides as torch.nn.GRU does: its error, or under autocast its result.
        # Unlike aten::lstm, aten::gru is not on CPU autocast's list: only its inner products run
        # in the autocast dtype, and its result keeps the dtype of its input and state. With all in
        # one dtype the fused op computes that result in that dtype.
        y, h_n = self._fused_layers(x, hx, batch_sizes, w_dtype)
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
        if packed:
            return PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices), h_n
        if self.batch_first:
            y = y.transpose(0, 1)
        if unbatched:
            y = y.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
        return y, h_n

    def _fused_layers(self, x, hx, batch_sizes, w_dtype):
        """The layers on checked, time-major input and state ordered as the op takes them."""
        run = functional.gru if x.dtype == hx.dtype == w_dtype else _export.gru
        return run(x, hx, self._layer_weights(), self.num_layers, self.bidirectional, self.dropout, self.training,
                   batch_sizes)


class FusedRNNBase(nn.Module):
    """What lstm_fused.LSTM and lstm_fused.GRU share with torch.nn.RNNBase: the constructor (its
    checks, messages and warning), the parameters (names, order, shapes, init), extra_repr and
    the attributes that code written for torch's modules reads (_flat_weights_names,
    _flat_weights, all_weights, flatten_parameters)."""

    __constants__ = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"]

    _GATES = {"LSTM": 4, "GRU": 3}

    def __init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                 proj_size, device, dtype):
        super().__init__()
        # stacklevel: the dropout warning points at the line that built the module, as torch's.
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size,
                                stacklevel=4)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        factory = {"device": device, "dtype": dtype}
        D = 2 if bidirectional else 1
        P = proj_size if proj_size > 0 else hidden_size
        gates = self._GATES[mode] * hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(D):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                layer_in = input_size if layer == 0 else P * D
                shapes = [("weight_ih", (gates, layer_in)), ("weight_hh", (gates, P))]
                if bias:
                    shapes += [("bias_ih", (gates,)), ("bias_hh", (gates,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for name, shape in shapes:
                    setattr(self, name + sfx, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name + sfx)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self):
        """Kept for compatibility with torch's modules: parameters are read by name, nothing to flatten."""

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)


class LSTM(LSTMForward, FusedRNNBase):
    """A drop-in torch.nn.LSTM whose layers run lstm_fused's fused kernels.

    Same constructor, parameters (names, order, shapes, init), state_dict, inputs and outputs
    (batched, unbatched, batch_first, PackedSequence) and errors as torch.nn.LSTM.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)


class GRU(GRUForward, FusedRNNBase):
    """A drop-in torch.nn.GRU whose layers run lstm_fused's fused kernels (on the CPU; on CUDA
    tensors torch's own GRU runs, on the same parameters).

    Same constructor, parameters (names, order, shapes, init), state_dict, inputs and outputs
    (batched, unbatched, batch_first, PackedSequence) and errors as torch.nn.GRU.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, **kwargs):
        # torch.nn.GRU refuses proj_size (given at all, even 0) before any other check.
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument "
                            f"'{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)
