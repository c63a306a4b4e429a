"""Classifying variable-length sequences with a bidirectional LSTM over a PackedSequence.

Each example is a random string over the symbols A, B, C, D, of length 5 to 60; its label says
whether it holds more A's than B's (ties are not generated). No local pattern gives the answer away:
the model has to count over the whole sequence. Sequences are padded, then packed with
pack_padded_sequence(..., enforce_sorted=False), so the LSTM never reads the padding and the batch
needs no sorting. Model: embedding -> bidirectional LSTM -> the final hidden states of both
directions, concatenated -> linear.

The model is built from torch.nn modules; a deep copy is swapped to lstm_fused by
lstm_fused.convert(), and both train on the same batches so their step times can be compared.

    python3 examples/classify.py            # under a minute on 2 cores
    python3 examples/classify.py --quick    # a few seconds
"""
import argparse
import copy
import statistics

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import lstm_fused
from side_by_side import train_side_by_side

PAD, A, B, N_SYMBOLS = 0, 1, 2, 4  # symbols are 1..4; 0 pads


def make_batch(batch_size, generator, min_len=5, max_len=60):
    sequences, labels = [], []
    while len(sequences) < batch_size:
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        seq = torch.randint(1, N_SYMBOLS + 1, (length,), generator=generator)
        n_a, n_b = int((seq == A).sum()), int((seq == B).sum())
        if n_a != n_b:
            sequences.append(seq)
            labels.append(int(n_a > n_b))
    lengths = torch.tensor([len(s) for s in sequences])
    return pad_sequence(sequences, batch_first=True, padding_value=PAD), lengths, torch.tensor(labels)


class Classifier(nn.Module):
    def __init__(self, embed=16, hidden=64):
        super().__init__()
        self.embedding = nn.Embedding(N_SYMBOLS + 1, embed, padding_idx=PAD)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 2)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        # h_n is (directions, batch, hidden), already back in the batch's original order; each
        # direction's final state comes from the sequence's own last (or first) real token.
        return self.out(torch.cat([h_n[0], h_n[1]], dim=1))



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 800, quick 80)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (80 if args.quick else 800)
    compare_steps = min(steps, 15 if args.quick else 100)
    batch_size, warmup = 64, 3
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    reference = Classifier()
    fused = lstm_fused.convert(copy.deepcopy(reference))  # same weights, fused LSTM
    models = {"lstm_fused": fused, "torch": reference}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in models.items()}

    def train_step(name, tokens, lengths, labels):
        loss = nn.functional.cross_entropy(models[name](tokens, lengths), labels)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return loss.item()

    def next_batch(step):
        return make_batch(batch_size, generator)

    losses, train_times = train_side_by_side(
        models, train_step, next_batch, steps, compare_steps, warmup,
        log=lambda step, losses: print(f"step {step:4d}  loss {statistics.mean(losses[-20:]):.4f} (mean of the last 20 steps)"))

    tokens, lengths, labels = make_batch(2000, generator)
    with torch.no_grad():
        accuracy = (fused.eval()(tokens, lengths).argmax(1) == labels).float().mean().item()
    print(f"held-out accuracy {accuracy:.3f} (chance 0.5)")
    for name in models:
        print(f"{name:>14}: {statistics.median(train_times[name]) * 1e3:7.2f} ms per training step "
              f"(batch {batch_size}, lengths 5-60, packed)")
    return {"first_loss": losses[0], "last_loss": statistics.mean(losses[-10:]),
            "accuracy": accuracy,
            "train_step_s": {n: statistics.median(t) for n, t in train_times.items()}}


if __name__ == "__main__":
    main()
