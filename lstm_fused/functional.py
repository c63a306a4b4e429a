"""Everything above one layer: layers, directions, dropout between layers, packed batch_sizes.

``lstm`` runs a stack through one ``lstm_fused::forward`` op per layer and direction, and
``lstm_cell`` one step of a cell through one such op with T = 1; ``gru`` and ``gru_cell`` do the
same with ``lstm_fused::gru_forward``. They take time-major input and states already checked and
ordered by the modules (modules.py, cells.py). While torch.onnx.export traces them they run
torch's own ops instead, and so does a GRU on CUDA tensors, which has no fused kernel (_export.py).
"""
import torch
import torch.autograd.forward_ad
import torch.nn.functional as F

from . import _export, ops


def lstm(x, h0, c0, weights, num_layers, bidirectional, dropout, training, batch_sizes=None):
    """Runs a (possibly bidirectional, projected) LSTM stack.

    x: [T, B, I] time-major, or [N, I] packed rows when batch_sizes ([T] int64 on the CPU) is given.
    h0: [D*num_layers, B, P]; c0: [D*num_layers, B, H] (B = batch_sizes[0] when packed).
    weights: per layer and direction (layer-major), (w_ih, w_hh, b_ih, b_hh, w_hr), each bias and
        w_hr possibly None.
    Returns y (x.shape[:-1] + [D*P]), h_n [D*num_layers, B, P], c_n [D*num_layers, B, H].
    """
    if _export.onnx_exporting():
        return _export.lstm(x, h0, c0, weights, num_layers, bidirectional, dropout, training, batch_sizes)
    D = 2 if bidirectional else 1
    save = _save((x, h0, c0), weights)
    if _below_autograd(save):
        with torch._C._AutoDispatchBelowAutograd():
            return _lstm_stack(x, h0, c0, weights, num_layers, D, dropout, training, batch_sizes, save, pair=True)
    # (Dynamo refuses torch.is_inference_mode_enabled: asked only in eager calls.)
    pair = not save and not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
    return _lstm_stack(x, h0, c0, weights, num_layers, D, dropout, training, batch_sizes, save, pair=pair)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step: x [B, I], h and c [B, H], w_ih [4H, I], w_hh [4H, H], biases [4H] or None.
    Returns (h', c'), each [B, H]: one ``lstm_fused::forward`` call with T = 1."""
    if _export.onnx_exporting():
        return _export.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    save = _save((x, h, c), ((w_ih, w_hh, b_ih, b_hh),))
    x = x.unsqueeze(0)
    if _below_autograd(save):
        with torch._C._AutoDispatchBelowAutograd():
            _, h, c, _, _ = ops.call_forward(x, w_ih, w_hh, b_ih, b_hh, None, h, c, None, False, False)
            return h, c
    _, h, c, _, _ = ops.call_forward(x, w_ih, w_hh, b_ih, b_hh, None, h, c, None, False, save)
    return h, c


def gru(x, h0, weights, num_layers, bidirectional, dropout, training, batch_sizes=None):
    """Runs a (possibly bidirectional) GRU stack.

    x: [T, B, I] time-major, or [N, I] packed rows when batch_sizes ([T] int64 on the CPU) is given.
    h0: [D*num_layers, B, H] (B = batch_sizes[0] when packed).
    weights: per layer and direction (layer-major), (w_ih, w_hh, b_ih, b_hh), the biases possibly
        None; gate order r, z, n as torch.nn.GRU's.
    Returns y (x.shape[:-1] + [D*H]) and h_n [D*num_layers, B, H].
    """
    if x.is_cuda or _export.onnx_exporting():
        return _export.gru(x, h0, weights, num_layers, bidirectional, dropout, training, batch_sizes)
    D = 2 if bidirectional else 1
    save = _save((x, h0), weights)
    if _below_autograd(save):
        with torch._C._AutoDispatchBelowAutograd():
            return _gru_stack(x, h0, weights, num_layers, D, dropout, training, batch_sizes, save)
    return _gru_stack(x, h0, weights, num_layers, D, dropout, training, batch_sizes, save)


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step: x [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H], biases [3H] or None.
    Returns h' [B, H]: one ``lstm_fused::gru_forward`` call with T = 1."""
    if x.is_cuda or _export.onnx_exporting():
        return _export.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    save = _save((x, h), ((w_ih, w_hh, b_ih, b_hh),))
    x = x.unsqueeze(0)
    if _below_autograd(save):
        with torch._C._AutoDispatchBelowAutograd():
            return ops.call_gru_forward(x, w_ih, w_hh, b_ih, b_hh, h, None, False, False)[1]
    return ops.call_gru_forward(x, w_ih, w_hh, b_ih, b_hh, h, None, False, save)[1]


