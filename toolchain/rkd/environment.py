"""What a report records about the software and hardware it ran on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

_PACKAGES = ("rkd", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "pyautoattack", "tensorrt")
#: The x86 extensions that decide how fast fp32 (AVX2/AVX-512), int8 (VNNI, AMX-INT8) and bf16 (AVX512-BF16,
#: AMX-BF16) kernels run in torch (oneDNN) and ONNX Runtime, as /proc/cpuinfo names them.
CPU_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def package_versions() -> dict[str, str | None]:
    """Installed versions of rkd and the libraries whose behaviour a number depends on (None if absent)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_description(device: str) -> dict[str, Any]:
    """The device a computation ran on: CPU model and thread count, or the GPU name and compute capability."""
    import torch

    info: dict[str, Any] = {"device": device, "python": platform.python_version(), "machine": platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(idx)))
    else:
        info.update(cpu_description())
        info["torch_threads"] = torch.get_num_threads()
    return info


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model, core count, torch's kernel level (``torch.backends.cpu.get_cpu_capability()``) and which
    of :data:`CPU_EXTENSIONS` it has (from ``/proc/cpuinfo``, or ``cpuinfo``; empty where there is none).

    ``amx_bf16`` or ``avx512_bf16`` is what makes ``train.amp: bf16`` pay off on a CPU; ``avx512_vnni`` or
    ``amx_int8`` what makes ONNX Runtime's INT8 kernels fast.
    """
    import torch

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_extensions": [f for f in CPU_EXTENSIONS if f in flags],
    }


def cpu_runs_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16); None where /proc/cpuinfo lists no flags
    (not Linux x86). Without them oneDNN emulates bf16, usually slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((line.partition(":")[2].split() for line in cpuinfo.splitlines()
                  if line.partition(":")[0].strip() == "flags"), None)
    if flags is None:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags


def runtime_availability() -> dict[str, dict[str, Any]]:
    """Which inference runtimes can run here, and why not when they cannot (``rkd env``)."""
    import importlib.util

    import torch

    out: dict[str, dict[str, Any]] = {"torch": {"available": True, "devices": ["cpu"]}}
    if torch.cuda.is_available():
        out["torch"]["devices"] += [f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                                    for i in range(torch.cuda.device_count())]
    if importlib.util.find_spec("onnxruntime") is None:
        out["onnxruntime"] = {"available": False, "why": "onnxruntime is not installed (pip install onnxruntime)"}
    else:
        import onnxruntime

        out["onnxruntime"] = {"available": True, "providers": onnxruntime.get_available_providers()}
    if importlib.util.find_spec("tensorrt") is None:
        out["tensorrt"] = {"available": False, "why": "tensorrt is not installed: pip install 'rkd[tensorrt]' with "
                           "NVIDIA's package index, or use NVIDIA's PyTorch container (docker/gpu.Dockerfile)"}
    elif not torch.cuda.is_available():
        out["tensorrt"] = {"available": False, "why": "tensorrt is installed but no CUDA GPU is visible"}
    else:
        out["tensorrt"] = {"available": True}
    return out
