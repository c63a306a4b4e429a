"""CPU serving contenders on the fp32 inference rows: lstm_fused's own int8 modules
(lstm_fused.quantize_dynamic; LSTM and GRU rows, any input), and on the LSTM's: ONNX Runtime in
fp32 and with its dynamic int8 quantization (onnxruntime.quantization.quantize_dynamic, which turns
the LSTM node into DynamicQuantizeLSTM), and torch.ao's dynamic int8 LSTM
(torch.ao.quantization.quantize_dynamic).

Each holds torch.nn.LSTM's weights: the ONNX contenders run the model torch.onnx.export writes for
it (the TorchScript-based exporter, batch and sequence dynamic), run with the case's thread
count. They time the case's unit as the others do: a whole inference call, or the streaming
loop of one-step calls carrying (h, c). Their output error against torch.nn.LSTM, max |got - ref| /
max |ref| over y, goes to the row's notes. Rows they cannot run are left out with the reason: the
GRU's, training, projections (ONNX's LSTM has none), packed input (an exported graph takes dense
tensors), half types. ONNX Runtime is a benchmark-only dependency; without it those contenders
are skipped with that reason.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .cases import Case

OURS_INT8, ORT, ORT_INT8, AO_INT8 = "lstm_fused-int8", "onnxruntime", "onnxruntime-int8", "torch.ao-int8"
NAMES = (OURS_INT8, ORT, ORT_INT8, AO_INT8)
INT8 = (ORT_INT8, AO_INT8)  # the int8 contenders lstm_fused-int8 is compared with


def why_not_int8(case: Case, device: torch.device) -> str | None:
    """Why lstm_fused's int8 modules do not run a case, or None when they do."""
    if device.type != "cpu":
        return "int8 runs on the CPU"
    if case.training or case.dtype != "float32":
        return "fp32 inference rows only"
    return None


def why_not(case: Case, device: torch.device) -> str | None:
    """Why the serving contenders do not run a case, or None when they do."""
    if device.type != "cpu":
        return "CPU serving contenders"
    if case.cell != "lstm" or case.training or case.dtype != "float32":
        return "fp32 LSTM inference rows only"
    if case.proj:
        return "ONNX's LSTM has no projection"
    if case.lengths is not None:
        return "packed input: the exported graph takes dense tensors"
    return None


class _WithStates(nn.Module):
    """The LSTM with its states as plain inputs and outputs, as the exported graph has them."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        return y, h, c


def _export(ref: nn.LSTM, case: Case, path: str) -> None:
    n = case.layers * case.directions
    args = (torch.randn(2, case.B, case.I), torch.zeros(n, case.B, case.H), torch.zeros(n, case.B, case.H))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_WithStates(ref).eval(), args, path, dynamo=False, input_names=["x", "h0", "c0"],
                          output_names=["y", "h_n", "c_n"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "h0": {1: "B"}, "c0": {1: "B"}, "y": {0: "T", 1: "B"}})


def _has_vnni() -> bool:
    """Whether the CPU has VNNI (AVX512-VNNI or AVX-VNNI), from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _ort_model(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # ONNX Runtime's pool threads spin after each run by default, and the contenders run
    # interleaved: the spinning took the cores from the next contender (lstm_fused's 2-thread rows
    # 0.6-0.7x of their time alone, with spinning on; no JSON kept).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _ort_fn(sess, case: Case, x: torch.Tensor, xs: list[torch.Tensor] | None):
    n = case.layers * case.directions
    zeros = torch.zeros(n, case.B, case.H).numpy()
    if xs is None:
        feed = {"x": x.numpy(), "h0": zeros, "c0": zeros}
        return lambda: sess.run(None, feed)
    steps = [t.numpy() for t in xs]

    def stream():
        h = c = zeros
        for step in steps:
            y, h, c = sess.run(None, {"x": step, "h0": h, "c0": c})
        return y

    return stream


def _error(got, ref: torch.Tensor) -> float:
    got = torch.as_tensor(got)
    return float((got - ref).abs().max() / ref.abs().max())


def _data(t):
    return t.data if isinstance(t, PackedSequence) else t


def add(case: Case, ref: nn.Module, device: torch.device, out, x, unit_fn) -> None:
    """Adds the serving contenders of a case to `out` (benchmarks.contenders.Contenders), or their
    reasons to out.skipped. ref: torch's module; x: the case's input (a PackedSequence when packed;
    None when streaming); unit_fn(model) builds a torch module's timed unit as the other contenders
    have it."""
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(1, case.B, case.I, generator=g) for _ in range(case.stream_calls)] if case.stream_calls else None
    # The output errors are over the case's whole input: a streaming row's steps as one sequence
    # (the same computation as the loop of one-step calls carrying the state).
    probe = x if xs is None else torch.cat(xs)
    int8_reason = why_not_int8(case, device)
    if int8_reason:
        out.skipped[OURS_INT8] = int8_reason
    else:
        import lstm_fused

        ours = lstm_fused.quantize_dynamic(ref)
        out.fns[OURS_INT8] = unit_fn(ours)
        with torch.inference_mode():
            out.notes[f"{OURS_INT8}_error"] = _error(_data(ours(probe)[0]), _data(ref(probe)[0]))
    reason = why_not(case, device)
    if reason:
        for name in NAMES[1:]:
            out.skipped[name] = reason
        return
    n = case.layers * case.directions
    with torch.inference_mode():
        want = ref(probe, (torch.zeros(n, case.B, case.H), torch.zeros(n, case.B, case.H)))[0]

    holder = nn.Sequential(copy.deepcopy(ref))  # quantize_dynamic swaps children, not the root
    quantized = torch.ao.quantization.quantize_dynamic(holder, {nn.LSTM}, dtype=torch.qint8)[0]
    out.fns[AO_INT8] = unit_fn(quantized)
    with torch.inference_mode():
        out.notes[f"{AO_INT8}_error"] = _error(quantized(probe)[0], want)

    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        out.skipped[ORT] = out.skipped[ORT_INT8] = f"onnxruntime not importable ({e})"
        return
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "lstm.onnx"), os.path.join(tmp, "lstm_int8.onnx")
        _export(ref, case, fp32)
        # Without VNNI, ONNX Runtime's u8 x s8 products (vpmaddubsw) saturate int16 pair sums with
        # full-range weights: max relative error 0.41 against 0.024 with 7-bit weights (B32 T100
        # H256 on an AVX2 Zen 3). reduce_range is ONNX Runtime's advice for such CPUs.
        reduce_range = not _has_vnni()
        out.notes[f"{ORT_INT8}_reduce_range"] = reduce_range
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        models = {ORT: _ort_model(fp32), ORT_INT8: _ort_model(int8)}  # loaded: the files may go
    zeros = torch.zeros(n, case.B, case.H).numpy()
    for name, sess in models.items():
        out.fns[name] = _ort_fn(sess, case, x, xs)
        got = sess.run(None, {"x": probe.numpy(), "h0": zeros, "c0": zeros})[0]
        out.notes[f"{name}_error"] = _error(got, want)
