"""Sequence to sequence: an LSTM encoder-decoder that learns to reverse strings of digits.

The encoder reads the digits; its final (h, c) is the decoder's initial state, the only thing
the decoder knows about the input (no attention). In training the decoder is fed the true
previous output digit at every step (teacher forcing), so it runs over the whole target in one
call. At evaluation it decodes greedily, one step at a time: each step's most likely digit is the
next step's input, and the state is carried. The score is exact match: every digit right.

The decoder is an nn.LSTM, which trains over the whole target in one call and decodes with one
time step per call; --cell builds it as an nn.LSTMCell instead, stepped in training too
(convert() swaps either for lstm_fused's).

The model is built from torch.nn modules; a deep copy is swapped to lstm_fused by
lstm_fused.convert(), and both train on the same batches so their step times can be compared.

    python3 examples/seq2seq.py            # under a minute on 2 cores
    python3 examples/seq2seq.py --quick    # a few seconds
"""
import argparse
import copy
import statistics

import torch
from torch import nn

import lstm_fused
from side_by_side import timed, train_side_by_side

LENGTH, START = 8, 10  # tokens 0-9 are digits; 10 starts the decoder off


def make_batch(batch_size, generator):
    source = torch.randint(10, (batch_size, LENGTH), generator=generator)
    return source, source.flip(1)


class Seq2Seq(nn.Module):
    def __init__(self, hidden=128, cell=False):
        super().__init__()
        self.cell = cell
        self.embedding = nn.Embedding(11, 16)  # shared by encoder and decoder
        self.encoder = nn.LSTM(16, hidden, batch_first=True)
        self.decoder = nn.LSTMCell(16, hidden) if cell else nn.LSTM(16, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 10)

    def encode(self, source):
        _, (h, c) = self.encoder(self.embedding(source))
        return h[0], c[0]  # (batch, hidden) each: one layer, one direction

    def decoder_step(self, token, state):
        """One decoder step for a (batch,) token; state is (h, c), each (batch, hidden)."""
        x = self.embedding(token)
        if self.cell:
            h, c = self.decoder(x, state)
        else:  # nn.LSTM wants a time axis and a layer axis
            _, (h, c) = self.decoder(x.unsqueeze(1), (state[0].unsqueeze(0), state[1].unsqueeze(0)))
            h, c = h[0], c[0]
        return self.out(h), (h, c)

    def forward(self, source, target):
        """Teacher forcing: logits (batch, LENGTH, 10) given the true previous digits."""
        state = self.encode(source)
        previous = torch.cat([torch.full_like(target[:, :1], START), target[:, :-1]], dim=1)
        if self.cell:
            logits = []
            for t in range(LENGTH):
                step_logits, state = self.decoder_step(previous[:, t], state)
                logits.append(step_logits)
            return torch.stack(logits, dim=1)
        h, c = state
        y, _ = self.decoder(self.embedding(previous), (h.unsqueeze(0), c.unsqueeze(0)))
        return self.out(y)

    @torch.no_grad()
    def greedy(self, state, batch_size):
        token, digits = torch.full((batch_size,), START), []
        for _ in range(LENGTH):
            logits, state = self.decoder_step(token, state)
            token = logits.argmax(1)
            digits.append(token)
        return torch.stack(digits, dim=1)



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1500, quick 60)")
    parser.add_argument("--cell", action="store_true", help="decoder as nn.LSTMCell instead of nn.LSTM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 1500)
    compare_steps = min(steps, 15 if args.quick else 100)
    batch_size, warmup = 128, 3
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    reference = Seq2Seq(cell=args.cell)
    fused = lstm_fused.convert(copy.deepcopy(reference))  # same weights, fused LSTMs
    models = {"lstm_fused": fused, "torch": reference}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in models.items()}

    def train_step(name, source, target):
        logits = models[name](source, target)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 10), target.reshape(-1))
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return loss.item()

    def next_batch(step):
        return make_batch(batch_size, generator)

    losses, train_times = train_side_by_side(
        models, train_step, next_batch, steps, compare_steps, warmup,
        log=lambda step, losses: print(f"step {step:4d}  loss {statistics.mean(losses[-20:]):.4f} (mean of the last 20 steps)"))

    # Evaluate and time greedy decoding with identical weights: the state_dicts are interchangeable.
    reference.load_state_dict(fused.state_dict())
    source, target = make_batch(1000, generator)
    decode_times, exact = {name: [] for name in models}, {}
    for _ in range(5):
        for name, model in models.items():
            model.eval()
            with torch.no_grad():
                state = model.encode(source)
            digits, seconds = timed(lambda: model.greedy(state, len(source)))
            decode_times[name].append(seconds / LENGTH)
            exact[name] = (digits == target).all(1).float().mean().item()
    print(f"exact match, greedy decoding of {len(source)} held-out strings: "
          f"lstm_fused {exact['lstm_fused']:.3f}, torch {exact['torch']:.3f}")
    print("example:", "".join(map(str, source[0].tolist())), "->", "".join(map(str, digits[0].tolist())))
    for name in models:
        print(f"{name:>14}: {statistics.median(train_times[name]) * 1e3:7.2f} ms per training step "
              f"(batch {batch_size}), {statistics.median(decode_times[name]) * 1e3:6.3f} ms per "
              f"decode step (batch {len(source)})")
    return {"first_loss": losses[0], "last_loss": statistics.mean(losses[-10:]),
            "exact_match": exact["lstm_fused"],
            "train_step_s": {n: statistics.median(t) for n, t in train_times.items()},
            "decode_step_s": {n: statistics.median(t) for n, t in decode_times.items()}}


if __name__ == "__main__":
    main()
