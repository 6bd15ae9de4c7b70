"""What reports record about the CPU: model and the extensions that decide fp32/bf16/int8 speed."""

from __future__ import annotations

import platform

import torch

from rkd.environment import cpu_description, device_description

_INTEL = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
_OLD_AMD = """model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_description_reads_model_and_extensions() -> None:
    intel = cpu_description(_INTEL)
    assert intel["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"  # the first processor's
    assert intel["cpu_extensions"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    amd = cpu_description(_OLD_AMD)
    assert amd["cpu"] == "AMD EPYC 7B12" and amd["cpu_extensions"] == ["avx2"]
    assert amd["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_cpu_description_without_cpuinfo_falls_back_to_platform() -> None:
    info = cpu_description("")
    assert info["cpu"] == (platform.processor() or platform.machine()) and info["cpu_extensions"] == []
    assert info["cpu_cores"] >= 1


def test_device_description_on_cpu_records_the_cpu() -> None:
    info = device_description("cpu")
    assert {"cpu", "cpu_cores", "cpu_capability", "cpu_extensions", "torch_threads"} <= info.keys()


def test_cpu_runs_bf16_from_flags() -> None:
    from rkd.environment import cpu_runs_bf16

    assert cpu_runs_bf16(_INTEL) is True
    assert cpu_runs_bf16(_OLD_AMD) is False
    assert cpu_runs_bf16("model name\t: Apple M2\n") is None  # no flags line: unknown
