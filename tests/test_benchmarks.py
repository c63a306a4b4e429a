"""Smoke test of the benchmark suite's --quick mode (the README's benchmark command, shrunk), and
the model rows' own checks: a converted model that computes something else, or that still runs
torch's LSTM, must fail its row rather than be timed."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import cases, models  # noqa: E402


def test_benchmark_quick_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--no-plot", "--device", "cpu",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    print(proc.stdout[-4000:])
    print(proc.stderr[-4000:])
    assert proc.returncode == 0
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert len(files) == 1, files
    with open(tmp_path / files[0]) as f:
        payload = json.load(f)
    assert payload["correctness"] and all(r["ok"] for r in payload["correctness"])
    assert payload["complete"] is True
    results = payload["results"]
    assert results, "no benchmark cases ran"
    errors = [r for r in results if r.get("error")]
    assert not errors, errors
    # ONNX Runtime (fp32, int8) and torch.ao's int8 time the fp32 LSTM inference rows, their
    # errors against torch.nn.LSTM noted; other rows say why they are left out.
    serving = [r for r in results if r["case"].get("cell", "lstm") == "lstm" and r["case"]["kind"] in ("dense", "stream")
               and not r["case"]["training"] and r["case"]["dtype"] == "float32" and not r["case"]["proj"]]
    assert serving
    for r in serving:
        for name in ("onnxruntime", "onnxruntime-int8", "torch.ao-int8"):
            assert r["contenders"][name]["median_ms"] > 0 and r["ours_vs"][name] > 0
            assert r["notes"][f"{name}_error"] < (1e-5 if name == "onnxruntime" else 0.5)
    assert all("onnxruntime" in r["skipped"] for r in results if r["case"]["kind"] == "packed")
    # lstm_fused's int8 modules time every fp32 inference row (GRU, packed, projections too),
    # compared with the other int8 contenders and our fp32; training and bf16 rows say why not.
    inference = [r for r in results if r["case"]["kind"] != "model" and not r["case"]["training"]
                 and r["case"]["dtype"] == "float32"]
    assert inference and any(r["case"]["kind"] == "packed" for r in inference)
    for r in inference:
        assert r["contenders"]["lstm_fused-int8"]["median_ms"] > 0 and r["int8_vs"]["lstm_fused"] > 0
        assert r["notes"]["lstm_fused-int8_error"] < 0.05
    for r in serving:
        assert r["int8_vs"]["onnxruntime-int8"] > 0 and r["int8_vs"]["torch.ao-int8"] > 0
    assert all("lstm_fused-int8" in r["skipped"] for r in results if r["case"]["kind"] != "model"
               and (r["case"]["training"] or r["case"]["dtype"] != "float32"))
    model_rows = [r for r in results if r["case"]["kind"] == "model"]
    assert {r["case"]["model"] for r in model_rows} == set(cases.MODEL_NAMES)
    for r in model_rows:
        assert r["speedup"] > 0 and r["contenders"]["lstm_fused"]["per_call_ms"]
        assert r["notes"]["check_worst"]["error"] <= models.TOL
        assert r["notes"]["lstm_fused_ops"]


def _tagger_case(training):
    return cases.ModelCase("tagger", B=3, H=8, layers=1, min_len=2, max_len=5, vocab=20, training=training)


@pytest.mark.parametrize("training", [False, True])
def test_model_row_fails_when_converted_model_differs(monkeypatch, training):
    import lstm_fused

    convert = lstm_fused.convert

    def convert_and_perturb(model):
        model = convert(model)
        with torch.no_grad():
            model.lstm.weight_hh_l0[0, 0] += 1e-3
        return model

    monkeypatch.setattr(lstm_fused, "convert", convert_and_perturb)
    with pytest.raises(models.ModelMismatch, match="differs from the torch model"):
        models.build(_tagger_case(training), torch.device("cpu"))


def test_model_row_fails_when_nothing_is_converted(monkeypatch):
    import lstm_fused

    monkeypatch.setattr(lstm_fused, "convert", lambda model: model)
    with pytest.raises(models.ModelMismatch, match="still runs torch's LSTM"):
        models.build(_tagger_case(False), torch.device("cpu"))


def test_forecast_lstm_keeps_initial_state_of_empty_series():
    import lstm_fused

    torch.manual_seed(0)
    ref = models.ForecastLSTM(3, 5, num_layers=2, batch_first=True)
    ours = lstm_fused.convert(copy.deepcopy(ref))
    assert type(ours).__name__ == "ForecastLSTM" and isinstance(ours, models.ForecastLSTM)
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 0, 3, 0])
    h0 = torch.randn(1, 4, 5).expand(2, -1, -1)  # stride 0 over the layers
    c0 = torch.randn(1, 4, 5).expand(2, -1, -1)
    for m in (ref, ours):
        out, (h, c) = m(x, (h0, c0), lengths=lengths, enforce_sorted=False)
        assert out.shape == (4, 6, 5)
        torch.testing.assert_close(h[:, [1, 3]], h0[:, [1, 3]], rtol=0, atol=0)
        torch.testing.assert_close(c[:, [1, 3]], c0[:, [1, 3]], rtol=0, atol=0)
    torch.testing.assert_close(ours(x, (h0, c0), lengths=lengths, enforce_sorted=False),
                               ref(x, (h0, c0), lengths=lengths, enforce_sorted=False))
