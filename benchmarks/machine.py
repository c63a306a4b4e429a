"""What ran the benchmark: machine and versions, for the JSON."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _lstm_fused_isa():
    import lstm_fused

    return lstm_fused.cpu_isa()


def _cpu_flags() -> list[str]:
    """The /proc/cpuinfo flags the kernels' dispatch and the int8 contenders depend on."""
    wanted = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
              "amx_bf16", "amx_int8"}
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []
    return sorted(wanted.intersection(flags))


def _caches() -> dict:
    """CPU 0's caches from sysfs: {"L1d": "32K", "L2": "1024K", ...} (per core for L1 and L2)."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for entry in entries:
        def read(name):
            with open(os.path.join(base, entry, name)) as f:
                return f.read().strip()
        try:
            kind = read("type")
            out[f"L{read('level')}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = read("size")
        except OSError:
            continue
    return out


def _lstm_fused_int8_isa():
    import lstm_fused

    return lstm_fused.int8_isa()


def _onednn_bf16():
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def describe(device: torch.device) -> tuple[dict, dict]:
    """(machine, versions)."""
    machine = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "lstm_fused_cpu_isa": _lstm_fused_isa(),  # which copy of our CPU loops runs
        "lstm_fused_int8_isa": _lstm_fused_int8_isa(),  # which copy of the int8 loops runs
        "cpu_flags": _cpu_flags(),
        "caches": _caches(),
        "onednn_bf16": _onednn_bf16(),  # whether torch's oneDNN runs bf16 GEMMs on this CPU
        "platform": platform.platform(),
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # Settings that change either contender's CPU memory behaviour (unset: the defaults).
        "env": {k: os.environ.get(k) for k in ("LSTM_FUSED_CPU_CACHE_MB", "THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES",
                                               "OMP_NUM_THREADS")},
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        machine.update(gpu_name=p.name, gpu_sms=p.multi_processor_count,
                       gpu_memory_gib=round(p.total_memory / 2**30, 1),
                       gpu_capability=f"{p.major}.{p.minor}")
    import lstm_fused

    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lstm_fused": getattr(lstm_fused, "__version__", None),
        "lstm_fused_commit": _git_commit(),
        # Whether the extension was built from this tree's csrc/ (None: not an editable install).
        "lstm_fused_build_matches_source": lstm_fused._provenance.build_matches_source(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onednn": torch.backends.mkldnn.is_available(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError as e:
        versions["onnxruntime"] = f"not available ({type(e).__name__})"
    try:
        import flashrnn  # noqa: F401
        from importlib.metadata import version

        versions["flashrnn"] = version("flashrnn")
    except Exception as e:
        versions["flashrnn"] = f"not available ({type(e).__name__})"
    return machine, versions
