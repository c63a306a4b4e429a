"""Pure-PyTorch LSTM and GRU with an explicit time loop: the oracles for tests and baselines in
benchmarks.

They read the parameters of any module with torch.nn.LSTM's or torch.nn.GRU's names (torch's
modules or lstm_fused's) and compute what torch documents, in ``compute_dtype`` (float64 by
default). LSTM (gate order i, f, g, o):

    i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, 4)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)            (then h_t = h_t W_hr^T with a projection)

GRU (gate order r, z, n; b_hn stays inside the reset product, as in torch.nn.GRU):

    r = sigmoid(x_t W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)
    z = sigmoid(x_t W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)
    n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

Shapes are those of torch's modules: input (L, H_in), (L, N, H_in), (N, L, H_in) with
batch_first, or a PackedSequence; LSTM's hx = (h_0, c_0) of (D*num_layers, N, H_out) and
(D*num_layers, N, H), GRU's hx = h_0 of (D*num_layers, N, H). Variable lengths run masked: a
sequence past its end keeps its state, and the reverse direction starts each sequence at its own
last step. Results come back in the input's dtype.
"""
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence


def _lstm_loop(x, lengths, states, weights, reverse):
    """x [T, B, I] padded; lengths [B]; states (h [B, P], c [B, H]); weights (w_ih, w_hh, b_ih,
    b_hh, w_hr). Returns y [T, B, P] (0 past ends) and the final (h, c)."""
    (h, c), (w_ih, w_hh, b_ih, b_hh, w_hr) = states, weights
    T = x.shape[0]
    ys = [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
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
    return _stacked(ys, x, h), (h, c)


def _gru_loop(x, lengths, states, weights, reverse):
    """x [T, B, I] padded; lengths [B]; states (h [B, H],); weights (w_ih, w_hh, b_ih, b_hh).
    Returns y [T, B, H] (0 past ends) and the final (h,)."""
    (h,), (w_ih, w_hh, b_ih, b_hh) = states, weights
    T = x.shape[0]
    ys = [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        gi, gh = x[t] @ w_ih.T, h @ w_hh.T
        if b_ih is not None:
            gi, gh = gi + b_ih, gh + b_hh
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h_new = (1 - z) * n + z * h
        active = (t < lengths).unsqueeze(1)
        h = torch.where(active, h_new, h)
        ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    return _stacked(ys, x, h), (h,)


def _stacked(ys, x, h):
    return torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h.shape[1])


def lstm_reference(module, input, hx=None, compute_dtype=torch.float64):
    """Runs ``module``'s LSTM (its parameters and options) through the explicit loop above;
    returns torch.nn.LSTM's (output, (h_n, c_n)).

    Dropout between layers is not applied (compare in eval mode or with dropout=0).
    """
    P = module.proj_size or module.hidden_size
    weights = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return _run(module, input, hx, (P, module.hidden_size), weights, _lstm_loop, compute_dtype)


def gru_reference(module, input, hx=None, compute_dtype=torch.float64):
    """Runs ``module``'s GRU (its parameters and options) through the explicit loop above;
    returns torch.nn.GRU's (output, h_n).

    Dropout between layers is not applied (compare in eval mode or with dropout=0).
    """
    weights = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    y, (h_n,) = _run(module, input, None if hx is None else (hx,), (module.hidden_size,), weights, _gru_loop,
                     compute_dtype)
    return y, h_n


def _run(module, input, hx, state_sizes, weight_names, loop, compute_dtype):
    """The layers and directions of either module around its ``loop``: hx is a tuple of initial
    states (or None: zeros of ``state_sizes``); returns (output, tuple of final states)."""
    packed = isinstance(input, PackedSequence)
    D = 2 if module.bidirectional else 1
    L = module.num_layers
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
        initial = [x.new_zeros(L * D, B, size) for size in state_sizes]
    else:
        initial = [(s.unsqueeze(1) if unbatched else s).to(compute_dtype) for s in hx]
    finals = []
    layer_in = x
    for layer in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            weights = [getattr(module, name + sfx).to(compute_dtype) if hasattr(module, name + sfx) else None
                       for name in weight_names]
            y, states = loop(layer_in, lengths, [s[layer * D + d] for s in initial], weights, reverse=d == 1)
            outs.append(y)
            finals.append(states)
        layer_in = torch.cat(outs, dim=2) if D == 2 else outs[0]
    states = tuple(torch.stack(s).to(out_dtype) for s in zip(*finals))
    y = layer_in.to(out_dtype)
    if packed:
        order = input.sorted_indices
        rows = [y[t, : int(n)] if order is None else y[t, order[: int(n)]] for t, n in enumerate(input.batch_sizes)]
        data = torch.cat(rows) if rows else y.new_zeros(0, y.shape[2])
        return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), states
    if unbatched:
        return y.squeeze(1), tuple(s.squeeze(1) for s in states)
    if module.batch_first:
        y = y.transpose(0, 1)
    return y, states
