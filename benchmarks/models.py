"""Model rows: whole model steps written as their libraries write them, with torch's modules against
a deep copy passed through lstm_fused.convert (same weights, same batch on every call).

forecast  DeepAR-style training step: static covariates -> a small net -> (h0, c0), expanded over
          the layers (stride 0); an nn.LSTM subclass with a lengths= forward encodes padded series
          of random lengths (some 0) packed unsorted; a decoder of the same class runs the horizon
          from the encoder's state; Linear head, MSE, Adam. One call = forward + backward + step.
seq2seq   greedy decoding in inference mode: an LSTM encodes the source once (outside the timing);
          the timed unit is the decode loop, `steps` times embedding -> LSTMCell -> Linear ->
          argmax, which is where a decoder spends its time. With cell="gru", a GRU and a GRUCell.
tagger    Embedding -> bidirectional LSTM over unsorted packed sentences -> Linear tag head:
          argmax tags in inference mode, or cross-entropy + SGD step when training.

No dropout anywhere: both copies must compute the same numbers for the check below.

Before anything is timed, build() checks two things and raises ModelMismatch (the row fails: error
in the JSON, exit code 1) when either does not hold:
- conversion: a profiled step of the converted model runs lstm_fused's ops and none of torch's
  LSTM kernels (a module convert() left alone would make the row time torch against torch);
- agreement: outputs and, for training rows, the loss and every parameter's gradient of the first
  step from the same weights, max |ours - torch| / max |torch| <= TOL per tensor; greedy tokens
  must be identical.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cases import ModelCase, packed_lengths
from .contenders import OURS, TORCH, Contenders

TOL = 1e-5  # fp32: both sides accumulate the same sums in a different order
# torch's own LSTM kernels; the converted model's step must call none of them.
TORCH_RNN_OPS = ("aten::lstm", "aten::lstm_cell", "aten::_thnn_fused_lstm_cell", "aten::mkldnn_rnn_layer",
                 "aten::_cudnn_rnn", "aten::gru", "aten::gru_cell", "aten::_thnn_fused_gru_cell")


class ModelMismatch(RuntimeError):
    """The converted model does not run lstm_fused, or does not compute what the torch model does."""


# ------------------------------------------------------------------------------------- forecast
class ForecastLSTM(nn.LSTM):
    """An nn.LSTM subclass with a lengths= forward and state helpers, the shape forecasting
    libraries give theirs; convert() must keep the class, its methods and this signature."""

    def init_hidden_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.size(0) if self.batch_first else x.size(1)
        zeros = x.new_zeros(self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        return zeros, zeros

    def repeat_interleave(self, hidden, n: int):
        """Each series' state n times in a row (several samples drawn per series)."""
        return tuple(h.repeat_interleave(n, dim=1) for h in hidden)

    def forward(self, x, hx=None, lengths=None, enforce_sorted=True):
        if lengths is None:
            return super().forward(x, hx)
        empty = lengths == 0
        has_empty = bool(empty.any())
        # pack_padded_sequence refuses length 0: such a series runs one step on padding, and its
        # final state is then put back to the initial one.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=self.batch_first,
                                      enforce_sorted=enforce_sorted)
        out, (h, c) = super().forward(packed, hx)
        if has_empty:
            h0, c0 = hx if hx is not None else self.init_hidden_state(x)
            mask = empty.view(1, -1, 1)
            # masked_scatter fills the masked places in order from its source: select the same
            # places of the initial state, not the whole of it.
            h = h.masked_scatter(mask, h0.masked_select(mask))
            c = c.masked_scatter(mask, c0.masked_select(mask))
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first,
                                     total_length=x.size(1 if self.batch_first else 0))
        return out, (h, c)


