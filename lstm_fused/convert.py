"""convert() and revert(): torch's LSTM modules inside a model swapped for lstm_fused's, and back.

- A torch.nn.LSTM becomes an lstm_fused.LSTM holding the same Parameter objects (and hooks).
- A torch.nn.LSTMCell becomes an lstm_fused.LSTMCell in place: that class derives from it.
- A subclass of either (as forecasting libraries write them: a forward(x, hx, lengths=...) that
  packs and calls super().forward) stays the same object, an instance of its own class: convert
  gives it a class derived from that class and from a fused mixin. The C3 order puts the mixin
  between the user's class and torch's, so the user's super().forward reaches the fused forward,
  and every other method, attribute, buffer and hook is the user's. Such an instance pickles
  (torch.save, copy.deepcopy) as its original class plus a mark to convert again on load.
"""
import functools

from torch import nn

from .cells import LSTMCell
from .modules import LSTM, LSTMForward

# Module state that holds hooks: kept when a module is rebuilt as another class.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


class FusedLSTMMixin(LSTMForward, nn.LSTM):
    """What convert() puts under a subclass of torch.nn.LSTM: lstm_fused's forward, ahead of
    torch.nn.LSTM's in the method order."""


def convert(model):
    """Swaps every torch.nn.LSTM and torch.nn.LSTMCell inside ``model`` (or ``model`` itself) for
    lstm_fused's, and gives subclasses of them lstm_fused's forward (see the module docstring).

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
    if cls is nn.LSTM:
        return _rebuild(m, LSTM(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout,
                                m.bidirectional, m.proj_size, device="meta"))
    if cls is nn.LSTMCell:
        m.__class__ = LSTMCell
        return m
    if isinstance(m, (LSTM, LSTMCell, FusedLSTMMixin)):  # lstm_fused's already
        return m
    if isinstance(m, (nn.LSTM, nn.LSTMCell)):
        if isinstance(m, nn.LSTM):
            _route_direct_calls()
        m.__class__ = _converted_class(cls)
        for name, child in m.named_children():
            setattr(m, name, convert(child))
        return m
    return None


def _revert_one(m):
    cls = type(m)
    if cls is LSTM:
        return _rebuild(m, nn.LSTM(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout,
                                   m.bidirectional, m.proj_size, device="meta"))
    if cls is LSTMCell:
        m.__class__ = nn.LSTMCell
        return m
    original = cls.__dict__.get("_lstm_fused_original")
    if original is None:
        return None
    m.__class__ = original
    m.__dict__.pop("_weight_names", None)
    if isinstance(m, nn.LSTM):
        m._init_flat_weights()
    for name, child in m.named_children():
        setattr(m, name, revert(child))
    return m


def _rebuild(old, new):
    """``new`` (built on the meta device) with ``old``'s Parameter objects, training flag and hooks."""
    for name in new._flat_weights_names:
        setattr(new, name, getattr(old, name))
    for key in _HOOK_DICTS:
        if key in old.__dict__:
            new.__dict__[key] = old.__dict__[key]
    if isinstance(new, nn.LSTM):
        new._init_flat_weights()
        new.flatten_parameters()
    new.train(old.training)
    return new


@functools.lru_cache(maxsize=None)
def _converted_class(original):
    """The class convert() gives an instance of ``original`` (a subclass of torch's LSTM or
    LSTMCell): one per original class, named as it is."""
    mixin = FusedLSTMMixin if issubclass(original, nn.LSTM) else LSTMCell
    return type(original.__name__, (original, mixin), {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": original.__doc__,
        "_lstm_fused_original": original,
        "__reduce_ex__": _reduce_converted,
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


def _route_direct_calls():
    """Makes torch.nn.LSTM.forward(self, ...) called directly on a converted instance (as some
    subclasses write their forward, rather than super().forward) run the fused forward too.
    Installed once, at the first conversion of a subclass; for other modules torch's forward
    runs as before, after one isinstance check."""
    torch_forward = nn.LSTM.forward
    if getattr(torch_forward, "_lstm_fused_routed", False):
        return

    @functools.wraps(torch_forward)
    def forward(self, input, hx=None):
        if isinstance(self, FusedLSTMMixin):
            return LSTMForward.forward(self, input, hx)
        return torch_forward(self, input, hx)

    forward._lstm_fused_routed = True
    nn.LSTM.forward = forward
