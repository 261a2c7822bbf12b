"""Where training runs and in which precision: the device, bfloat16 autocast, the CPU's instructions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .trainer import TrainConfig


def resolve_device(name: str) -> torch.device:
    """The training device: "auto" picks CUDA, then Apple MPS, then the CPU."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU; use device = 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def training_autocast(config: TrainConfig, device: torch.device | str) -> torch.autocast:
    """The context the forward pass and loss run in: bfloat16 autocast where the precision
    (resolved for `device`, see `resolve_precision`) is "bf16"."""
    device = torch.device(device)
    enabled = resolve_precision(config.precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """ "fp32" or "bf16" for a configured precision: "auto" is bf16 on a CUDA device that supports
    it and on a CPU with bfloat16 instructions (AVX512-BF16, AMX), fp32 elsewhere."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "fp32" if cpu_lacks_bf16() or not cpu_flags() else "bf16"
    return "fp32"


def cpu_flags() -> str:
    """The CPU feature flags as /proc/cpuinfo lists them; "" where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def cpu_lacks_bf16() -> bool:
    """True when the CPU flags show no bfloat16 instructions (AVX512-BF16, AMX); False if unknown."""
    flags = cpu_flags()
    return bool(flags) and not any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
