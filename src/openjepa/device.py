"""Devices: which one a name means, and the one precision rule (when a run computes in bf16)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str, what: str = "meta.device") -> torch.device:
    """'auto' (CUDA where present, else the CPU), 'cpu', 'cuda' or 'cuda:N'; anything else, or a GPU
    that is not there, is a ConfigError naming ``what``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} {name!r} is not a device openjepa runs on: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} is {name!r} but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what} is {name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AMX or AVX512-BF16): there bf16 inference is
    ~3x faster than fp32; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def uses_bf16(device: torch.device, setting: bool | str) -> bool:
    """Whether work on ``device`` runs under bf16 autocast: ``setting`` true or false says so; 'auto'
    means on CUDA and on CPUs with native bf16 (BENCHMARKS.md: about 1.9x the fp32 training step on
    an AMX Xeon, accuracy within 0.2 linear points at equal steps), fp32 elsewhere."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    return bool(setting)


def resolve_precision(precision: str, device: torch.device) -> str:
    """A command's ``--precision`` ('auto', 'fp32' or 'bf16') as 'bf16' or 'fp32' on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return "bf16" if uses_bf16(device, {"auto": "auto", "bf16": True, "fp32": False}[precision]) else "fp32"


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16`` (no GradScaler: bf16 has fp32's range); else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def training_bf16(meta, device: torch.device) -> bool:
    """Whether training (the ``meta`` section's settings) runs under bf16 autocast on ``device``:
    ``meta.use_bfloat16`` on CUDA, ``meta.cpu_bfloat16`` (true, false or auto) on the CPU."""
    return uses_bf16(device, meta.use_bfloat16 if device.type == "cuda" else meta.cpu_bfloat16)
