"""The machine's own ceilings, measured in the same run as the cases.

- GEMM: a large square matrix product per dtype of the grid (fp32 "sgemm"; on GPU also fp16/bf16,
  tensor cores), in GFLOP/s = 2*N^3 / median time. On the GPU fp32 runs with torch's current TF32
  setting, which is recorded.
- Memory copy: dst.copy_(src) of a large buffer, in GB/s counting bytes read plus bytes written.
A ceiling is what the machine can do, so it takes the best repetition, not the median.

On the CPU they are measured once per thread count the cases use (torch.set_num_threads), since a
1-thread case should be compared with a 1-thread ceiling.
"""
from __future__ import annotations

from typing import Optional

import torch

from .timing import TimingConfig, measure

_CFG = TimingConfig(budget_s=1.0, warmup_s=0.1, min_reps=3, max_reps=10, min_sample_s=0.0)


def setting_key(device: torch.device, threads: Optional[int]) -> str:
    """Which measured ceiling a case compares with."""
    if device.type == "cuda":
        return "cuda"
    return f"threads={threads if threads is not None else torch.get_num_threads()}"


def _gemm_gflops(n: int, dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    t = measure({"gemm": lambda: torch.mm(a, b, out=c)}, device, _CFG).best("gemm")
    return 2.0 * n**3 / t / 1e9


def _copy_gbps(nbytes: int, device: torch.device) -> float:
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = measure({"copy": lambda: dst.copy_(src)}, device, _CFG).best("copy")
    return 2.0 * src.numel() * 4 / t / 1e9


def measure_ceilings(device: torch.device, dtypes: set[str], quick: bool) -> dict:
    """Ceilings at the current thread setting, for the given dtypes (names like 'float32')."""
    if device.type == "cuda":
        n, nbytes = (4096, 256 << 20) if quick else (8192, 1 << 30)
    else:
        n, nbytes = (1024, 64 << 20) if quick else (2048, 256 << 20)
    gemm = {"float32": _gemm_gflops(n, torch.float32, device)}
    native = {}
    for name in sorted(dtypes - {"float32"}):
        if name == "float16" and device.type == "cpu":
            continue  # fp16 is not a CPU benchmark dtype; no ceiling needed
        if device.type == "cpu" and name == "bfloat16":
            # Without bf16 instructions torch's bf16 GEMM runs at ~1 GFLOP/s (an AVX2 Zen 3: 1.2
            # against 108 in fp32), where a 2048^3 product takes 15 s: a 512^3 probe says so first.
            # The ceiling is then the machine's best way to multiply bf16 matrices: widened to fp32.
            probe = _gemm_gflops(512, torch.bfloat16, device)
            native[name] = probe if probe < gemm["float32"] / 4 else _gemm_gflops(n, torch.bfloat16, device)
            gemm[name] = max(native[name], gemm["float32"])
        else:
            gemm[name] = _gemm_gflops(n, getattr(torch, name), device)
    out = {
        "gemm_gflops": gemm,
        "gemm_gflops_in_dtype": native,  # CPU bf16: torch.mm's own rate, where gemm_gflops took fp32's
        "gemm_n": n,
        "copy_gbps": _copy_gbps(nbytes, device),
        "copy_bytes": nbytes,
    }
    if device.type == "cuda":
        out["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    else:
        out["threads"] = torch.get_num_threads()
    return out


def best_of(a: dict, b: dict) -> dict:
    """Per setting, the higher of two measurements of each ceiling."""
    out = {}
    for key in a:
        x, y = a[key], b.get(key, a[key])
        merged = dict(x)
        merged["gemm_gflops"] = {d: max(v, y["gemm_gflops"].get(d, v)) for d, v in x["gemm_gflops"].items()}
        merged["copy_gbps"] = max(x["copy_gbps"], y["copy_gbps"])
        out[key] = merged
    return out
