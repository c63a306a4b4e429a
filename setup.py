"""Builds lstm_fused._C: the CPU ops always, the CUDA ops when torch has CUDA and nvcc is present.

Environment:
  LSTM_FUSED_FORCE_CPU=1       build the CPU ops only, even where CUDA could be built
  LSTM_FUSED_CUDA_ARCHS="80;90" compute capabilities to build SASS for; PTX is added for the newest
"""
import glob
import importlib.util
import os
import shutil

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _source_hash():
    """lstm_fused/_provenance.py's hash of csrc/, compiled into the extension (lstm_fused._C.source_hash)."""
    spec = importlib.util.spec_from_file_location("_provenance", os.path.join(ROOT, "lstm_fused", "_provenance.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.source_hash(ROOT)


def _want_cuda():
    if os.environ.get("LSTM_FUSED_FORCE_CPU", "0") == "1":
        return False
    import torch

    has_nvcc = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    return torch.version.cuda is not None and has_nvcc


def _gencode_flags():
    archs = [a.strip() for a in os.environ.get("LSTM_FUSED_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    newest = max(archs, key=int)
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def _extension():
    cpu_sources = [s for s in _sources("csrc/ops/*.cpp") if not s.endswith("_cuda.cpp")]
    cpu_sources += _sources("csrc/kernels/cpu/*.cpp")
    # The hash as an identifier (a leading h), which module.cpp turns into a string: a quoted
    # define does not survive the build's layers of shell quoting.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", f"-DLSTM_FUSED_SOURCE_HASH=h{_source_hash()}"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "kernels")]
    if _want_cuda():
        sources = cpu_sources + _sources("csrc/ops/*_cuda.cpp") + _sources("csrc/kernels/cuda/*.cu")
        nvcc = ["-O3", "-std=c++17", "-lineinfo", "-DLSTM_FUSED_WITH_CUDA"] + _gencode_flags()
        return cpp_extension.CUDAExtension(
            "lstm_fused._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DLSTM_FUSED_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "lstm_fused._C",
        cpu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="lstm_fused",
    version="0.1.0",
    description="Fused LSTM kernels for PyTorch: a drop-in torch.nn.LSTM",
    packages=find_packages(include=["lstm_fused", "lstm_fused.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    install_requires=["torch"],
    python_requires=">=3.9",
)
