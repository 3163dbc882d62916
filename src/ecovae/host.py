"""The machine and the software a run or a benchmark ran on, as its records give them: CPU flags (what the fast
encoding paths can use), model, cores, threads, GPUs, and the package versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ecovae import __version__


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FAST_PATH_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def hardware_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD kernels torch uses: AVX2, AVX512, ...
        "cpu_flags": [f for f in FAST_PATH_FLAGS if f in cpu_flags()],  # what bf16 and int8 encoding can use
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def package_versions() -> dict:
    import importlib.metadata as md

    names = ["torch", "lightning", "numpy", "soundfile", "soxr", "librosa", "pandas", "pyarrow", "safetensors"]
    out = {"ecovae": __version__, "python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return out
