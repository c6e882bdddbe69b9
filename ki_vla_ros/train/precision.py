"""Training precision: which autocast the trainer runs the forward pass under.

`precision: auto | bf16 | fp32` (TrainConfig). ``auto`` is bf16 autocast on CUDA and on a CPU
with native bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16), fp32 elsewhere. Autocast
only: parameters, gradients, the AdamW state and the EMA stay fp32 (matmuls and convolutions run
in bf16 inside `torch.autocast`, reductions, norms and the losses in fp32).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

#: CPU feature flags (torch's capability names and /proc/cpuinfo flags) that mean native bf16
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16 features this CPU has, from torch's CPU capabilities and ``/proc/cpuinfo``
    (``cpuinfo``: its text, for tests). Empty: no native bf16 (autocast would be emulated, slow)."""
    found: set[str] = set()
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None and cpuinfo is None:
        try:
            found |= {f for f, on in caps().items() if on is True and f in BF16_CPU_FLAGS}
        except RuntimeError:  # no cpuinfo backend on this platform
            pass
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86 / Arm
            found |= set(value.split()) & set(BF16_CPU_FLAGS)
    return sorted(found)


def resolve_precision(requested: str, device: torch.device, cpuinfo: str | None = None) -> tuple[str, str]:
    """``(precision, reason)``: ``precision`` is ``"bf16"`` or ``"fp32"``, the one the run uses."""
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision: expected auto, bf16 or fp32, got {requested!r}")
    if requested == "fp32":
        return "fp32", "precision: fp32"
    if device.type == "cuda":
        return "bf16", f"precision: {requested} on CUDA"
    if device.type != "cpu":
        if requested == "bf16":
            raise ValueError(f"precision: bf16 autocast is implemented for cpu and cuda, not {device.type}")
        return "fp32", f"precision: auto on {device.type}"
    flags = cpu_bf16_flags(cpuinfo)
    if requested == "bf16":
        note = ", ".join(flags) if flags else "no native bf16 on this CPU: emulated, slower than fp32"
        return "bf16", f"precision: bf16 ({note})"
    if flags:
        return "bf16", f"precision: auto, the CPU has {', '.join(flags)}"
    return "fp32", "precision: auto, the CPU has no native bf16"


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
