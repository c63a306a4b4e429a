"""Per-case results, the progress line, the final table, the JSON file and the PNG plot."""
from __future__ import annotations

import json
import math
import os
from typing import Optional, Union

from . import perf_model
from .cases import Case, ModelCase
from .contenders import FLASHRNN, OURS, TORCH, Contenders
from .serving import INT8, OURS_INT8
from .serving import NAMES as SERVING
from .timing import Timings


def case_result(case: Union[Case, ModelCase], key: str, timings: Optional[Timings],
                cont: Optional[Contenders], ceilings: dict, error: Optional[str] = None) -> dict:
    """Everything about one case for the JSON: shape/options, raw times, rates, % of ceilings.
    A model row has no performance model (its LSTMs are a part of the step): rates are None."""
    model = case.kind == "model"
    fused, unfused = (None, None) if model else perf_model.bytes_moved(case)
    res = {
        "case": case.to_json(),
        "ceiling_key": key,
        "flops": None if model else perf_model.flops(case),
        "bytes_fused": fused,
        "bytes_unfused": unfused,
        "contenders": {},
        "skipped": dict(cont.skipped) if cont else {},
        "notes": dict(cont.notes) if cont else {},
        "error": error,
    }
    if timings is None:
        return res
    ceil = ceilings.get(key, {})
    gemm = ceil.get("gemm_gflops", {}).get(case.dtype)
    copy = ceil.get("copy_gbps")
    for name, samples in timings.per_call_s.items():
        med = timings.median(name)
        r = dict(gflops=None, gbps=None, gbps_unfused=None) if model else perf_model.rates(case, med)
        r.update(
            median_ms=med * 1e3,
            per_call_ms=[s * 1e3 for s in samples],
            inner=timings.inner[name],
            pct_gemm=_pct(r["gflops"], gemm),
            pct_copy=_pct(r["gbps"], copy),
            spread=timings.spread(name),
        )
        res["contenders"][name] = r
    res["noisy"] = any(v["spread"] > 0.2 for v in res["contenders"].values())
    c = res["contenders"]
    if OURS in c and TORCH in c:
        res["speedup"] = c[TORCH]["median_ms"] / c[OURS]["median_ms"]
    if FLASHRNN in c and TORCH in c:
        res["speedup_flashrnn_over_nn.LSTM"] = c[TORCH]["median_ms"] / c[FLASHRNN]["median_ms"]
    if FLASHRNN in c and OURS in c:
        res["speedup_over_flashrnn"] = c[FLASHRNN]["median_ms"] / c[OURS]["median_ms"]
    # t(contender) / t(lstm_fused) for every other contender (the serving ones, say): > 1 is ours faster.
    if OURS in c:
        res["ours_vs"] = {k: v["median_ms"] / c[OURS]["median_ms"] for k, v in c.items() if k not in (OURS, TORCH)}
    # The same for lstm_fused's int8 modules against the other int8 contenders and our own fp32.
    if OURS_INT8 in c:
        res["int8_vs"] = {k: c[k]["median_ms"] / c[OURS_INT8]["median_ms"] for k in (*INT8, OURS) if k in c}
    return res


def rescale(res: dict, ceilings: dict) -> None:
    """Recompute a result's % of ceilings against (final) ceilings."""
    ceil = ceilings.get(res["ceiling_key"], {})
    gemm = ceil.get("gemm_gflops", {}).get(res["case"]["dtype"])
    copy = ceil.get("copy_gbps")
    for r in res["contenders"].values():
        r["pct_gemm"] = _pct(r["gflops"], gemm)
        r["pct_copy"] = _pct(r["gbps"], copy)


def _pct(rate, ceiling):
    return 100.0 * rate / ceiling if rate is not None and ceiling else None


def _threads(res: dict) -> str:
    t = res["ceiling_key"]
    return t.split("=", 1)[1] if "=" in t else t


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def progress_line(i: int, n: int, res: dict) -> str:
    head = f"[{i:3d}/{n}] {res['case']['label']:52s} thr {_threads(res):>4s}"
    if res["error"]:
        return f"{head}  ERROR {res['error']}"
    c = res["contenders"]
    parts = [f"{name} {v['median_ms']:9.3f} ms" for name, v in c.items()]
    line = f"{head}  " + "  ".join(parts)
    if "speedup" in res:
        line += f"  speedup {res['speedup']:.2f}x"
    if OURS in c and c[OURS]["gflops"] is not None:
        line += f"  {c[OURS]['gflops']:.1f} GFLOP/s ({_fmt(c[OURS]['pct_gemm'], '.0f')}%)"
    if res.get("noisy"):
        line += "  NOISY (spread > 20%)"
    by_reason: dict[str, list[str]] = {}
    for name, why in res["skipped"].items():
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        line += f"\n        {', '.join(names)} not run: {why}"
    return line


# Column names of the table (the JSON keeps the full names).
_SHORT = {"onnxruntime": "ort", "onnxruntime-int8": "ort8", "torch.ao-int8": "ao8", OURS: "fp32"}


