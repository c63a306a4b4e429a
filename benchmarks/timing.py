"""Interleaved, synchronized timing of several contenders on one case.

Each contender is a zero-argument callable doing one timed unit (one forward, one forward+backward,
or a whole streaming loop). After a warm-up, every repetition times each contender once, in an
order that changes between repetitions (so drifts in clock speed or cache state, and the
after-effects of one contender's call on the next, hit all alike).
A sample is `inner` back-to-back calls (enough to last `min_sample_s`) divided by `inner`; the
number of repetitions is capped by a time budget. On a shared machine a burst of other work can
disturb a few samples: while any contender's spread (interquartile range / median) stays above
`max_spread`, more rounds run, up to `noisy_budget_factor` times the budget; a result still that
spread is flagged noisy by the caller. A call longer than `long_call_s` is timed once more in
warm-up, and that time is its first sample (not interleaved with the other contenders). On CUDA
a sample is bracketed by CUDA events after a synchronize; on the CPU by time.perf_counter. Never
unsynchronized.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class TimingConfig:
    budget_s: float = 2.0  # time for all timed repetitions of all contenders of one case
    warmup_s: float = 0.2  # extra warm-up time per contender, after the first two calls
    min_reps: int = 5
    max_reps: int = 50
    min_sample_s: float = 2e-3  # a sample lasts at least this long (short calls are batched)
    max_spread: float = 0.2  # (q75 - q25) / median above which more rounds are run
    noisy_budget_factor: float = 3.0
    # A call at least this long is its own warm-up: the second call is the estimate and the first
    # sample, and one round fewer runs (the wide CPU grid's largest training case is about a
    # minute per call: six calls per contender took 12 minutes; four take 8).
    long_call_s: float = 2.0


@dataclass
class Timings:
    per_call_s: dict[str, list[float]] = field(default_factory=dict)  # every repetition
    inner: dict[str, int] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.per_call_s[name])

    def best(self, name: str) -> float:
        return min(self.per_call_s[name])

    def spread(self, name: str) -> float:
        s = self.per_call_s[name]
        if len(s) < 4:
            return 0.0
        q = statistics.quantiles(s, n=4)
        return (q[2] - q[0]) / statistics.median(s)


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], object], inner: int) -> float:
        """Seconds for `inner` back-to-back calls of fn, all work finished."""
        if self.cuda:
            torch.cuda.synchronize()
            self.start.record()
            for _ in range(inner):
                fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return time.perf_counter() - t0


def _order(names: list[str], r: int) -> list[str]:
    """Round r's order: a rotation of names, reversed on odd rounds. Over 2n rounds each contender
    runs in each position and after each other contender equally often (for 3 contenders these are
    all 6 orders). Plain alternation of one order and its reverse kept the middle one of three in
    the middle, always right after another contender's call: an A/A test of two identical calls
    there measured the middle one 3-7% slower (2 threads)."""
    k = (r // 2) % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def measure(fns: dict[str, Callable[[], object]], device: torch.device, cfg: TimingConfig) -> Timings:
    clock = _Clock(device)
    names = list(fns)
    estimate = {}
    first = {n: [] for n in names}
    for name in names:
        fn = fns[name]
        clock.time(fn, 1)  # first call: lazy init, packing, JIT compiles
        t = clock.time(fn, 1)
        if t >= cfg.long_call_s:
            first[name].append(t)
        else:
            calls = max(1, min(int(cfg.warmup_s / max(t, 1e-9)), 200))
            t = clock.time(fn, calls) / calls
        estimate[name] = max(t, 1e-9)

    inner = {n: max(1, math.ceil(cfg.min_sample_s / estimate[n])) for n in names}
    per_round = sum(inner[n] * estimate[n] for n in names)
    reps = int(min(max(cfg.budget_s / per_round, cfg.min_reps), cfg.max_reps))
    if all(first[n] for n in names):
        reps = max(1, reps - 1)

    out = Timings(per_call_s=first, inner=inner)
    t0 = time.perf_counter()
    r = 0
    while True:
        order = _order(names, r)
        for name in order:
            out.per_call_s[name].append(clock.time(fns[name], inner[name]) / inner[name])
        r += 1
        if r < reps:
            continue
        noisy = any(out.spread(n) > cfg.max_spread for n in names)
        elapsed = time.perf_counter() - t0
        if not noisy or r >= 2 * cfg.max_reps or elapsed > cfg.noisy_budget_factor * cfg.budget_s:
            return out
