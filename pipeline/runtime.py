"""Process-wide run settings: threads, seeds, device."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def configure(seed: int, threads: int) -> None:
    """Fix the thread count and every global RNG so the same params give the same numbers."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_problem(name: str) -> str | None:
    """Why `name` (params 'device', already of the form cpu, cuda, cuda:N or mps) cannot be used here, or None."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"'device' is {name!r} but CUDA is not available on this machine; expected 'cpu'"
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"'device' is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
    if name == "mps" and not torch.backends.mps.is_available():
        return "'device' is 'mps' but MPS is not available on this machine; expected 'cpu'"
    return None


def resolve_device(name: str) -> torch.device:
    problem = device_problem(name)
    if problem:
        raise RuntimeError(f"params {problem}")
    return torch.device(name)


def autocast(device: torch.device | str, mixed_precision: str):
    """bf16 autocast on CUDA or the CPU when `mixed_precision` is "bf16"; otherwise a no-op.

    On a CPU with AVX-512 BF16 the UNet runs ~1.5x faster and the preference model trains ~1.45x faster
    (bench/RESULTS.md); weights and optimiser state stay float32."""
    device = torch.device(device)
    if mixed_precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
