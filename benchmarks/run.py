"""Benchmark lstm_fused against torch: correctness first, then ceilings, then timings.

    python3 -m benchmarks.run [--device auto|cpu|cuda] [--full | --quick] [--out DIR] [--no-plot]
                              [--threads N] [--filter REGEX] [--budget S] [--no-flashrnn]

Steps: (1) correctness of lstm_fused.LSTM vs torch.nn.LSTM vs a float64 nn.LSTM on a few configs;
a mismatch stops the run with exit code 1. (2) the machine's ceilings (large GEMM, large copy),
measured before the cases (used by the progress lines) and again after them (the final table and
JSON use the best of the two). (3) every case of the grid, contenders interleaved, medians; one
progress line per case, a final table, JSON `<out>/bench_<device>_<YYYYmmdd-HHMMSS>.json` and a
PNG beside it. The JSON is rewritten after every case ("complete": false until the run ends).
The CPU grids end with model rows (benchmarks/models.py): whole model steps, torch's modules against
the same model after lstm_fused.convert, each checked for agreement before it is timed.
Exit code 1 also when lstm_fused failed on any case, a model row's check included (the error is
printed and kept in the JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import re
import sys
import time
import traceback

import torch

from . import cases as grids
from . import ceilings, contenders, correctness, machine, report
from .timing import TimingConfig, measure

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available, else cpu")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the wide grid (long)")
    size.add_argument("--quick", action="store_true", help="a tiny grid for smoke tests (< 60 s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="directory for JSON and PNG (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: time only with this many threads (default: torch's default, then 1)")
    p.add_argument("--filter", default=None, help="only cases whose label matches this regex")
    p.add_argument("--budget", type=float, default=None, help="timing seconds per case (all contenders)")
    p.add_argument("--no-flashrnn", action="store_true", help="GPU: do not time FlashRNN")
    p.add_argument("--flashrnn-backend", default="cuda_fused",
                   help="FlashRNN backend when it is timed (default %(default)s)")
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    return torch.device(name)


def select_cases(args, device: torch.device) -> tuple[str, list]:
    grid = "quick" if args.quick else "full" if args.full else "default"
    if device.type == "cuda":
        chosen = {"quick": grids.gpu_quick, "full": grids.gpu_full, "default": grids.gpu_default}[grid]()
    else:
        default = torch.get_num_threads()
        threads = [args.threads] if args.threads else sorted({default, 1}, reverse=True)
        if grid == "quick":
            chosen = grids.with_threads(grids.cpu_quick(), threads[:1])
        elif grid == "full":
            chosen = grids.cpu_full(threads)
        else:
            chosen = grids.cpu_default(threads)
    if args.filter:
        rx = re.compile(args.filter)
        chosen = [c for c in chosen if rx.search(c.label)]
    return grid, chosen


def timing_config(grid: str, device: torch.device, budget) -> TimingConfig:
    if grid == "quick":
        cfg = TimingConfig(budget_s=0.15, warmup_s=0.02, min_reps=3, max_reps=10, min_sample_s=1e-3)
    elif device.type == "cuda":
        cfg = TimingConfig(budget_s=1.0, warmup_s=0.1, min_reps=5, max_reps=50, min_sample_s=1e-3)
    elif grid == "full":
        cfg = TimingConfig(budget_s=1.5, warmup_s=0.1, min_reps=3, max_reps=30)
    else:
        cfg = TimingConfig(budget_s=1.5, warmup_s=0.1, min_reps=5, max_reps=40)
    return dataclasses.replace(cfg, budget_s=budget) if budget else cfg


def set_threads(threads, default: int) -> None:
    torch.set_num_threads(threads if threads is not None else default)


def run_case(case, device: torch.device, cfg: TimingConfig, flash_backend, ceils) -> dict:
    key = ceilings.setting_key(device, case.threads)
    cont = None
    try:
        cont = contenders.build(case, device, flash_backend)
        timings = measure(cont.fns, device, cfg)
        return report.case_result(case, key, timings, cont, ceils)
    except Exception as e:
        last = traceback.format_exc().strip().splitlines()[-3:]
        err = f"{type(e).__name__}: {e} | " + " / ".join(s.strip() for s in last[:-1])
        return report.case_result(case, key, None, cont, ceils, error=err)
    finally:
        del cont
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure_all_ceilings(device, settings, dtypes, grid, default_threads, when: str) -> dict:
    out = {}
    for threads in settings:
        set_threads(threads, default_threads)
        key = ceilings.setting_key(device, threads)
        out[key] = ceilings.measure_ceilings(device, dtypes, quick=grid == "quick")
        native = out[key].get("gemm_gflops_in_dtype", {})
        gemm = ", ".join(f"{k} {v:.0f}" + (f" (in {k} itself: {native[k]:.1f})" if native.get(k, v) != v else "")
                         for k, v in out[key]["gemm_gflops"].items())
        print(f"== ceilings {when} [{key}]: GEMM GFLOP/s: {gemm}; "
              f"copy {out[key]['copy_gbps']:.1f} GB/s (read+write)")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    try:
        import lstm_fused  # noqa: F401
        import lstm_fused._C  # noqa: F401
    except ImportError as e:
        print(f"cannot import lstm_fused ({e}); build it first: pip install --no-build-isolation -e .")
        return 2
    started = time.strftime("%Y%m%d-%H%M%S")
    t_start = time.perf_counter()
    default_threads = torch.get_num_threads()
    mach, versions = machine.describe(device)
    where = mach.get("gpu_name") or f"{mach['cpu_model']}, {mach['cpu_cores']} cores"
    print(f"lstm_fused benchmarks on {device.type}: {where}; torch {versions['torch']}, "
          f"cuDNN {versions['cudnn']}, lstm_fused {versions['lstm_fused']} ({versions['lstm_fused_commit']})")

    if versions["lstm_fused_build_matches_source"] is False:
        print("the extension was built from sources other than this tree's csrc/ (an edit not rebuilt, or "
              "one reverted since the build): rebuild it first: pip install --no-build-isolation -e .")
        return 2

    load = mach.get("load_average_1min_at_start")
    if device.type == "cpu" and load is not None and load > 0.5:
        print(f"warning: load average {load:.1f} before starting: other processes share these cores, "
              "timings will be noisy")
    payload = {"suite": "lstm_fused benchmarks", "device": device.type, "started": started,
               "argv": sys.argv[1:], "machine": mach, "versions": versions}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_{device.type}_{started}")

    # (1) correctness first
    payload["correctness"] = correctness.run_all(device)
    if not all(r["ok"] for r in payload["correctness"]):
        report.write_json(stem + ".json", payload)
        print(f"correctness check FAILED: not timing anything. Details in {stem}.json")
        return 1

    grid, chosen = select_cases(args, device)
    cfg = timing_config(grid, device, args.budget)
    flash_backend = None if args.no_flashrnn else args.flashrnn_backend
    payload.update(grid=grid, timing_config=dataclasses.asdict(cfg))

    # (2) ceilings, per thread setting used by the cases; measured again after the cases (below)
    dtypes = {c.dtype for c in chosen}
    settings = list(dict.fromkeys(c.threads for c in chosen))
    before = measure_all_ceilings(device, settings, dtypes, grid, default_threads, "before")

    # (3) timings
    print(f"== {len(chosen)} cases ({grid} grid), contenders interleaved, medians")
    results = []
    payload.update(complete=False, ceilings=before, results=results)
    for i, case in enumerate(chosen, 1):
        set_threads(case.threads, default_threads)
        res = run_case(case, device, cfg, flash_backend, before)
        results.append(res)
        print(report.progress_line(i, len(chosen), res), flush=True)
        # Rewritten after every case: a run stopped early (the wide grid's last cases take minutes
        # each) still leaves its finished cases, marked complete=false, against the first ceilings.
        report.write_json(stem + ".json", payload)
    # A ceiling is the best the machine did: on a shared machine, one measurement may be disturbed.
    after = measure_all_ceilings(device, settings, dtypes, grid, default_threads, "after")
    ceils = ceilings.best_of(before, after)
    for res in results:
        report.rescale(res, ceils)
    set_threads(None, default_threads)
    payload["ceilings"] = ceils
    payload["ceilings_before_after"] = {"before": before, "after": after}

    payload["complete"] = True
    payload["wall_s"] = time.perf_counter() - t_start
    payload["load_average_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print()
    print(report.table(results))
    report.write_json(stem + ".json", payload)
    print(f"\nJSON: {stem}.json  ({payload['wall_s']:.0f} s)")
    if not args.no_plot:
        title = f"lstm_fused vs torch.nn.LSTM on {where} ({grid} grid, {started})"
        msg = report.plot(stem + ".png", results, title)
        print(msg or f"plot: {stem}.png")
    errors = [r for r in results if r["error"]]
    if errors:
        print(f"{len(errors)} case(s) FAILED:")
        for r in errors:
            print(f"  {r['case']['label']}: {r['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
