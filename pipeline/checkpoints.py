"""Training checkpoints: everything needed to resume bitwise (weights, optimiser, EMA, RNG states).

Written atomically under a folder that DVC does not delete between runs, named by a run key
(`run_key`) that covers everything that shapes the run; the newest readable one wins, and a
corrupt newest one fails with a clear error rather than silently restarting.
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from pipeline.errors import CheckpointError
from pipeline.io import atomic_path
from pipeline.keys import params_hash
from pipeline.params import Params

_NAME = re.compile(r"^step-(\d+)\.pt$")


def run_key(name: str, params: Params, *parts) -> str:
    """A checkpoint folder name that changes whenever anything that shapes the run changes: the seed,
    device and thread count (CPU kernels reduce in a thread-dependent order) and `parts`, which must
    name every params section and input folder fingerprint the run reads. A checkpoint of another
    run must never be resumed."""
    parts = (params.seed, params.device, params.threads, *parts)
    dumped = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return f"{name}-{params_hash(dumped)[:12]}"


def folder_fingerprint(source: str | Path, max_bytes: int = 200_000_000) -> str:
    """Content hash of a model folder (names and sizes only past `max_bytes`); the text itself for a hub id."""
    path = Path(source)
    if not path.is_dir():
        return str(source)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    small = sum(p.stat().st_size for p in files) <= max_bytes
    for file in files:
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes() if small else str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]


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
