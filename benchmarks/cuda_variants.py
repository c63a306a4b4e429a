"""Step-loop variants of the persistent CUDA kernels against cuDNN, at module level.

    python3 -m benchmarks.cuda_variants [--out DIR] [--budget S]

For each shape and dtype: nn.LSTM (cuDNN) and lstm_fused.LSTM with the same weights, the latter once
per LSTM_FUSED_CUDA_TUNING value (the adapter reads it at every call), inference and training,
timed interleaved by benchmarks.timing (medians). Each variant's output is also compared with
cuDNN's (max abs difference), so a broken variant shows before its time does. Prints a table and
writes cuda_variants_<stamp>.json. A tool for kernel work; the suite (benchmarks.run) is what the
README's results come from.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import lstm_fused
from benchmarks.timing import TimingConfig, measure

# LSTM_FUSED_CUDA_TUNING (forward; see ForwardArgs::tuning): 6 = grid.sync + per-warp staging
# (the default), 2 = grid.sync + tile staging, 4 = release/acquire step flags + per-warp staging,
# +256 = never the cluster kernel (half types, H <= ~512, B <= 32 take it by default on sm_90).
# LSTM_FUSED_CUDA_UNITS: hidden units per block at least (fewer, fuller blocks). Edit this table
# to compare a new variant.
ENV_KEYS = ("LSTM_FUSED_CUDA_TUNING", "LSTM_FUSED_CUDA_UNITS")
# +512 = the cluster kernel exchanges h by DSMEM stores + a cluster barrier (its first version)
# instead of st.async + mbarriers, +1024 = the cluster kernel at any units x rows (not only where
# it measured ahead).
VARIANTS = {
    "default": {"LSTM_FUSED_CUDA_TUNING": "6"},
    "barrier": {"LSTM_FUSED_CUDA_TUNING": "518"},
    "wide": {"LSTM_FUSED_CUDA_TUNING": "1030"},
    "bar_wide": {"LSTM_FUSED_CUDA_TUNING": "1542"},
    "grid": {"LSTM_FUSED_CUDA_TUNING": "262"},
}
SHAPES = [  # (B, T, H), I = H
    (1, 1024, 256), (1, 1024, 512), (8, 1024, 128), (8, 1024, 256), (8, 1024, 512), (16, 1024, 256),
    (32, 1024, 256), (32, 1024, 512), (16, 1, 256), (8, 128, 128),
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def set_env(env):
    for key in ENV_KEYS:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)


def run_case(B, T, H, dtype, train, budget):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H).cuda().to(dtype)
    ours = lstm_fused.LSTM(H, H).cuda().to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=train)
    grad = torch.randn(T, B, H, device="cuda", dtype=dtype)

    def unit(model, env=None):
        def fn():
            if env is not None:
                set_env(env)
            if train:
                out, _ = model(x)
                out.backward(grad)
            else:
                with torch.no_grad():
                    model(x)
        return fn

    errs = {}
    with torch.no_grad():
        expect = ref(x)[0].float()
        for name, env in VARIANTS.items():
            set_env(env)
            got = ours(x)[0].float()
            errs[name] = (got - expect).abs().max().item()
    fns = {"cudnn": unit(ref)}
    fns.update({name: unit(ours, env) for name, env in VARIANTS.items()})
    t = measure(fns, torch.device("cuda"), TimingConfig(budget_s=budget, max_reps=30))
    set_env({})
    return {name: t.median(name) for name in fns}, errs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--train", action="store_true", help="also time forward+backward")
    ap.add_argument("--dtypes", default="fp16,fp32,bf16")
    args = ap.parse_args()
    rows = []
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"{'case':30s} " + " ".join(f"{n[:9]:>9s}" for n in ["cudnn", *VARIANTS]) + "  best/cudnn  max|diff|")
    for dt_name in args.dtypes.split(","):
        dtype = DTYPES[dt_name]
        for B, T, H in SHAPES:
            for train in (False, True) if args.train else (False,):
                if T == 1 and train:
                    continue
                label = f"{dt_name} B{B} T{T} H{H} {'train' if train else 'infer'}"
                try:
                    med, errs = run_case(B, T, H, dtype, train, args.budget)
                except Exception as e:  # keep going: one failing case must not hide the others
                    print(f"{label:30s} ERROR {type(e).__name__}: {str(e)[:200]}")
                    rows.append({"case": label, "error": repr(e)})
                    continue
                best = min(med[n] for n in VARIANTS)
                print(f"{label:30s} " + " ".join(f"{med[n] * 1e3:9.3f}" for n in med)
                      + f"  {med['cudnn'] / best:6.2f}x  {max(errs.values()):.1e}", flush=True)
                rows.append({"case": label, "B": B, "T": T, "H": H, "dtype": dt_name,
                             "train": train, "median_s": med, "max_abs_diff_vs_cudnn": errs})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"cuda_variants_{stamp}.json")
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "variants": VARIANTS, "rows": rows}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