class ForecastModel(nn.Module):
    STATIC, ENC_FEATURES, DEC_FEATURES = 6, 5, 4

    def __init__(self, case: ModelCase):
        super().__init__()
        H = case.H
        self.static = nn.Sequential(nn.Linear(self.STATIC, H), nn.ReLU(), nn.Linear(H, 2 * H), nn.Tanh())
        self.encoder = ForecastLSTM(self.ENC_FEATURES, H, case.layers, batch_first=True)
        self.decoder = ForecastLSTM(self.DEC_FEATURES, H, case.layers, batch_first=True)
        self.head = nn.Linear(H, 1)

    def forward(self, static, enc_x, enc_lengths, dec_x):
        layers = self.encoder.num_layers
        h0, c0 = self.static(static).unsqueeze(0).chunk(2, dim=-1)
        hx = (h0.expand(layers, -1, -1), c0.expand(layers, -1, -1))
        _, state = self.encoder(enc_x, hx, lengths=enc_lengths, enforce_sorted=False)
        out, _ = self.decoder(dec_x, state)
        return self.head(out).squeeze(-1)

    def outputs(self, batch: dict) -> dict:
        pred = self(batch["static"], batch["enc_x"], batch["enc_lengths"], batch["dec_x"])
        return {"prediction": pred, "loss": F.mse_loss(pred, batch["target"])}

    def optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _forecast_inputs(case: ModelCase, g: torch.Generator) -> dict:
    B, T = case.B, case.max_len
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    order = torch.randperm(B, generator=g)
    lengths[order[: max(1, B // 16)]] = 0  # series without history yet
    lengths[order[-1]] = T
    return {
        "static": torch.randn(B, ForecastModel.STATIC, generator=g),
        "enc_x": torch.randn(B, T, ForecastModel.ENC_FEATURES, generator=g),
        "enc_lengths": lengths,
        "dec_x": torch.randn(B, case.steps, ForecastModel.DEC_FEATURES, generator=g),
        "target": torch.randn(B, case.steps, generator=g),
    }


# -------------------------------------------------------------------------------------- seq2seq
class Seq2Seq(nn.Module):
    BOS = 1

    def __init__(self, case: ModelCase):
        super().__init__()
        H, V = case.H, case.vocab
        self.gru = case.cell == "gru"
        self.src_embed = nn.Embedding(V, H)
        self.encoder = nn.GRU(H, H) if self.gru else nn.LSTM(H, H)
        self.tgt_embed = nn.Embedding(V, H)
        self.cell = nn.GRUCell(H, H) if self.gru else nn.LSTMCell(H, H)
        self.head = nn.Linear(H, V)

    def encode(self, src: torch.Tensor):
        _, state = self.encoder(self.src_embed(src))
        if self.gru:  # c is h, so that both cells have the same outputs to compare
            return state[-1], state[-1]
        return state[0][-1], state[1][-1]

    def greedy(self, state, steps: int, keep_logits: bool = False):
        h, c = state
        token = torch.full((h.size(0),), self.BOS, dtype=torch.long, device=h.device)
        tokens, logits = [], []
        for _ in range(steps):
            if self.gru:
                h = c = self.cell(self.tgt_embed(token), h)
            else:
                h, c = self.cell(self.tgt_embed(token), (h, c))
            scores = self.head(h)
            token = scores.argmax(-1)
            tokens.append(token)
            if keep_logits:
                logits.append(scores)
        if keep_logits:
            return torch.stack(tokens), torch.stack(logits), h, c
        return torch.stack(tokens)

    def outputs(self, batch: dict, steps: int) -> dict:
        with torch.inference_mode():
            state = self.encode(batch["src"])
            tokens, logits, h, c = self.greedy(state, steps, keep_logits=True)
        return {"encoder h": state[0], "encoder c": state[1], "logits": logits, "final h": h,
                "final c": c, "tokens": tokens}


def _seq2seq_inputs(case: ModelCase, g: torch.Generator) -> dict:
    return {"src": torch.randint(2, case.vocab, (case.max_len, case.B), generator=g)}


# --------------------------------------------------------------------------------------- tagger
class Tagger(nn.Module):
    EMBED, TAGS = 100, 17

    def __init__(self, case: ModelCase):
        super().__init__()
        self.embed = nn.Embedding(case.vocab, self.EMBED, padding_idx=0)
        self.lstm = nn.LSTM(self.EMBED, case.H, case.layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * case.H, self.TAGS)

    def forward(self, words, lengths):
        packed = pack_padded_sequence(self.embed(words), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=words.size(1))
        return self.head(out)

    def predict(self, batch: dict) -> torch.Tensor:
        return self(batch["words"], batch["lengths"]).argmax(-1)

    def outputs(self, batch: dict) -> dict:
        scores = self(batch["words"], batch["lengths"])
        loss = F.cross_entropy(scores.flatten(0, 1), batch["tags"].flatten(), ignore_index=-100)
        return {"scores": scores, "tags": scores.argmax(-1), "loss": loss}

    def optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=0.015, momentum=0.9)


def _tagger_inputs(case: ModelCase, g: torch.Generator) -> dict:
    lengths = torch.tensor(packed_lengths(case.B, case.min_len, case.max_len))
    T = case.max_len
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    words = torch.randint(1, case.vocab, (case.B, T), generator=g).masked_fill(pad, 0)
    tags = torch.randint(0, Tagger.TAGS, (case.B, T), generator=g).masked_fill(pad, -100)
    return {"words": words, "lengths": lengths, "tags": tags}


# ------------------------------------------------------------------------------------ the rows
MODELS = {"forecast": ForecastModel, "seq2seq": Seq2Seq, "tagger": Tagger}


def make_inputs(case: ModelCase, device: torch.device) -> dict:
    """The row's one batch (seeded); lengths stay on the CPU, where pack_padded_sequence wants them."""
    g = torch.Generator().manual_seed(1)
    make = {"forecast": _forecast_inputs, "seq2seq": _seq2seq_inputs, "tagger": _tagger_inputs}[case.model]
    batch = make(case, g)
    return {k: v if k.endswith("lengths") else v.to(device) for k, v in batch.items()}


def make_pair(case: ModelCase, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(torch model, converted deep copy), same weights, in the row's mode."""
    import lstm_fused

    torch.manual_seed(0)
    ref = MODELS[case.model](case).to(device).train(case.training)
    ours = lstm_fused.convert(copy.deepcopy(ref)).train(case.training)
    return ref, ours


def _outputs(model: nn.Module, case: ModelCase, batch: dict) -> dict:
    if case.model == "seq2seq":
        return model.outputs(batch, case.steps)
    if case.training:
        model.zero_grad(set_to_none=True)
        out = model.outputs(batch)
        out["loss"].backward()
        out = {k: v.detach() for k, v in out.items()}
        for name, p in model.named_parameters():
            out[f"grad {name}"] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        model.zero_grad(set_to_none=True)
        return out
    with torch.inference_mode():
        return model.outputs(batch)


def compare(ref: dict, ours: dict) -> dict:
    """Per-tensor error max |ours - torch| / max |torch| (integer tensors: count of differing
    elements); raises ModelMismatch naming every tensor out of tolerance."""
    if ref.keys() != ours.keys():
        raise ModelMismatch(f"converted model has other outputs/parameters: {sorted(ref.keys() ^ ours.keys())}")
    errors, bad = {}, []
    for name, r in ref.items():
        o = ours[name]
        if r.shape != o.shape:
            bad.append(f"{name}: shape {list(o.shape)} != torch's {list(r.shape)}")
            continue
        if not r.is_floating_point():
            differ = int((r != o).sum())
            errors[name] = differ
            if differ:
                first = int((r != o).flatten().nonzero()[0])
                bad.append(f"{name}: {differ} of {r.numel()} differ (first at flat index {first})")
            continue
        scale = float(r.abs().max()) if r.numel() else 0.0
        err = float((o - r).abs().max()) / max(scale, 1e-30) if r.numel() else 0.0
        errors[name] = err
        if not err <= TOL:  # NaN fails too
            bad.append(f"{name}: relative error {err:.2e} > {TOL:g}")
    if bad:
        raise ModelMismatch("converted model differs from the torch model: " + "; ".join(bad))
    return errors


@contextlib.contextmanager
def _without_profiler_log():
    """The profiler's backend writes two 'USDT:... profiler_start/stop' lines to fd 2 per use, from
    C++: fd 2 goes to a file meanwhile, and whatever else was written there is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not ln.startswith("USDT:")]
            sys.stderr.write("".join(rest))


def ops_of(fn: Callable[[], object]) -> set[str]:
    """Names of the operators one call of fn runs (the profiler sees dispatcher calls)."""
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_log(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def check_converted(fn: Callable[[], object]) -> list[str]:
    """The lstm_fused ops a step of the converted model runs; ModelMismatch when it runs torch's."""
    ops = ops_of(fn)
    torch_ops = sorted(o for o in ops if o in TORCH_RNN_OPS)
    ours = sorted(o for o in ops if o.startswith("lstm_fused::"))
    if torch_ops or not ours:
        raise ModelMismatch(f"the converted model still runs torch's LSTM kernels ({', '.join(torch_ops)}) "
                            f"/ lstm_fused ops seen: {ours or 'none'}: convert() left a module unconverted")
    return ours


def _timed_unit(model: nn.Module, case: ModelCase, batch: dict) -> Callable[[], object]:
    if case.model == "seq2seq":
        with torch.inference_mode():
            state = model.encode(batch["src"])

        def decode():
            with torch.inference_mode():
                return model.greedy(state, case.steps)

        return decode
    if case.training:
        opt = model.optimizer()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = model.outputs(batch)["loss"]
            loss.backward()
            opt.step()
            return loss

        return step

    def infer():
        with torch.inference_mode():
            return model.predict(batch)

    return infer


TIMED_UNIT = {
    "forecast": "forward + backward + Adam step",
    "seq2seq": "greedy decode loop (embedding, LSTMCell or GRUCell, Linear head, argmax per step) from the "
               "encoder's state; the encoder runs once, untimed",
    "tagger": "forward (argmax tags) in inference mode / forward + cross-entropy + backward + SGD step",
}


def _is_recurrent(m: nn.Module) -> bool:
    return isinstance(m, (nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell)) or type(m).__module__.startswith("lstm_fused")


def _class_name(m: nn.Module) -> str:
    """The module's class, and the lstm_fused classes under it when it is a user's subclass."""
    cls = type(m)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__.startswith("lstm_fused"):
        return name
    fused = [f"{k.__module__}.{k.__qualname__}" for k in cls.__mro__ if k.__module__.startswith("lstm_fused")]
    return name + (f" (over {', '.join(fused)})" if fused else "")


def build(case: ModelCase, device: torch.device) -> Contenders:
    """The row's two contenders, after the conversion and agreement checks (ModelMismatch)."""
    ref, ours = make_pair(case, device)
    batch = make_inputs(case, device)
    errors = compare(_outputs(ref, case, batch), _outputs(ours, case, batch))
    out = Contenders()
    out.fns[OURS] = _timed_unit(ours, case, batch)
    out.fns[TORCH] = _timed_unit(ref, case, batch)
    # Profiled on the timed unit itself; a training row's extra step changes only its own copy.
    out.notes["lstm_fused_ops"] = check_converted(out.fns[OURS])
    floats = {k: v for k, v in errors.items() if isinstance(v, float)}
    worst = max(floats, key=lambda k: floats[k])
    out.notes.update(
        timed_unit=TIMED_UNIT[case.model],
        contenders="nn.LSTM = the model with torch's modules; lstm_fused = its deep copy after lstm_fused.convert",
        check_tol=TOL,
        check_worst={"tensor": worst, "error": floats[worst]},
        check_errors=errors,
        converted_modules=sorted({_class_name(m) for m in ours.modules() if _is_recurrent(m)}),
    )
    return out
