"""Forecasting many related series with an LSTM encoder-decoder (DeepAR / TFT style).

Each synthetic series is a seasonal curve with its own level, amplitude and phase, plus noise.
Two static covariates describe a series: a category (which sets its period) and a real number
(its level). A small network turns them into the encoder's initial state h0/c0, so the encoder
starts out knowing what kind of series it reads. The encoder reads 48 past values; the decoder
then forecasts the next 24 autoregressively, feeding each prediction back in as its next input.

The model is built from torch.nn modules; a deep copy is swapped to lstm_fused by
lstm_fused.convert(), and both train on the same batches so their step times can be compared.

    python3 examples/forecasting.py            # under a minute on 2 cores
    python3 examples/forecasting.py --quick    # a few seconds
"""
import argparse
import copy
import math
import statistics

import torch
from torch import nn

import lstm_fused
from side_by_side import timed, train_side_by_side

ENCODER_LEN, HORIZON, PERIODS = 48, 24, (12, 24)


def make_series(n_series, length, generator):
    """Returns values (n_series, length), category (n_series,) and level (n_series,)."""
    category = torch.randint(len(PERIODS), (n_series,), generator=generator)
    period = torch.tensor(PERIODS)[category].unsqueeze(1).float()
    level = torch.rand(n_series, generator=generator) * 4 - 2
    amplitude = torch.rand(n_series, 1, generator=generator) * 1.5 + 0.5
    phase = torch.rand(n_series, 1, generator=generator) * 2 * math.pi
    t = torch.arange(length).float()
    angle = 2 * math.pi * t / period + phase
    values = level.unsqueeze(1) + amplitude * (torch.sin(angle) + 0.4 * torch.sin(2 * angle))
    values = values + 0.2 * torch.randn(n_series, length, generator=generator)
    return values, category, level


class Forecaster(nn.Module):
    def __init__(self, hidden=48, layers=2):
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.category_embedding = nn.Embedding(len(PERIODS), 8)
        # Static covariates -> initial (h0, c0) of every encoder layer; trained with the rest.
        self.static_to_state = nn.Sequential(nn.Linear(8 + 1, 2 * layers * hidden), nn.Tanh())
        self.encoder = nn.LSTM(1, hidden, layers, batch_first=True)
        self.decoder = nn.LSTM(1, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def encode(self, history, category, level):
        static = torch.cat([self.category_embedding(category), level.unsqueeze(1)], dim=1)
        state = self.static_to_state(static).view(-1, 2, self.layers, self.hidden)
        h0, c0 = state[:, 0].transpose(0, 1).contiguous(), state[:, 1].transpose(0, 1).contiguous()
        _, state = self.encoder(history.unsqueeze(2), (h0, c0))
        return state

    def forward(self, history, target, category, level):
        """Teacher forcing: the decoder sees the true previous value at every horizon step."""
        state = self.encode(history, category, level)
        previous = torch.cat([history[:, -1:], target[:, :-1]], dim=1)
        out, _ = self.decoder(previous.unsqueeze(2), state)
        return self.head(out).squeeze(2)

    @torch.no_grad()
    def decode(self, last_value, state, horizon=HORIZON):
        """Autoregressive: one decoder call per step, the state and the last prediction carried."""
        value, predictions = last_value, []
        for _ in range(horizon):
            out, state = self.decoder(value.unsqueeze(2), state)
            value = self.head(out[:, -1])
            predictions.append(value)
        return torch.cat(predictions, dim=1)


def seasonal_naive(history, category):
    """Repeats each series' last full season over the horizon."""
    rows = []
    for series, c in zip(history, category.tolist()):
        season = series[-PERIODS[c]:]
        rows.append(season.repeat(HORIZON // len(season) + 1)[:HORIZON])
    return torch.stack(rows)



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer, smaller steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 600, quick 60)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 600)
    compare_steps = min(steps, 15 if args.quick else 100)
    batch_size, warmup = 64, 3
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    n_series, length = (128, 160) if args.quick else (512, 240)
    values, category, level = make_series(n_series, length, generator)
    window = ENCODER_LEN + HORIZON
    # Training windows end before the last HORIZON values, which are held out for validation.
    last_train_start = length - HORIZON - window

    reference = Forecaster()
    fused = lstm_fused.convert(copy.deepcopy(reference))  # same weights, fused LSTMs
    models = {"lstm_fused": fused, "torch": reference}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in models.items()}

    def train_step(name, history, target, cat, lvl):
        prediction = models[name](history, target, cat, lvl)
        loss = nn.functional.mse_loss(prediction, target)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return loss.item()

    def next_batch(step):
        rows = torch.randint(n_series, (batch_size,), generator=generator)
        starts = torch.randint(last_train_start + 1, (batch_size,), generator=generator)
        windows = torch.stack([values[r, s:s + window] for r, s in zip(rows, starts)])
        return (windows[:, :ENCODER_LEN], windows[:, ENCODER_LEN:], category[rows], level[rows])

    losses, train_times = train_side_by_side(
        models, train_step, next_batch, steps, compare_steps, warmup,
        log=lambda step, losses: print(f"step {step:4d}  train MSE {losses[-1]:.4f}"))

    # Evaluate and time decoding with identical weights: the state_dicts are interchangeable.
    reference.load_state_dict(fused.state_dict())
    # Validation: forecast the held-out last HORIZON values of every series from the 48 before.
    history, target = values[:, -window:-HORIZON], values[:, -HORIZON:]
    decode_times, val_mse = {name: [] for name in models}, {}
    for _ in range(5):
        for name, model in models.items():
            model.eval()
            with torch.no_grad():
                state = model.encode(history, category, level)
            forecast, seconds = timed(lambda: model.decode(history[:, -1:], state))
            decode_times[name].append(seconds / HORIZON)
            val_mse[name] = nn.functional.mse_loss(forecast, target).item()
    naive_mse = nn.functional.mse_loss(seasonal_naive(history, category), target).item()
    print(f"validation MSE, autoregressive over {HORIZON} steps: lstm_fused {val_mse['lstm_fused']:.4f}, "
          f"torch.nn.LSTM {val_mse['torch']:.4f}, seasonal naive {naive_mse:.4f}")

    for name in models:
        print(f"{name:>14}: {statistics.median(train_times[name]) * 1e3:7.2f} ms per training step "
              f"(batch {batch_size}), {statistics.median(decode_times[name]) * 1e3:6.3f} ms per "
              f"decode step (batch {n_series})")
    return {"first_loss": losses[0], "last_loss": statistics.mean(losses[-10:]),
            "val_mse": val_mse["lstm_fused"], "naive_mse": naive_mse,
            "train_step_s": {n: statistics.median(t) for n, t in train_times.items()},
            "decode_step_s": {n: statistics.median(t) for n, t in decode_times.items()}}


if __name__ == "__main__":
    main()
