"""A character-level language model on a short story, trained with truncated BPTT, then sampled.

The text (examples/data/lighthouse.txt, about 4 KB) is cut into parallel streams, one per batch
row. Training walks along the streams in chunks; the LSTM state at the end of one chunk is the
initial state of the next, detached so gradients stop at the chunk boundary (truncated
backpropagation through time). Sampling then feeds one character at a time (a T=1 call), carries
the state from call to call and draws the next character from the softmax at a temperature.

The model is built from torch.nn modules; a deep copy is swapped to lstm_fused by
lstm_fused.convert(), and both train on the same chunks so their step times can be compared.

    python3 examples/char_generation.py            # under a minute on 2 cores
    python3 examples/char_generation.py --quick    # a few seconds
"""
import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

import lstm_fused
from side_by_side import train_side_by_side

TEXT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lighthouse.txt")


class CharModel(nn.Module):
    def __init__(self, vocab_size, hidden=256, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 32)
        self.lstm = nn.LSTM(32, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, chars, state=None):
        y, state = self.lstm(self.embedding(chars), state)
        return self.out(y), state


@torch.no_grad()
def sample(model, prompt, length, temperature, generator):
    """Returns a list of `length` character ids drawn one at a time after `prompt` (a 1-D tensor)."""
    logits, state = model(prompt.unsqueeze(0))  # read the whole prompt in one call
    chars, step_times = [], []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=0)
        next_char = torch.multinomial(probs, 1, generator=generator)
        chars.append(int(next_char))
        start = time.perf_counter()
        logits, state = model(next_char.view(1, 1), state)  # one character, state carried
        step_times.append(time.perf_counter() - start)
    return chars, step_times



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps, short sample")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 400, quick 40)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 400)
    compare_steps = min(steps, 15 if args.quick else 100)
    n_streams, chunk, warmup = 16, 32, 3
    torch.manual_seed(args.seed)

    with open(TEXT_PATH, encoding="utf-8") as f:
        text = f.read()
    vocab = sorted(set(text))
    char_to_id = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([char_to_id[c] for c in text])
    stream_len = len(data) // n_streams
    streams = data[:n_streams * stream_len].view(n_streams, stream_len)  # row i: i-th slice of text
    chunk_starts = list(range(0, stream_len - chunk, chunk))  # each has a next character to predict

    reference = CharModel(len(vocab))
    fused = lstm_fused.convert(copy.deepcopy(reference))  # same weights, fused LSTM
    models = {"lstm_fused": fused, "torch": reference}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in models.items()}
    states = {name: None for name in models}

    def train_step(name, inputs, targets):
        logits, state = models[name](inputs, states[name])
        # Carry the state into the next chunk, but not the graph that produced it.
        states[name] = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1))
        optimizers[name].zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(models[name].parameters(), 1.0)
        optimizers[name].step()
        return loss.item()

    def next_batch(step):
        start = chunk_starts[step % len(chunk_starts)]
        if start == 0:  # back at the start of the text: the carried state no longer applies
            states.update({name: None for name in models})
        inputs = streams[:, start:start + chunk]
        targets = streams[:, start + 1:start + chunk + 1]
        return inputs, targets

    losses, train_times = train_side_by_side(
        models, train_step, next_batch, steps, compare_steps, warmup,
        log=lambda step, losses: print(f"step {step:4d}  loss {statistics.mean(losses[-10:]):.3f} nats/char (mean of the last 10)"))

    # Sample from both with identical weights (the state_dicts are interchangeable) and the same
    # random draws, so the two texts should agree while the per-character times are compared.
    reference.load_state_dict(fused.state_dict())
    prompt = torch.tensor([char_to_id[c] for c in "The keeper"])
    length = 60 if args.quick else 300
    samples, sample_times = {}, {}
    for name, model in models.items():
        model.eval()
        draws = torch.Generator().manual_seed(args.seed)  # the same draws for both models
        chars, times = sample(model, prompt, length, args.temperature, draws)
        samples[name] = "The keeper" + "".join(vocab[i] for i in chars)
        sample_times[name] = statistics.median(times[warmup:])
    print(f"sample at temperature {args.temperature}:\n{samples['lstm_fused']}\n")
    print("the torch.nn.LSTM sample is", "the same" if samples["torch"] == samples["lstm_fused"]
          else "different (rounding differences can flip a draw)")
    for name in models:
        print(f"{name:>14}: {statistics.median(train_times[name]) * 1e3:7.2f} ms per training step "
              f"(batch {n_streams} x {chunk} chars), {sample_times[name] * 1e3:6.3f} ms per sampled char")
    return {"first_loss": losses[0], "last_loss": statistics.mean(losses[-10:]),
            "sample": samples["lstm_fused"],
            "train_step_s": {n: statistics.median(t) for n, t in train_times.items()},
            "sample_char_s": sample_times}


if __name__ == "__main__":
    main()
