"""What this machine offers a run, for params set to `auto`: CPU cores for torch threads, and
whether bf16 autocast pays here.

`threads: auto` resolves to the cores this process may use (its CPU affinity, and a cgroup CPU
quota where one is set), shared among the processes of an `accelerate launch`, and capped at
MAX_AUTO_THREADS: the tiny model gains nothing from more. `model.mixed_precision: auto` resolves
to `bf16` on a CPU with native bf16 instructions (AVX-512 BF16 or AMX) and on a CUDA device that
supports it, else to `no`. Both are resolved once, when params are read (pipeline/config.py), so
every later use (torch, checkpoint run keys, MLflow params) sees the resolved value. Torch-free
except for the CUDA query, which imports torch only for a CUDA device.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

MAX_AUTO_THREADS = 8
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 matrix instructions
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
CPUINFO = Path("/proc/cpuinfo")


def _cgroup_cores(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole cores the cgroup's CPU quota allows (rounded up), or None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no such file, or "max": no quota
        return None


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cores()
    return max(1, min(cores, quota) if quota else cores)


def local_processes() -> int:
    """Processes sharing this machine in one launch (accelerate and torchrun set LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def auto_threads() -> int:
    """`threads: auto`: this process's share of the available cores, at most MAX_AUTO_THREADS."""
    return max(1, min(MAX_AUTO_THREADS, available_cores() // local_processes()))


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU has native bf16 matrix instructions (without them bf16 autocast is slower)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def auto_mixed_precision(device: str) -> str:
    """`model.mixed_precision: auto` for `device`: "bf16" where it has native bf16 support, else "no"."""
    if device == "cpu":
        return "bf16" if cpu_has_bf16() else "no"
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return "no"
