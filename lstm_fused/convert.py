"""convert() and revert(): torch's LSTM and GRU modules inside a model swapped for lstm_fused's, and back.

- A torch.nn.LSTM (torch.nn.GRU) becomes an lstm_fused.LSTM (lstm_fused.GRU) holding the same
  Parameter objects (and hooks).
- A torch.nn.LSTMCell (torch.nn.GRUCell) becomes an lstm_fused.LSTMCell (lstm_fused.GRUCell) in
  place: that class derives from it.
- A subclass of any of them (as forecasting libraries write them: a forward(x, hx, lengths=...)
  that packs and calls super().forward) stays the same object, an instance of its own class:
  convert gives it a class derived from that class and from a fused mixin. The C3 order puts the
  mixin between the user's class and torch's, so the user's super().forward reaches the fused
  forward, and every other method, attribute, buffer and hook is the user's. Such an instance
  pickles (torch.save, copy.deepcopy) as its original class plus a mark to convert again on load.
"""
import functools

from torch import nn

from .cells import GRUCell, LSTMCell
from .modules import GRU, LSTM, GRUForward, LSTMForward

# Module state that holds hooks: kept when a module is rebuilt as another class.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


class FusedLSTMMixin(LSTMForward, nn.LSTM):
    """What convert() puts under a subclass of torch.nn.LSTM: lstm_fused's forward, ahead of
    torch.nn.LSTM's in the method order."""


class FusedGRUMixin(GRUForward, nn.GRU):
    """What convert() puts under a subclass of torch.nn.GRU: lstm_fused's forward, ahead of
    torch.nn.GRU's in the method order."""


# torch's module -> (lstm_fused's module, the mixin for subclasses, the fused forward).
_MODULES = {nn.LSTM: (LSTM, FusedLSTMMixin, LSTMForward), nn.GRU: (GRU, FusedGRUMixin, GRUForward)}
# torch's cell -> lstm_fused's, which derives from it (and is the mixin for subclasses).
_CELLS = {nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}
# lstm_fused's modules and cells, converted subclasses, and quantize_dynamic's int8 stacks (whose
# forwards are LSTMForward / GRUForward too; its int8 cells say so by _lstm_fused_int8): convert
# leaves them as they are.
_FUSED = (LSTMForward, GRUForward, LSTMCell, GRUCell)


def convert(model):
    """Swaps every torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell and torch.nn.GRUCell inside
    ``model`` (or ``model`` itself) for lstm_fused's, and gives subclasses of them lstm_fused's
    forward (see the module docstring).

    The same Parameter objects stay in the model (values, dtype, device, requires_grad; optimizers
    that hold them keep working), with the same training flag and hooks. Returns the model.
    """
    return _swap(model, _convert_one)


def revert(model):
    """convert()'s inverse: torch's own modules again, on the same Parameter objects. Returns the model."""
    return _swap(model, _revert_one)


def _swap(model, swap_one):
    """``swap_one(model)``, or where that is None (not a module it swaps), the same for each child."""
    swapped = swap_one(model)
    if swapped is not None:
        return swapped
    for name, child in model.named_children():
        setattr(model, name, _swap(child, swap_one))
    return model


def _convert_one(m):
    """The converted module, or None where m is not one of torch's (m's children are then visited).
    A converted subclass instance is returned too, after its own children are converted."""
    cls = type(m)
    if cls in _MODULES:
        return _rebuild(m, _rebuilt_as(_MODULES[cls][0], m))
    if cls in _CELLS:
        m.__class__ = _CELLS[cls]
        return m
    if isinstance(m, _FUSED) or getattr(type(m), "_lstm_fused_int8", False):  # lstm_fused's already, or int8
        return m
    base = _torch_base(cls)
    if base is None:
        return None
    if base in _MODULES:
        _route_direct_calls(base)
    m.__class__ = _converted_class(cls)
    for name, child in m.named_children():
        setattr(m, name, convert(child))
    return m


def _revert_one(m):
    cls = type(m)
    for torch_cls, (fused, _, _) in _MODULES.items():
        if cls is fused:
            return _rebuild(m, _rebuilt_as(torch_cls, m))
    for torch_cls, fused in _CELLS.items():
        if cls is fused:
            m.__class__ = torch_cls
            return m
    original = cls.__dict__.get("_lstm_fused_original")
    if original is None:
        return None
    m.__class__ = original
    m.__dict__.pop("_weight_names", None)
    if isinstance(m, nn.RNNBase):
        m._init_flat_weights()
    for name, child in m.named_children():
        setattr(m, name, revert(child))
    return m


def _torch_base(cls):
    """Which of torch's modules and cells ``cls`` derives from, or None."""
    for torch_cls in (*_MODULES, *_CELLS):
        if issubclass(cls, torch_cls):
            return torch_cls
    return None


def _rebuilt_as(new_cls, m):
    """A ``new_cls`` with m's options, on the meta device (its parameters are about to be m's)."""
    extra = {"proj_size": m.proj_size} if m.mode == "LSTM" else {}
    return new_cls(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout, m.bidirectional,
                   device="meta", **extra)


def _rebuild(old, new):
    """``new`` (built on the meta device) with ``old``'s Parameter objects, training flag and hooks."""
    for name in new._flat_weights_names:
        setattr(new, name, getattr(old, name))
    for key in _HOOK_DICTS:
        if key in old.__dict__:
            new.__dict__[key] = old.__dict__[key]
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
        new.flatten_parameters()
    new.train(old.training)
    return new


@functools.lru_cache(maxsize=None)
def _converted_class(original):
    """The class convert() gives an instance of ``original`` (a subclass of one of torch's modules
    or cells): one per original class, named as it is."""
    base = _torch_base(original)
    mixin = _MODULES[base][1] if base in _MODULES else _CELLS[base]
    return derived_class(original, mixin, _lstm_fused_original=original, __reduce_ex__=_reduce_converted)


def derived_class(original, mixin, **attrs):
    """A class derived from ``original`` and ``mixin`` (in that order, so that the mixin's methods
    come after the user's and before torch's), named as ``original``, with ``attrs``."""
    return type(original.__name__, (original, mixin), {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": original.__doc__,
        **attrs,
    })


def _reduce_converted(self, protocol):
    # The generated class is not importable by name: pickle the instance as its original class
    # (importable) and convert it again when it is loaded.
    state = self.__getstate__()
    if state is self.__dict__:
        state = state.copy()
    state.pop("_weight_names", None)  # a cache of the fused forward
    return _load_converted, (type(self)._lstm_fused_original,), state


def _load_converted(original):
    cls = _converted_class(original)
    return cls.__new__(cls)


def _route_direct_calls(torch_cls):
    """Makes torch_cls.forward(self, ...) (torch.nn.LSTM's or torch.nn.GRU's) called directly on a
    converted instance (as some subclasses write their forward, rather than super().forward) run
    the fused forward too. Installed once per class, at the first conversion of a subclass; for
    other modules torch's forward runs as before, after one isinstance check."""
    torch_forward = torch_cls.forward
    if getattr(torch_forward, "_lstm_fused_routed", False):
        return
    fused = _MODULES[torch_cls][2]

    # Any instance with the fused contract: convert's mixin, or quantize_dynamic's int8 one, whose
    # _fused_layers the fused forward calls.
    @functools.wraps(torch_forward)
    def forward(self, input, hx=None):
        if isinstance(self, fused):
            return fused.forward(self, input, hx)
        return torch_forward(self, input, hx)

    forward._lstm_fused_routed = True
    torch_cls.forward = forward
