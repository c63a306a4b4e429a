"""Everything above one layer: layers, directions, dropout between layers, packed batch_sizes.

``lstm`` runs a stack through one ``lstm_fused::forward`` op per layer and direction, and
``lstm_cell`` one step of a cell through one such op with T = 1. They take time-major input and
states already checked and ordered by the modules (modules.py, cells.py). While torch.onnx.export
traces them they run torch's own ops instead (_export.py).
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
    save = torch.is_grad_enabled() and (
        x.requires_grad or h0.requires_grad or c0.requires_grad
        or any(w is not None and w.requires_grad for ws in weights for w in ws)
    )
    if _below_autograd(save):
        with torch._C._AutoDispatchBelowAutograd():
            return _stack(x, h0, c0, weights, num_layers, D, dropout, training, batch_sizes, save, pair=True)
    # (Dynamo refuses torch.is_inference_mode_enabled: asked only in eager calls.)
    pair = not save and not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
    return _stack(x, h0, c0, weights, num_layers, D, dropout, training, batch_sizes, save, pair=pair)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step: x [B, I], h and c [B, H], w_ih [4H, I], w_hh [4H, H], biases [4H] or None.
    Returns (h', c'), each [B, H]: one ``lstm_fused::forward`` call with T = 1."""
    if _export.onnx_exporting():
        return _export.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    save = torch.is_grad_enabled() and (
        x.requires_grad or h.requires_grad or c.requires_grad or w_ih.requires_grad or w_hh.requires_grad
        or (b_ih is not None and b_ih.requires_grad) or (b_hh is not None and b_hh.requires_grad)
    )
    x = x.unsqueeze(0)
    if _below_autograd(save):
        with torch._C._AutoDispatchBelowAutograd():
            _, h, c, _, _ = ops.call_forward(x, w_ih, w_hh, b_ih, b_hh, None, h, c, None, False, False)
            return h, c
    _, h, c, _, _ = ops.call_forward(x, w_ih, w_hh, b_ih, b_hh, None, h, c, None, False, save)
    return h, c


def _below_autograd(save):
    """Whether a call with nothing to differentiate (under no_grad, say) may run the ops below the
    autograd layer, whose Python kernel (torch.library.register_autograd) would only pass the call
    down after ~5 µs of checks, a fifth of a streaming step. Inference mode skips that layer
    already; torch.compile traces the op as it is; forward-mode AD needs the autograd layer (to
    refuse: the ops define no jvp)."""
    return (not save and not torch.is_inference_mode_enabled() and not torch.compiler.is_compiling()
            and torch.autograd.forward_ad._current_level < 0)


def _stack(x, h0, c0, weights, num_layers, D, dropout, training, batch_sizes, save, pair=False):
    """pair: a bidirectional layer's two directions may run concurrently (ops.call_forward_pair);
    only for inference below the autograd layer or in inference mode, so that the second thread
    runs no Python."""
    if num_layers == 1 and D == 1:  # the common case, without the loops (streaming calls are short)
        return ops.call_forward_layer(x, *weights[0], h0, c0, batch_sizes, save)
    h_n, c_n = [], []
    for layer in range(num_layers):
        if layer > 0 and dropout > 0 and training:
            x = F.dropout(x, dropout, training=True)
        if D == 2 and pair:
            k = layer * D
            fwd, rev = ops.call_forward_pair(x, batch_sizes, save, (*weights[k], h0[k], c0[k]),
                                             (*weights[k + 1], h0[k + 1], c0[k + 1]))
            h_n += [fwd[1], rev[1]]
            c_n += [fwd[2], rev[2]]
            x = torch.cat((fwd[0], rev[0]), dim=-1)
            continue
        outs = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = weights[k]
            y, h, c, _, _ = ops.call_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0[k], c0[k], batch_sizes, d == 1, save)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, dim=-1) if D == 2 else outs[0]
    if len(h_n) == 1:
        return x, h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)
    return x, torch.stack(h_n), torch.stack(c_n)
