"""Training checkpoints: everything needed to resume bitwise (weights, optimiser, EMA, RNG states).

Written atomically under a folder that DVC does not delete between runs; the newest readable one
wins, and a corrupt newest one fails with a clear error rather than silently restarting.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import CheckpointError
from pipeline.io import atomic_path

_NAME = re.compile(r"^step-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    directory = Path(directory)
    path = directory / f"step-{step:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: str | Path) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint, or None when there is none."""
    found = list_checkpoints(directory)
    if not found:
        return None
    step, path = found[-1]
    try:
        return step, torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign file
        raise CheckpointError(
            f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc}); delete it to resume from an older one "
            f"or delete {Path(directory)} to start over"
        ) from None


def clear_checkpoints(directory: str | Path) -> None:
    for _, path in list_checkpoints(directory):
        path.unlink(missing_ok=True)
