"""Where a single-step CUDA call spends its time: host cost per call against GPU time per call.

    python3 -m benchmarks.cuda_latency [--out DIR] [--shapes B,H ...] [--profile]

For each shape (T = 1, I = H, inference under no_grad) and dtype it prints, in microseconds per
call: the module call of lstm_fused and of torch.nn.LSTM issued back to back (host-bound when the
GPU idles between calls), the host time to issue one call (perf_counter, no synchronize inside the
loop, so the GPU runs behind), the GPU time of one call (the call replayed from a CUDA graph), and
with --profile the profiler's table of host-side ops and kernels for lstm_fused. One JSON per run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import lstm_fused

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _events_us(fn, calls: int, reps: int) -> float:
    """Median over reps of (CUDA-event time of `calls` back-to-back calls) / calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(out)


def _host_us(fn, calls: int, reps: int) -> float:
    """Median over reps of the host time to issue `calls` calls, divided by calls (the GPU may lag;
    a synchronize between reps keeps the launch queue from filling)."""
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) * 1e6 / calls)
    torch.cuda.synchronize()
    return statistics.median(out)


def _graph_us(fn, calls: int, reps: int) -> float | None:
    """GPU time of one call: the call captured once in a CUDA graph, replayed back to back."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return _events_us(g.replay, calls, reps)
    except Exception as e:  # a contender that cannot be captured: report, go on
        print(f"    graph capture failed: {type(e).__name__}: {e}")
        return None


def one(B: int, H: int, name: str, profile: bool, calls: int, reps: int) -> dict:
    dtype = DTYPES[name]
    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H, device="cuda", dtype=dtype)
    ours = lstm_fused.LSTM(H, H, device="cuda", dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, B, H, device="cuda", dtype=dtype)
    h0 = torch.zeros(1, B, H, device="cuda", dtype=dtype)
    c0 = torch.zeros_like(h0)
    w = ours._layer_weights()[0]
    rec = {"B": B, "H": H, "T": 1, "dtype": name}
    with torch.no_grad():
        fns = {
            "lstm_fused": lambda: ours(x, (h0, c0)),
            "nn.LSTM": lambda: ref(x, (h0, c0)),
            "op": lambda: torch.ops.lstm_fused.forward(x, w[0], w[1], w[2], w[3], w[4], h0[0], c0[0], None,
                                                       False, False),
            "addmm": lambda: torch.addmm(w[2], x[0], w[0].t()),
            "empty": lambda: torch.empty(B, H, device="cuda", dtype=dtype),
        }
        for f in fns.values():
            for _ in range(20):
                f()
        for k, f in fns.items():
            rec[f"{k}_events_us"] = _events_us(f, calls, reps)
            rec[f"{k}_host_us"] = _host_us(f, calls, reps)
        for k in ("lstm_fused", "nn.LSTM", "op"):
            rec[f"{k}_graph_us"] = _graph_us(fns[k], calls, reps)
        print(f"B{B} H{H} {name}: " + "  ".join(
            f"{k} {rec[k + '_events_us']:.1f}/{rec[k + '_host_us']:.1f}"
            + (f"/{rec[k + '_graph_us']:.1f}" if rec.get(k + "_graph_us") else "")
            for k in fns), flush=True)
        if profile:
            from torch.profiler import ProfilerActivity, profile as prof
            with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                for _ in range(50):
                    fns["lstm_fused"]()
                torch.cuda.synchronize()
            table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            print(table)
            rec["profile"] = table
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--shapes", nargs="*", default=["16,256", "16,1024", "1,256"])
    ap.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    print("columns: events (back to back, CUDA events) / host issue time / GPU time from a CUDA graph, "
          "us per call", flush=True)
    rows = []
    for shape in args.shapes:
        B, H = (int(v) for v in shape.split(","))
        for name in args.dtypes:
            rows.append(one(B, H, name, args.profile, args.calls, args.reps))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"cuda_latency_{time.strftime('%Y%m%d-%H%M%S')}.json")
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version()}
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print("JSON:", path)


if __name__ == "__main__":
    main()
