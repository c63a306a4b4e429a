"""int8 inference: quantize_dynamic() and the int8 LSTM, GRU and cell modules it puts in a model.

``quantize_dynamic(model)`` is shaped like torch.ao.quantization.quantize_dynamic for the
recurrent layers: every LSTM, GRU, LSTMCell and GRUCell inside ``model`` (torch's, lstm_fused's,
and subclasses of either, as forecasting libraries write them) runs int8 weights from then on:

- weights int8, symmetric, one scale per output row, packed once (csrc/kernels/cpu/q8.h);
- x, h_{t-1} (and o * tanh(c) before a projection) quantized on the fly, a scale and zero point
  per row;
- int32 sums, dequantized into float32 gates; the cell state and every output in float32.

The int8 modules keep torch's forward contracts (shapes, batch_first, PackedSequence, unbatched
input, states given or not, and the errors; a cell's step is one q8_forward call with T = 1), for
inference only: in training mode, or with inputs that require grad under grad mode, they raise.

``int8_reference`` is what the kernels compute, as a plain PyTorch loop (the tests' oracle).
"""
import copy
import functools

import torch
from torch import nn

from . import functional, ops
from .cells import GRUCell, LSTMCell, _check_step, gru_step_args, lstm_step_args
from .convert import _HOOK_DICTS, _route_direct_calls, _swap, derived_class
from .modules import GRU, LSTM, GRUForward, LSTMForward, _check_constructor_args

_BLOCK, _GROUP = ops.Q8_BLOCK, ops.Q8_GROUP


