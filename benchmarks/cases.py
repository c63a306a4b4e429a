"""The benchmark cases: one record per timed configuration, and the grids that list them.

Two kinds of record: a Case times one LSTM (or GRU) layer stack on a shape; a ModelCase times a
whole model step (benchmarks/models.py) with torch's modules against the same model after
lstm_fused.convert. The CPU grids open with the target table (each row with its required speedup),
then a spread of other shapes, more inference shapes for the int8 contenders, then the GRU's rows
and the model rows; the GPU grids sweep
B x H x T x dtype x mode.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import Optional

DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


@dataclass(frozen=True)
class Case:
    """One timed configuration. Input is time-major [T, B, I] (batch_first=False) unless packed."""

    B: int
    T: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    dtype: str = "float32"
    training: bool = False
    # Packed input: one length per sequence (len == B, each <= T); None for dense input.
    lengths: Optional[tuple[int, ...]] = None
    # > 0: time a loop of this many one-step calls (T must be 1) with (h, c) carried between calls.
    stream_calls: int = 0
    # Streaming only: run the calls under torch.no_grad() instead of torch.inference_mode().
    no_grad: bool = False
    # CPU: torch.set_num_threads for this case; None keeps torch's default.
    threads: Optional[int] = None
    # The speedup this row must reach, e.g. ">=2x" ("" when the row is only part of a spread).
    target: str = ""
    # GPU: also time FlashRNN (when importable) on this case.
    flashrnn: bool = False
    # Also time lstm_fused.reference (pure-PyTorch time loop) as a baseline: tiny cases only.
    reference: bool = False
    # "lstm", or "gru": lstm_fused.GRU against torch.nn.GRU (no proj; the state is h alone).
    cell: str = "lstm"

    @property
    def kind(self) -> str:
        if self.stream_calls:
            return "stream"
        if self.lengths is not None:
            return "packed"
        return "dense"

    @property
    def P(self) -> int:
        """Output (projected) hidden size."""
        return self.proj or self.H

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def rows(self) -> int:
        """Active (t, b) rows per layer and direction: T*B dense, sum(lengths) packed, calls*B streaming."""
        if self.lengths is not None:
            return sum(self.lengths)
        if self.stream_calls:
            return self.stream_calls * self.B
        return self.T * self.B

    @property
    def label(self) -> str:
        parts = ([] if self.cell == "lstm" else [self.cell]) + [self.kind]
        if self.stream_calls:
            parts.append(f"{self.stream_calls}x1step")
        parts.append(f"B{self.B}")
        if self.lengths is not None:
            parts.append(f"len{min(self.lengths)}-{max(self.lengths)}")
        elif not self.stream_calls:
            parts.append(f"T{self.T}")
        parts += [f"I{self.I}", f"H{self.H}"]
        if self.proj:
            parts.append(f"P{self.proj}")
        if self.layers > 1:
            parts.append(f"L{self.layers}")
        if self.bidirectional:
            parts.append("bi")
        parts.append(DTYPE_SHORT.get(self.dtype, self.dtype))
        parts.append("train" if self.training else "infer")
        if self.no_grad:
            parts.append("no_grad")
        return " ".join(parts)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["lengths"] = list(self.lengths) if self.lengths is not None else None
        d.update(label=self.label, kind=self.kind, rows=self.rows)
        return d


MODEL_NAMES = ("forecast", "seq2seq", "tagger")


@dataclass(frozen=True)
class ModelCase:
    """One whole-model step (benchmarks/models.py): the model with torch's modules against a deep copy
    converted with lstm_fused.convert, same weights, same batch on every call. fp32 only."""

    model: str  # one of MODEL_NAMES
    B: int
    H: int
    layers: int = 1
    training: bool = False
    # forecast: the longest encoder length (lengths are drawn in [0, max_len], some 0);
    # seq2seq: the source length; tagger: the longest sentence.
    max_len: int = 0
    # tagger: the shortest sentence (lengths spread evenly over [min_len, max_len]).
    min_len: int = 0
    # forecast: the decoder's horizon; seq2seq: greedy decoding steps.
    steps: int = 0
    # seq2seq: source and target vocabulary; tagger: word vocabulary.
    vocab: int = 0
    threads: Optional[int] = None
    target: str = ""
    dtype: str = "float32"
    # seq2seq: "lstm" (nn.LSTM encoder, nn.LSTMCell decoder) or "gru" (nn.GRU, nn.GRUCell).
    cell: str = "lstm"

    kind = "model"

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; one of {MODEL_NAMES}")

    @property
    def label(self) -> str:
        if self.model == "forecast":
            return (f"model forecast-{'train' if self.training else 'infer'} B{self.B} H{self.H} "
                    f"L{self.layers} enc<={self.max_len} dec{self.steps}")
        if self.model == "seq2seq":
            cell = "" if self.cell == "lstm" else f" {self.cell}"
            return (f"model seq2seq-greedy{cell} B{self.B} H{self.H} src{self.max_len} V{self.vocab} "
                    f"{self.steps}steps")
        return (f"model tagger-{'train' if self.training else 'infer'} B{self.B} H{self.H} L{self.layers} bi "
                f"len{self.min_len}-{self.max_len}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(label=self.label, kind=self.kind)
        return d


def packed_lengths(batch: int, lo: int, hi: int, seed: int = 0) -> tuple[int, ...]:
    """Lengths evenly spread over [lo, hi], shuffled (so the unsorted PackedSequence path runs too)."""
    if batch == 1:
        return (hi,)
    lengths = [round(hi - (hi - lo) * i / (batch - 1)) for i in range(batch)]
    random.Random(seed).shuffle(lengths)
    return tuple(lengths)


# ----------------------------------------------------------------------------------------- CPU
def cpu_target_rows() -> list[Case]:
    """The CPU target table: the shapes lstm_fused must win on, each with its required speedup."""
    return [
        Case(B=1, T=256, I=128, H=128, target=">=2x", reference=True),
        Case(B=1, T=1, I=64, H=128, stream_calls=200, target=">=5x"),
        Case(B=32, T=100, I=256, H=256, lengths=packed_lengths(32, 30, 100), target=">=2x"),
        Case(B=16, T=100, I=256, H=256, proj=128, target=">=2x"),
        Case(B=8, T=100, I=256, H=256, layers=2, bidirectional=True, target=">=1.2x"),
        Case(B=32, T=100, I=256, H=256, target=">=0.9x"),
        Case(B=32, T=100, I=256, H=256, training=True, target=">=1.0x"),
        Case(B=32, T=100, I=256, H=256, dtype="bfloat16", target=">=0.9x"),
    ]


def cpu_spread() -> list[Case]:
    """A small spread of other shapes (the 'no shape more than 1.5x slower' rule), cheap on 2 cores."""
    return [
        Case(B=1, T=1, I=256, H=256),
        Case(B=1, T=1, I=64, H=128, stream_calls=200, no_grad=True),
        Case(B=4, T=64, I=64, H=64),
        Case(B=4, T=8, I=128, H=128),
        Case(B=8, T=1, I=512, H=512),
        Case(B=8, T=128, I=512, H=512),
        Case(B=64, T=50, I=128, H=128),
        Case(B=128, T=32, I=256, H=256),
        Case(B=4, T=256, I=32, H=32, training=True),
        Case(B=8, T=64, I=512, H=512, training=True),
        Case(B=16, T=32, I=256, H=256, proj=64, lengths=packed_lengths(16, 8, 32), training=True),
    ]


def cpu_serving_rows() -> list[Case]:
    """More fp32 inference shapes for the int8 contenders (lstm_fused.quantize_dynamic against ONNX
    Runtime's and torch.ao's int8), which every fp32 inference row above carries too: a large
    FLOP-bound batch, and small batches at the same sizes."""
    return [
        Case(B=64, T=50, I=512, H=512),
        Case(B=8, T=50, I=512, H=512),
        Case(B=4, T=50, I=256, H=256),
        Case(B=1, T=50, I=256, H=256),
    ]


def cpu_model_rows() -> list[ModelCase]:
    """Whole model steps (benchmarks/models.py), the two greedy-decode rows with their targets."""
    return [
        ModelCase("forecast", B=64, H=32, layers=2, training=True, max_len=48, steps=24),
        ModelCase("forecast", B=64, H=64, layers=2, training=True, max_len=48, steps=24),
        ModelCase("seq2seq", B=1, H=128, max_len=20, steps=100, vocab=1000, target=">=2.5x"),
        ModelCase("seq2seq", B=32, H=256, max_len=20, steps=100, vocab=1000, target=">=1.3x"),
        ModelCase("tagger", B=32, H=128, layers=1, min_len=5, max_len=40, vocab=5000),
        ModelCase("tagger", B=32, H=256, layers=2, min_len=5, max_len=40, vocab=5000),
        ModelCase("tagger", B=32, H=128, layers=1, min_len=5, max_len=40, vocab=5000, training=True),
        ModelCase("tagger", B=32, H=256, layers=2, min_len=5, max_len=40, vocab=5000, training=True),
    ]


def cpu_gru_rows() -> list:
    """The GRU's rows: the LSTM's target shapes as lstm_fused.GRU against torch.nn.GRU (no
    projection: torch's GRU has none), bf16 beside them, and greedy decoding with a GRUCell."""
    return [
        Case(cell="gru", B=1, T=256, I=128, H=128, target=">=3x"),
        Case(cell="gru", B=1, T=1, I=64, H=128, stream_calls=200, target=">=3x"),
        Case(cell="gru", B=32, T=100, I=256, H=256, lengths=packed_lengths(32, 30, 100), target=">=1.8x"),
        Case(cell="gru", B=8, T=100, I=256, H=256, layers=2, bidirectional=True, target=">=1.1x"),
        Case(cell="gru", B=32, T=100, I=256, H=256, target=">=0.95x"),
        Case(cell="gru", B=32, T=100, I=256, H=256, training=True, target=">=1.0x"),
        Case(cell="gru", B=32, T=100, I=256, H=256, dtype="bfloat16"),
        ModelCase("seq2seq", cell="gru", B=1, H=128, max_len=20, steps=100, vocab=1000, target=">=2.5x"),
        ModelCase("seq2seq", cell="gru", B=32, H=256, max_len=20, steps=100, vocab=1000, target=">=1.3x"),
    ]


def with_threads(cases: list, thread_counts: list[Optional[int]]) -> list:
    return [dataclasses.replace(c, threads=t) for t in thread_counts for c in cases]


def cpu_default(thread_counts: list[Optional[int]]) -> list:
    return with_threads(cpu_target_rows() + cpu_spread() + cpu_serving_rows() + cpu_gru_rows() + cpu_model_rows(),
                        thread_counts)


def cpu_quick() -> list:
    """Tiny cases, one of each model too, for a smoke test (< 60 s on 2 cores with everything else)."""
    return [
        Case(B=1, T=32, I=32, H=32, reference=True),
        Case(B=1, T=1, I=16, H=32, stream_calls=20),
        Case(B=4, T=16, I=32, H=32, lengths=packed_lengths(4, 5, 16)),
        Case(B=4, T=16, I=32, H=48, proj=16),
        Case(B=2, T=16, I=32, H=32, layers=2, bidirectional=True),
        Case(B=4, T=16, I=32, H=32, training=True),
        Case(B=4, T=16, I=32, H=32, dtype="bfloat16"),
        Case(cell="gru", B=4, T=16, I=32, H=32, lengths=packed_lengths(4, 5, 16), training=True),
        Case(cell="gru", B=1, T=1, I=16, H=32, stream_calls=20),
        ModelCase("seq2seq", cell="gru", B=2, H=32, max_len=6, steps=10, vocab=50),
        ModelCase("forecast", B=8, H=16, layers=2, training=True, max_len=12, steps=4),
        ModelCase("seq2seq", B=2, H=32, max_len=6, steps=10, vocab=50),
        ModelCase("tagger", B=4, H=32, layers=1, min_len=3, max_len=10, vocab=100),
        ModelCase("tagger", B=4, H=32, layers=2, min_len=3, max_len=10, vocab=100, training=True),
    ]


def cpu_full(thread_counts: list[Optional[int]]) -> list:
    """The default rows plus the wide grid (B 1..128, H 32..1024, T 1..1024, inference and training)
    and more model sizes."""
    wide = [
        Case(B=b, T=t, I=h, H=h, training=tr)
        for tr, b, h, t in itertools.product(
            (False, True), (1, 8, 32, 128), (32, 128, 512, 1024), (1, 32, 256, 1024)
        )
    ]
    models = [
        ModelCase("forecast", B=128, H=64, layers=2, training=True, max_len=48, steps=12),
        ModelCase("forecast", B=64, H=128, layers=2, training=True, max_len=96, steps=24),
        ModelCase("seq2seq", B=1, H=256, max_len=20, steps=100, vocab=1000),
        ModelCase("seq2seq", B=8, H=128, max_len=20, steps=100, vocab=1000),
        ModelCase("seq2seq", B=32, H=512, max_len=20, steps=100, vocab=1000),
        ModelCase("tagger", B=32, H=256, layers=1, min_len=5, max_len=40, vocab=5000),
        ModelCase("tagger", B=8, H=128, layers=2, min_len=5, max_len=40, vocab=5000, training=True),
    ]
    return cpu_default(thread_counts) + with_threads(wide + models, thread_counts[:1])


# ----------------------------------------------------------------------------------------- GPU
GPU_DTYPES = ("float32", "float16", "bfloat16")


def _gpu_grid(bs, hs, ts, dtypes=GPU_DTYPES, modes=(False, True)) -> list[Case]:
    return [
        Case(B=b, T=t, I=h, H=h, dtype=dt, training=tr)
        for dt, tr, h, b, t in itertools.product(dtypes, modes, hs, bs, ts)
    ]


def _gpu_extras() -> list[Case]:
    """Single-step latency, the options (packed, proj, bidirectional) and FlashRNN's comparison points."""
    latency = [Case(B=16, T=1, I=h, H=h, dtype=dt) for dt in GPU_DTYPES for h in (256, 512, 1024)]
    options = [
        Case(B=1, T=1, I=256, H=256, stream_calls=200),
        Case(B=32, T=100, I=256, H=256, lengths=packed_lengths(32, 30, 100)),
        Case(B=32, T=100, I=256, H=256, lengths=packed_lengths(32, 30, 100), training=True),
        Case(B=16, T=256, I=1024, H=1024, proj=256, dtype="bfloat16"),
        Case(B=8, T=256, I=512, H=512, layers=2, bidirectional=True, dtype="float16"),
        Case(B=8, T=256, I=512, H=512, layers=2, bidirectional=True, dtype="float16", training=True),
    ]
    # FlashRNN JIT-compiles one CUDA module per (B, H, dtype): keep its default points few.
    flash = [
        Case(B=16, T=1024, I=768, H=768, dtype=dt, training=tr, flashrnn=True)
        for dt in ("float16", "bfloat16")
        for tr in (False, True)
    ]
    return latency + options + flash


def gpu_default() -> list[Case]:
    """Representative subset of the GPU grid (gpu_full), about 5 minutes on an H100."""
    grid = _gpu_grid(bs=(1, 8, 32), hs=(256, 512, 1024), ts=(1, 1024))
    others = _gpu_grid(bs=(128, 512), hs=(512,), ts=(128,), dtypes=("bfloat16",))
    others += _gpu_grid(bs=(8,), hs=(128, 768, 2048), ts=(128,), dtypes=("bfloat16",))
    return grid + others + _gpu_extras()


def gpu_full() -> list[Case]:
    """The whole GPU grid: B {1,8,32,128,512} x H {128..2048} x T {1,128,1024} x dtypes x modes."""
    grid = _gpu_grid(bs=(1, 8, 32, 128, 512), hs=(128, 256, 512, 768, 1024, 2048), ts=(1, 128, 1024))
    flash_grid = [dataclasses.replace(c, flashrnn=True) for c in grid if c.dtype != "float32" and c.T > 1]
    keep = [c for c in grid if not (c.dtype != "float32" and c.T > 1)]
    return keep + flash_grid + _gpu_extras()


def gpu_quick() -> list[Case]:
    return [
        Case(B=8, T=64, I=256, H=256),
        Case(B=8, T=64, I=256, H=256, dtype="bfloat16", training=True),
        Case(B=4, T=1, I=128, H=128, dtype="float16"),
    ]
