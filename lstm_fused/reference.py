"""A pure-PyTorch LSTM with an explicit time loop: the oracle for tests and a baseline in benchmarks.

It reads the parameters of any module with torch.nn.LSTM's names (torch.nn.LSTM or lstm_fused.LSTM)
and computes what torch.nn.LSTM documents, in ``compute_dtype`` (float64 by default):

    i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, 4)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)            (then h_t = h_t W_hr^T with a projection)

Shapes are those of torch.nn.LSTM: input (L, H_in), (L, N, H_in), (N, L, H_in) with batch_first,
or a PackedSequence; hx = (h_0, c_0) of (D*num_layers, N, H_out) and (D*num_layers, N, H).
Variable lengths run masked: a sequence past its end keeps its state, and the reverse direction
starts each sequence at its own last step. Results come back in the input's dtype.
"""
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence


def _cell_loop(x, lengths, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """x [T, B, I] padded; lengths [B]; h [B, P], c [B, H]. Returns y [T, B, P] (0 past ends), h, c."""
    T = x.shape[0]
    ys = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        gates = x[t] @ w_ih.T + h @ w_hh.T
        if b_ih is not None:
            gates = gates + b_ih + b_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        active = (t < lengths).unsqueeze(1)
        h = torch.where(active, h_new, h)
        c = torch.where(active, c_new, c)
        ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    y = torch.stack(ys) if T else x.new_zeros(0, x.shape[1], h.shape[1])
    return y, h, c


def lstm_reference(module, input, hx=None, compute_dtype=torch.float64):
    """Runs ``module``'s LSTM (its parameters and options) through the explicit loop above.

    Dropout between layers is not applied (compare in eval mode or with dropout=0).
    """
    packed = isinstance(input, PackedSequence)
    D = 2 if module.bidirectional else 1
    L = module.num_layers
    H = module.hidden_size
    P = module.proj_size or H
    if packed:
        out_dtype = input.data.dtype
        x, lengths = pad_packed_sequence(input)  # [T, B, I] in sorted-back (original) order
        unbatched = False
    else:
        out_dtype = input.dtype
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if module.batch_first else input)
        lengths = torch.full((x.shape[1],), x.shape[0], dtype=torch.long)
    B = x.shape[1]
    x = x.to(compute_dtype)
    lengths = lengths.to(x.device)
    if hx is None:
        h0 = x.new_zeros(L * D, B, P)
        c0 = x.new_zeros(L * D, B, H)
    else:
        h0, c0 = (s.unsqueeze(1) if unbatched else s for s in hx)
        h0, c0 = h0.to(compute_dtype), c0.to(compute_dtype)
    h_n, c_n = [], []
    layer_in = x
    for layer in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            get = lambda name: (getattr(module, name + sfx).to(compute_dtype) if hasattr(module, name + sfx) else None)
            y, h, c = _cell_loop(layer_in, lengths, h0[layer * D + d], c0[layer * D + d], get("weight_ih"),
                                 get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr"), reverse=d == 1)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_in = torch.cat(outs, dim=2) if D == 2 else outs[0]
    h_n = torch.stack(h_n).to(out_dtype)
    c_n = torch.stack(c_n).to(out_dtype)
    y = layer_in.to(out_dtype)
    if packed:
        order = input.sorted_indices
        rows = [y[t, : int(n)] if order is None else y[t, order[: int(n)]] for t, n in enumerate(input.batch_sizes)]
        data = torch.cat(rows) if rows else y.new_zeros(0, y.shape[2])
        return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (h_n, c_n)
    if unbatched:
        return y.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if module.batch_first:
        y = y.transpose(0, 1)
    return y, (h_n, c_n)
