"""Process-wide run settings: threads, seeds, device."""
from __future__ import annotations

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


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"params 'device' is {name!r} but CUDA is not available on this machine; use 'cpu'")
    return torch.device(name)
