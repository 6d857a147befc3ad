"""Devices: which one a name means, and whether the CPU computes in bf16 natively."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError


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