def table(results: list[dict]) -> str:
    has_flash = any(FLASHRNN in r["contenders"] for r in results)
    serving = [n for n in SERVING if n != OURS_INT8 and any(n in r["contenders"] for r in results)]
    cols = ["case", "thr", "ms ours", "ms torch", "speedup"]
    if has_flash:
        cols += ["ms flashrnn"]
    cols += [f"vs {_SHORT[n]}" for n in serving]
    int8_vs = [n for n in (*INT8, OURS) if any(n in r.get("int8_vs", {}) for r in results)]
    cols += [f"i8 vs {_SHORT[n]}" for n in int8_vs]
    cols += ["GFLOP/s", "%gemm", "GB/s", "%copy", "GB/s unf", "target"]
    rows = []
    for r in results:
        c, o = r["contenders"], r["contenders"].get(OURS, {})
        row = [r["case"]["label"], _threads(r),
               _fmt(o.get("median_ms"), ".3f"),
               _fmt(c.get(TORCH, {}).get("median_ms"), ".3f"),
               _fmt(r.get("speedup"), ".2f") + ("x" if "speedup" in r else "") + ("?" if r.get("noisy") else "")]
        if r["error"]:
            row[2] = "ERROR"
        if has_flash:
            row.append(_fmt(c.get(FLASHRNN, {}).get("median_ms"), ".3f"))
        row += [_fmt(r.get("ours_vs", {}).get(n), ".2f") for n in serving]
        row += [_fmt(r.get("int8_vs", {}).get(n), ".2f") for n in int8_vs]
        row += [_fmt(o.get("gflops"), ".1f"), _fmt(o.get("pct_gemm"), ".0f"),
                _fmt(o.get("gbps"), ".1f"), _fmt(o.get("pct_copy"), ".0f"),
                _fmt(o.get("gbps_unfused"), ".1f"), r["case"]["target"] or ""]
        rows.append(row)
    widths = [max(len(cols[i]), *(len(row[i]) for row in rows)) if rows else len(cols[i])
              for i in range(len(cols))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))))
    lines.append("speedup = t(nn.LSTM)/t(lstm_fused), medians; '?' = noisy (a contender's IQR > 20% of "
                 "its median); GFLOP/s, GB/s: lstm_fused's; % of this run's measured GEMM / copy ceilings")
    if serving:
        lines.append("vs X = t(X)/t(lstm_fused) (> 1: lstm_fused faster); i8 vs X = t(X)/t(lstm_fused-int8); "
                     "ort, ort8: ONNX Runtime fp32 and int8, ao8: torch.ao int8, fp32: lstm_fused; the serving "
                     "contenders' output errors against torch's module are in the JSON's notes")
    if any(r["case"]["kind"] == "model" for r in results):
        lines.append("model rows: the whole step of the model as written (torch's modules) over the same "
                     "model after lstm_fused.convert; no rates (the LSTMs are a part of the step)")
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    """Write through a temporary file, so that a run stopped mid-write leaves the previous JSON."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def plot(path: str, results: list[dict], title: str) -> Optional[str]:
    """Bar chart of speedup per case; returns a message instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib not installed: no plot (pip install matplotlib; benchmark-only dependency)"
    done = [r for r in results if "speedup" in r]
    if not done:
        return "no case has a speedup: no plot"
    labels = [(f"{r['case']['label']} [thr {_threads(r)}]" if r["ceiling_key"] != "cuda"
               else r["case"]["label"]) + (f" (target {r['case']['target']})" if r["case"]["target"] else "")
              for r in done]
    ours = [r["speedup"] for r in done]
    flash = [r.get("speedup_flashrnn_over_nn.LSTM") for r in done]
    has_flash = any(v is not None for v in flash)
    n = len(done)
    # Room for the longest label at fontsize 7 (~0.055 in a character): tight_layout alone cut the
    # model rows' long labels.
    label_in = 0.055 * max(map(len, labels)) + 0.2
    width = max(10.0, label_in + 6.5)
    fig, ax = plt.subplots(figsize=(width, 0.26 * n + 1.6))
    ys = list(range(n))
    h = 0.4 if has_flash else 0.7
    colors = ["tab:green" if s >= 1.0 else "tab:red" for s in ours]
    ax.barh([y - (h / 2 if has_flash else 0) for y in ys], ours, height=h, color=colors,
            label="lstm_fused vs nn.LSTM")
    if has_flash:
        ax.barh([y + h / 2 for y in ys], [v or 0 for v in flash], height=h, color="tab:blue",
                label="FlashRNN vs nn.LSTM")
    for y, v in zip(ys, ours):
        ax.text(v, y - (h / 2 if has_flash else 0), f" {v:.2f}x", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup = t(nn.LSTM) / t(contender)   (log scale; >1 is faster)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.subplots_adjust(left=max(fig.subplotpars.left, label_in / width))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