def _save(states, weights):
    """Whether the ops keep their activations for a backward: grad mode is on and an input, a
    state or a weight requires grad."""
    return torch.is_grad_enabled() and (
        any(t.requires_grad for t in states)
        or any(w is not None and w.requires_grad for ws in weights for w in ws))


def _below_autograd(save):
    """Whether a call with nothing to differentiate (under no_grad, say) may run the ops below the
    autograd layer, whose Python kernel (torch.library.register_autograd) would only pass the call
    down after ~5 µs of checks, a fifth of a streaming step. Inference mode skips that layer
    already; torch.compile traces the op as it is; forward-mode AD needs the autograd layer (to
    refuse: the ops define no jvp)."""
    return (not save and not torch.is_inference_mode_enabled() and not torch.compiler.is_compiling()
            and torch.autograd.forward_ad._current_level < 0)


def _lstm_stack(x, h0, c0, weights, num_layers, D, dropout, training, batch_sizes, save, pair=False):
    """pair: a bidirectional layer's two directions may run concurrently (ops.call_forward_pair);
    only for inference below the autograd layer or in inference mode, so that the second thread
    runs no Python."""
    if num_layers == 1 and D == 1:  # the common case, without the loops (streaming calls are short)
        return ops.call_forward_layer(x, *weights[0], h0, c0, batch_sizes, save)

    def direction(x, k, reverse):
        return ops.call_forward(x, *weights[k], h0[k], c0[k], batch_sizes, reverse, save)[:3]

    def both_directions(x, k):
        fwd, rev = ops.call_forward_pair(x, batch_sizes, save, (*weights[k], h0[k], c0[k]),
                                         (*weights[k + 1], h0[k + 1], c0[k + 1]))
        return fwd[:3], rev[:3]

    y, finals = _layers(x, num_layers, D, dropout, training, direction, both_directions if pair else None)
    h_n, c_n = _stacked(finals)
    return y, h_n, c_n


def _gru_stack(x, h0, weights, num_layers, D, dropout, training, batch_sizes, save):
    if num_layers == 1 and D == 1:  # as _lstm_stack: one crossing for the common, streaming case
        return ops.call_gru_forward_layer(x, *weights[0], h0, batch_sizes, save)

    def direction(x, k, reverse):
        return ops.call_gru_forward(x, *weights[k], h0[k], batch_sizes, reverse, save)[:2]

    y, finals = _layers(x, num_layers, D, dropout, training, direction)
    (h_n,) = _stacked(finals)
    return y, h_n


def _layers(x, num_layers, D, dropout, training, direction, both_directions=None):
    """The layer loop of either stack: dropout on the input of every layer but the first (in
    training only, as torch's modules), the directions' outputs concatenated along features.

    direction(x, k, reverse) runs layer and direction k = layer * D + d and returns (y, *states);
    both_directions(x, k), where given, runs a bidirectional layer's two at once.
    Returns the last layer's output and the final states of every layer and direction, in order.
    """
    finals = []
    for layer in range(num_layers):
        if layer > 0 and dropout > 0 and training:
            x = F.dropout(x, dropout, training=True)
        k = layer * D
        if D == 2 and both_directions is not None:
            outs = both_directions(x, k)
        else:
            outs = [direction(x, k + d, d == 1) for d in range(D)]
        finals += [out[1:] for out in outs]
        x = torch.cat([out[0] for out in outs], dim=-1) if D == 2 else outs[0][0]
    return x, finals


def _stacked(finals):
    """Each kind of final state of every layer and direction, stacked: [D*num_layers, B, *]."""
    if len(finals) == 1:
        return tuple(s.unsqueeze(0) for s in finals[0])
    return tuple(torch.stack(states) for states in zip(*finals))