def _blocks(units):
    return -(-units // _BLOCK)


def packed_order(v, units, gates):
    """A [gates * units] vector (a bias, in torch's gate-major order) in the packed column order
    of q8.h: unit blocks of 16, each holding its units of every gate, zero padded."""
    nblk = _blocks(units)
    out = v.new_zeros(gates, nblk * _BLOCK)
    out[:, :units] = v.reshape(gates, units)
    return out.view(gates, nblk, _BLOCK).transpose(0, 1).reshape(-1)


def natural_order(v, units, gates):
    """packed_order's inverse: [gates * units] in torch's order."""
    nblk = v.numel() // (gates * _BLOCK)
    return v.view(nblk, gates, _BLOCK).transpose(0, 1).reshape(gates, nblk * _BLOCK)[:, :units].reshape(-1)


def unpack_weight(packed, scale, units, gates, K):
    """A packed weight (q8_pack's packed and scale) as int8 [gates * units, K] in torch's row
    order and its float32 row scales [gates * units]."""
    blocks, kgroups = packed.shape[:2]
    nblk = blocks // gates
    w = packed.permute(0, 2, 1, 3).reshape(nblk, gates, _BLOCK, kgroups * _GROUP)
    w = w.transpose(0, 1).reshape(gates, nblk * _BLOCK, kgroups * _GROUP)[:, :units, :K]
    return w.reshape(gates * units, K), natural_order(scale, units, gates)


def _suffixes(module):
    """The parameter-name suffixes of a stack's layers and directions (torch's), or a cell's ("")."""
    if not hasattr(module, "num_layers"):
        return [""]
    D = 2 if module.bidirectional else 1
    return [f"_l{layer}{'_reverse' if d else ''}" for layer in range(module.num_layers) for d in range(D)]


def _layer_names(module, gru):
    """Per layer and direction (one for a cell): the buffer names of (w_ih, w_hh, w_hr) (each
    [packed, scale, colsum, shape] as q8_pack returns them; w_hr empty without a projection), the
    packed bias and GRU's packed b_hn."""
    names = []
    for sfx in _suffixes(module):
        parts = lambda w: tuple(f"{w}{sfx}_{part}" for part in ("int8", "scale", "colsum", "shape"))  # noqa: E731
        w_hr = parts("weight_hr") if getattr(module, "proj_size", 0) > 0 else ()
        names.append((parts("weight_ih"), parts("weight_hh"), w_hr,
                      f"bias{sfx}_packed" if module.bias else None,
                      f"bias_hn{sfx}_packed" if gru and module.bias else None))
    return names


def _store_quantized(module, source, gru):
    """Registers on ``module`` the int8 buffers of ``source``'s float weights (torch.nn.LSTM's /
    GRU's parameter names; any float dtype)."""
    G = 3 if gru else 4
    H = source.hidden_size
    for sfx, (ih, hh, hr, bias, bias_hn) in zip(_suffixes(module), _layer_names(module, gru)):
        w = {name: getattr(source, name + sfx) for name in ("weight_ih", "weight_hh")}
        for names, weight, gates in ((ih, w["weight_ih"], G), (hh, w["weight_hh"], G)):
            for name, t in zip(names, ops.q8_pack(weight.detach().float().contiguous().cpu(), gates)):
                module.register_buffer(name, t)
        if hr:
            w_hr = getattr(source, "weight_hr" + sfx).detach().float().contiguous().cpu()
            for name, t in zip(hr, ops.q8_pack(w_hr, 1)):
                module.register_buffer(name, t)
        if bias:
            b_ih = getattr(source, "bias_ih" + sfx).detach().float().cpu()
            b_hh = getattr(source, "bias_hh" + sfx).detach().float().cpu()
            if gru:  # r and z take both biases; n takes b_in here and b_hn inside r * (...)
                b = torch.cat([(b_ih + b_hh)[:2 * H], b_ih[2 * H:]])
                module.register_buffer(bias_hn, packed_order(b_hh[2 * H:], H, 1))
            else:
                b = b_ih + b_hh
            module.register_buffer(bias, packed_order(b, H, G))


def _empty_quantized(module, gru):
    """Zero int8 buffers of the right shapes, for a module built by its constructor (a
    load_state_dict fills them)."""
    G = 3 if gru else 4
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    D = 2 if getattr(module, "bidirectional", False) else 1

    def weight(names, units, gates, K):
        blocks = _blocks(units) * gates
        module.register_buffer(names[0], torch.zeros(blocks, -(-K // _GROUP), _BLOCK, _GROUP, dtype=torch.int8))
        module.register_buffer(names[1], torch.ones(blocks * _BLOCK))
        module.register_buffer(names[2], torch.zeros(blocks * _BLOCK, dtype=torch.int32))
        module.register_buffer(names[3], torch.tensor([units, K]))

    for k, (ih, hh, hr, bias, bias_hn) in enumerate(_layer_names(module, gru)):
        weight(ih, H, G, module.input_size if k < D else P * D)
        weight(hh, H, G, P)
        if hr:
            weight(hr, P, 1, H)
        if bias:
            module.register_buffer(bias, torch.zeros(_blocks(H) * G * _BLOCK))
        if bias_hn:
            module.register_buffer(bias_hn, torch.zeros(_blocks(H) * _BLOCK))


def _with_hooks(q, module):
    """q with module's hooks (as convert keeps them when it rebuilds a module)."""
    for key in _HOOK_DICTS:
        if key in module.__dict__:
            q.__dict__[key] = module.__dict__[key]
    return q


def _check_inference(module, tensors):
    """Refuses training mode and autograd, so that the ops may run below the autograd layer (under
    torch.no_grad() as in inference mode: the layer's Python kernel costs ~5 us a call)."""
    if module.training:
        raise RuntimeError(
            f"lstm_fused: {type(module).__name__} runs int8 weights and is for inference only, but it is in "
            "training mode: call .eval() on it (quantize_dynamic returns it so), or train the float model")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(
            f"lstm_fused: {type(module).__name__} runs int8 weights and has no gradient: call it under "
            "torch.no_grad() or torch.inference_mode(), with inputs that do not require grad")


class _Int8Buffers:
    """What the int8 modules and cells share: their buffers by name, read on every call."""

    _Q8_GRU = False
    _lstm_fused_int8 = True  # convert() leaves these modules as they are

    def _q8_layers(self):
        """Per layer and direction: (w_ih, w_hh, w_hr, bias, bias_hn) as q8_forward takes them,
        read by name on every call (torch.func.functional_call and torch.export swap buffers in
        _buffers); the names are made once (~1 us of a ~12 us streaming step)."""
        names = self.__dict__.get("_q8_names")
        if names is None:
            names = self.__dict__["_q8_names"] = _layer_names(self, self._Q8_GRU)
        get = self._buffers.get
        return [([get(n) for n in ih], [get(n) for n in hh], [get(n) for n in hr],
                 get(bias) if bias else None, get(bias_hn) if bias_hn else None)
                for ih, hh, hr, bias, bias_hn in names]

    def _apply(self, fn, *args, **kwargs):
        # .double(), .half() and the like convert every float buffer: the int8 ops take the
        # scales and biases in float32 only, so those stay float32 (as torch.ao's packed ones do).
        out = super()._apply(fn, *args, **kwargs)
        for names in self.__dict__.get("_q8_names") or _layer_names(self, self._Q8_GRU):
            for name in (*names[0][1:2], *names[1][1:2], *names[2][1:2], names[3], names[4]):
                t = self._buffers.get(name) if name else None
                if t is not None and t.dtype != torch.float32:
                    self._buffers[name] = t.float()
        return out


def _below_autograd_if_possible(fn):
    """fn() below the autograd layer where nothing can need it (the int8 modules refuse autograd)
    and tracing does not forbid the check: ~5 us a call under torch.no_grad()."""
    if not torch.compiler.is_compiling() and functional._below_autograd(False):
        with torch._C._AutoDispatchBelowAutograd():
            return fn()
    return fn()


class _Int8Forward(_Int8Buffers):
    """What the int8 LSTM and GRU stacks' forwards share."""

    def _fused_weight_dtype(self):
        return torch.float32


class Int8LSTMForward(_Int8Forward, LSTMForward):
    """torch.nn.LSTM.forward's contract (LSTMForward) on the int8 op."""

    def _fused_layers(self, x, h0, c0, batch_sizes, autocast):
        _check_inference(self, (x, h0, c0))
        if autocast:
            x, h0, c0 = x.float(), h0.float(), c0.float()
        return _below_autograd_if_possible(lambda: self._int8_layers(x, h0, c0, batch_sizes))

    def _int8_layers(self, x, h0, c0, batch_sizes):
        layers = self._q8_layers()
        if len(layers) == 1:  # one crossing into C++ for the common, streaming case
            w_ih, w_hh, w_hr, bias, _ = layers[0]
            return ops.call_q8_forward_layer(x, w_ih, w_hh, w_hr, bias, None, h0, c0, batch_sizes)

        def direction(x, k, reverse):
            w_ih, w_hh, w_hr, bias, _ = layers[k]
            return ops.q8_forward(x, w_ih, w_hh, w_hr, bias, None, h0[k], c0[k], batch_sizes, reverse)

        y, finals = functional._layers(x, self.num_layers, 2 if self.bidirectional else 1, 0.0, False, direction)
        h_n, c_n = functional._stacked(finals)
        return y, h_n, c_n


class Int8GRUForward(_Int8Forward, GRUForward):
    """torch.nn.GRU.forward's contract (GRUForward) on the int8 op."""

    _Q8_GRU = True

    def _fused_layers(self, x, hx, batch_sizes, w_dtype):
        _check_inference(self, (x, hx))
        if not torch._C._is_any_autocast_enabled() and hx.dtype != torch.float32:
            raise RuntimeError(f"lstm_fused: the int8 GRU takes a float32 hx, as its input; got {hx.dtype}")
        x, hx = x.float(), hx.float()
        return _below_autograd_if_possible(lambda: self._int8_layers(x, hx, batch_sizes))

    def _int8_layers(self, x, hx, batch_sizes):
        layers = self._q8_layers()
        if len(layers) == 1:
            w_ih, w_hh, _, bias, bias_hn = layers[0]
            return ops.call_q8_forward_layer(x, w_ih, w_hh, [], bias, bias_hn, hx, None, batch_sizes)[:2]

        def direction(x, k, reverse):
            w_ih, w_hh, _, bias, bias_hn = layers[k]
            y, h, _ = ops.q8_forward(x, w_ih, w_hh, [], bias, bias_hn, hx[k], None, batch_sizes, reverse)
            return y, h

        y, finals = functional._layers(x, self.num_layers, 2 if self.bidirectional else 1, 0.0, False, direction)
        (h_n,) = functional._stacked(finals)
        return y, h_n


class _Int8RNN(nn.Module):
    """The int8 modules' constructor: torch.nn.LSTM's / GRU's arguments and checks, zero int8
    buffers (from_float or load_state_dict fill them), eval mode."""

    _GRU = False

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0):
        super().__init__()
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size,
                                stacklevel=4)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        _empty_quantized(self, self._GRU)
        self.eval()

    @classmethod
    def from_float(cls, module):
        """The int8 module of a float torch.nn.LSTM / lstm_fused.LSTM (GRU for the GRU class),
        in eval mode, with the module's forward hooks."""
        extra = {"proj_size": module.proj_size} if not cls._GRU else {}
        q = cls(module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
                module.dropout, module.bidirectional, **extra)
        _store_quantized(q, module, cls._GRU)
        return _with_hooks(q, module)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + ", dtype=torch.qint8"


class QuantizedLSTM(Int8LSTMForward, _Int8RNN):
    """An int8 torch.nn.LSTM for inference (see the module docstring): torch.nn.LSTM's forward
    contract; the state_dict holds the packed int8 weights, their scales and the packed biases."""


class QuantizedGRU(Int8GRUForward, _Int8RNN):
    """An int8 torch.nn.GRU for inference (see the module docstring)."""

    _GRU = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)


class _Int8CellForward(_Int8Buffers):
    """A cell's step on the int8 op: one layer and direction with T = 1."""

    def _int8_step(self, x, h, c):
        """x [B, I], h [B, H] (and c [B, H] for an LSTM cell): h' (and c')."""
        _check_inference(self, (x, h) if c is None else (x, h, c))
        w_ih, w_hh, _, bias, bias_hn = self._q8_layers()[0]

        def step():
            _, h_n, c_n = ops.call_q8_forward_layer(x.unsqueeze(0), w_ih, w_hh, [], bias, bias_hn, h.unsqueeze(0),
                                                    None if c is None else c.unsqueeze(0), None)
            return h_n[0], None if c is None else c_n[0]

        return _below_autograd_if_possible(step)


class Int8LSTMCellForward(_Int8CellForward):
    """torch.nn.LSTMCell.forward's contract (lstm_fused.LSTMCell's checks) on the int8 op."""

    def forward(self, input, hx=None):
        x, h, c, batched = lstm_step_args(input, hx, self.hidden_size)
        _check_step(x, (h, c), self.input_size, self.hidden_size, torch.float32)
        h, c = self._int8_step(x, h, c)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class Int8GRUCellForward(_Int8CellForward):
    """torch.nn.GRUCell.forward's contract on the int8 op."""

    _Q8_GRU = True

    def forward(self, input, hx=None):
        x, h, batched = gru_step_args(input, hx, self.hidden_size)
        _check_step(x, (h,), self.input_size, self.hidden_size, torch.float32)
        h, _ = self._int8_step(x, h, None)
        return h if batched else h.squeeze(0)


class _Int8Cell(nn.Module):
    """The int8 cells' constructor: torch.nn.LSTMCell's / GRUCell's arguments, zero int8 buffers
    (from_float or load_state_dict fill them), eval mode."""

    _GRU = False

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        _empty_quantized(self, self._GRU)
        self.eval()

    @classmethod
    def from_float(cls, cell):
        """The int8 cell of a float torch.nn.LSTMCell / GRUCell (or lstm_fused's), in eval mode,
        with the cell's forward hooks."""
        q = cls(cell.input_size, cell.hidden_size, cell.bias)
        _store_quantized(q, cell, cls._GRU)
        return _with_hooks(q, cell)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False") + ", dtype=torch.qint8"


class QuantizedLSTMCell(Int8LSTMCellForward, _Int8Cell):
    """An int8 torch.nn.LSTMCell for inference: its forward contract, one q8_forward call a step."""


class QuantizedGRUCell(Int8GRUCellForward, _Int8Cell):
    """An int8 torch.nn.GRUCell for inference."""

    _GRU = True


class QuantizedLSTMMixin(Int8LSTMForward, nn.LSTM):
    """What quantize_dynamic puts under a subclass of torch.nn.LSTM: the int8 forward, ahead of
    torch.nn.LSTM's in the method order (the float parameters stay, for the subclass's code)."""


class QuantizedGRUMixin(Int8GRUForward, nn.GRU):
    """What quantize_dynamic puts under a subclass of torch.nn.GRU."""


class QuantizedLSTMCellMixin(Int8LSTMCellForward, nn.LSTMCell):
    """What quantize_dynamic puts under a subclass of torch.nn.LSTMCell."""


class QuantizedGRUCellMixin(Int8GRUCellForward, nn.GRUCell):
    """What quantize_dynamic puts under a subclass of torch.nn.GRUCell."""


class _FusedLSTMCellInt8(Int8LSTMCellForward, LSTMCell):
    """Under a subclass of lstm_fused.LSTMCell: the int8 forward ahead of lstm_fused's."""


class _FusedGRUCellInt8(Int8GRUCellForward, GRUCell):
    """Under a subclass of lstm_fused.GRUCell: the int8 forward ahead of lstm_fused's."""


# Which int8 class or mixin each kind of module gets: the first entry it is an instance (or a
# subclass) of (lstm_fused's cells before torch's, which they derive from).
_PLAIN = {nn.LSTM: QuantizedLSTM, LSTM: QuantizedLSTM, nn.GRU: QuantizedGRU, GRU: QuantizedGRU,
          nn.LSTMCell: QuantizedLSTMCell, LSTMCell: QuantizedLSTMCell, nn.GRUCell: QuantizedGRUCell,
          GRUCell: QuantizedGRUCell}
_MIXINS = ((LSTMCell, _FusedLSTMCellInt8), (GRUCell, _FusedGRUCellInt8), (nn.LSTMCell, QuantizedLSTMCellMixin),
           (nn.GRUCell, QuantizedGRUCellMixin), (LSTM, Int8LSTMForward), (GRU, Int8GRUForward),
           (nn.LSTM, QuantizedLSTMMixin), (nn.GRU, QuantizedGRUMixin))
_KINDS = {nn.LSTM: "LSTM", LSTM: "LSTM", nn.GRU: "GRU", GRU: "GRU", nn.LSTMCell: "LSTMCell", LSTMCell: "LSTMCell",
          nn.GRUCell: "GRUCell", GRUCell: "GRUCell"}


def quantize_dynamic(model, qconfig_spec=None, dtype=torch.qint8, inplace=False):
    """Swaps every LSTM, GRU and cell inside ``model`` (or ``model`` itself) for an int8 module for
    inference, as torch.ao.quantization.quantize_dynamic does for its modules.

    qconfig_spec: the kinds to quantize, a set (or dict keys) of torch.nn.LSTM, GRU, LSTMCell and
    GRUCell (or lstm_fused's, the same kinds); by default all four. dtype: torch.qint8, the only one.
    inplace: whether ``model`` itself is changed; by default a deep copy is.

    Plain modules become QuantizedLSTM, QuantizedGRU, QuantizedLSTMCell or QuantizedGRUCell; a
    subclass instance keeps its class, methods
    and float parameters, and gets an int8 forward (as convert() gives it a fused one). The int8
    modules are put in eval mode; nothing else in the model is. Returns the model.
    """
    if dtype != torch.qint8:
        raise ValueError(f"lstm_fused.quantize_dynamic: dtype {dtype} is not supported, only torch.qint8")
    spec = set(qconfig_spec) if qconfig_spec is not None else set(_KINDS)
    unknown = [t for t in spec if t not in _KINDS]
    if unknown:
        raise ValueError(f"lstm_fused.quantize_dynamic quantizes LSTMs, GRUs and their cells, not {unknown}; "
                         "torch.ao.quantization.quantize_dynamic quantizes torch.nn.Linear")
    kinds = {_KINDS[t] for t in spec}
    if not inplace:
        model = copy.deepcopy(model)
    return _swap(model, functools.partial(_quantize_one, kinds=kinds))


def _quantize_one(m, kinds):
    """The int8 module for m, or None where m is no LSTM, GRU or cell of the kinds asked for."""
    if isinstance(m, _Int8Buffers):
        return m
    kind = next((k for t, k in _KINDS.items() if isinstance(m, t)), None)
    if kind is None or kind not in kinds:
        return None
    cls = type(m)
    if cls in _PLAIN:
        return _PLAIN[cls].from_float(m)
    original = cls.__dict__.get("_lstm_fused_original", cls)  # a converted subclass: its own class
    if issubclass(original, (nn.LSTM, nn.GRU)):
        _route_direct_calls(nn.GRU if kind == "GRU" else nn.LSTM)
    m.__class__ = _quantized_class(original)
    m.__dict__.pop("_weight_names", None)
    _store_quantized(m, m, kind in ("GRU", "GRUCell"))
    m.eval()
    for name, child in m.named_children():
        setattr(m, name, _swap(child, functools.partial(_quantize_one, kinds=kinds)))
    return m


@functools.lru_cache(maxsize=None)
def _quantized_class(original):
    """The class quantize_dynamic gives an instance of ``original`` (a subclass of one of torch's or
    lstm_fused's LSTMs, GRUs or cells): one per original class, named as it is. Under a subclass of
    lstm_fused's stack the int8 forward alone is the mixin: torch's RNNBase would bring flat
    weights, which lstm_fused's stacks do not have."""
    mixin = next(mix for base, mix in _MIXINS if issubclass(original, base))
    return derived_class(original, mixin, _lstm_fused_int8_original=original, __reduce_ex__=_reduce_quantized)


def _reduce_quantized(self, protocol):
    # As convert's: pickled as the original (importable) class, given the int8 class on load.
    state = self.__getstate__()
    if state is self.__dict__:
        state = state.copy()
    state.pop("_q8_names", None)
    return _load_quantized, (type(self)._lstm_fused_int8_original,), state


def _load_quantized(original):
    cls = _quantized_class(original)
    return cls.__new__(cls)


def _quantize_rows(a):
    """q8.h's activation quantization of each row of a [R, K] float32: (q int64, scale, zp int64)."""
    lo = a.amin(1).clamp(max=0)
    hi = a.amax(1).clamp(min=0)
    s = (hi - lo) / 255
    s = torch.where(s == 0, torch.ones_like(s), s)
    zp = torch.round(-lo / s).clamp(0, 255)
    q = (torch.round(a / s[:, None]) + zp[:, None]).clamp(0, 255)
    return q.long(), s, zp.long()


def _int8_product(a, w, colsum, w_scale):
    """q8.h's a . W_n for every row of a [R, K] and row n of int8 w [N, K]: float32 [R, N]."""
    q, s, zp = _quantize_rows(a)
    acc = q @ w.long().t() - zp[:, None] * colsum[None, :]
    return acc.float() * (s[:, None] * w_scale[None, :])


def int8_reference(module, input, hx=None):
    """What the int8 kernels compute for ``module`` (a QuantizedLSTM / QuantizedGRU, or a subclass
    instance quantize_dynamic gave an int8 forward), as an explicit PyTorch loop on its buffers.

    input: dense [T, B, I] ([B, T, I] with batch_first), float32; hx: (h0, c0) for an LSTM, h0 for a
    GRU, or None. Returns torch.nn.LSTM's (y, (h_n, c_n)) or torch.nn.GRU's (y, h_n). The int8
    products are exact (int64 here); the activations are torch's, so results agree with the
    kernels' to a few ulps, and where a ulp moves an activation across a rounding boundary, to a
    quantization step of h.
    """
    gru = isinstance(module, Int8GRUForward)
    G = 3 if gru else 4
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    D = 2 if getattr(module, "bidirectional", False) else 1
    x = input.transpose(0, 1) if module.batch_first else input
    T, B, _ = x.shape
    if hx is None:
        hx = torch.zeros(module.num_layers * D, B, P) if gru else (
            torch.zeros(module.num_layers * D, B, P), torch.zeros(module.num_layers * D, B, H))
    h0, c0 = (hx, None) if gru else hx
    buffers = dict(module.named_buffers())
    hs, cs = [], []
    for layer in range(module.num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            ih, hh, hr, bias, bias_hn = _layer_names(module, gru)[k]
            K = x.shape[-1]
            w_ih, s_ih = unpack_weight(buffers[ih[0]], buffers[ih[1]], H, G, K)
            w_hh, s_hh = unpack_weight(buffers[hh[0]], buffers[hh[1]], H, G, P)
            c_ih, c_hh = natural_order(buffers[ih[2]], H, G), natural_order(buffers[hh[2]], H, G)
            b = natural_order(buffers[bias], H, G) if bias else torch.zeros(G * H)
            b_hn = natural_order(buffers[bias_hn], H, 1) if bias_hn else torch.zeros(H)
            if hr:
                w_hr, s_hr = unpack_weight(buffers[hr[0]], buffers[hr[1]], P, 1, H)
                c_hr = natural_order(buffers[hr[2]], P, 1)
            gates_x = _int8_product(x.reshape(T * B, K).float(), w_ih, c_ih, s_ih) + b
            gates_x = gates_x.view(T, B, G * H)
            h = h0[k].float().clone()
            c = None if gru else c0[k].float().clone()
            y = torch.empty(T, B, P)
            for t in (range(T - 1, -1, -1) if d else range(T)):
                rec = _int8_product(h, w_hh, c_hh, s_hh)
                pre = gates_x[t]
                if gru:
                    r = torch.sigmoid(pre[:, :H] + rec[:, :H])
                    z = torch.sigmoid(pre[:, H:2 * H] + rec[:, H:2 * H])
                    n = torch.tanh(pre[:, 2 * H:] + r * (rec[:, 2 * H:] + b_hn))
                    h = (h - n) * z + n
                else:
                    i, f, g, o = (pre + rec).split(H, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    if hr:
                        h = _int8_product(h, w_hr, c_hr, s_hr)
                y[t] = h
            outs.append(y)
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, dim=-1) if D == 2 else outs[0]
    y = x.transpose(0, 1) if module.batch_first else x
    if gru:
        return y, torch.stack(hs)
    return y, (torch.stack(hs), torch.stack(cs))
