"""Training checkpoints: everything needed to resume bitwise (weights, optimiser, EMA, RNG states).

Written atomically under a folder that DVC does not delete between runs, named by a run key
(`run_key`) that covers everything that shapes the run. They hold tensors and plain containers
only and load with `torch.load(weights_only=True)`, so a planted file cannot run code. The newest
usable one wins; an unusable one falls back to the next older with a warning, and when none is
usable the run fails naming the file rather than silently restarting.
"""
from __future__ import annotations

import hashlib
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel

from pipeline.errors import CheckpointError
from pipeline.io import atomic_path
from pipeline.keys import params_hash
from pipeline.params import Params

_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\.step-\d+\.pt\.")  # atomic_path's temporary sibling of a checkpoint
_META = "checkpoint"  # the key that says what a checkpoint is: {"kind", "step", "format"}
FORMAT = 2  # 1: pickled objects (loaded with weights_only=False); 2: tensors and plain containers


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
    """The global RNGs' states as plain containers and tensors (what `torch.load(weights_only=True)` reads)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                      has_gauss, cached], "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], kind: str, keep: int = 2) -> Path:
    """Write `state` (tensors and plain containers only) as checkpoint `step` of a `kind` run; keep the
    newest `keep` (params `checkpoint_keep`)."""
    directory = Path(directory)
    path = directory / f"step-{step:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save({_META: {"kind": kind, "step": step, "format": FORMAT}, **state}, tmp)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resume(directory: str | Path, kind: str, restore: Callable[[dict[str, Any]], None]) -> int:
    """Restore the newest usable checkpoint of a `kind` run with `restore(state)`; return its step, or 0
    when there is none. Checkpoints load with `weights_only=True`: tensors and plain containers only, never
    code. One that cannot be read, is of another kind or step than its name says, or that `restore`
    rejects, is passed over for the next older one (with a warning once one is usable); if none is,
    CheckpointError names the newest. Temporary files of interrupted checkpoint writes are removed first."""
    directory = Path(directory)
    check_folder(directory)
    remove_stale_temporaries(directory)
    found = list_checkpoints(directory)
    problems = []
    for step, path in reversed(found):
        try:
            state = _read(path, kind, step)
        except CheckpointError as exc:
            problems.append(f"{path}: unusable checkpoint: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 (truncated, foreign or code-carrying file)
            problems.append(f"{path}: corrupt checkpoint ({_reason(exc)})")
            continue
        try:
            restore(state)
        except Exception as exc:  # noqa: BLE001 (shapes or keys of another model)
            problems.append(f"{path}: checkpoint does not fit this run ({_reason(exc)})")
            continue
        if problems:
            warnings.warn(f"{'; '.join(problems)}; resumed from the older {path}", RuntimeWarning, stacklevel=2)
        return step
    if problems:
        raise CheckpointError(f"{problems[0]}; no checkpoint in {directory} is usable: delete it to resume from an "
                              f"older one, or delete {directory} to start over")
    return 0


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _read(path: Path, kind: str, step: int) -> dict[str, Any]:
    """A checkpoint's state, checked to be of `kind` and `step`; any failure raises."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = state.get(_META) if isinstance(state, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"not a checkpoint of this pipeline (format {FORMAT}); expected one that "
                              "pipeline/checkpoints.py wrote")
    if meta.get("kind") != kind:
        raise CheckpointError(f"a {meta.get('kind')!r} checkpoint; expected a {kind!r} one")
    if meta.get("step") != step:
        raise CheckpointError(f"holds step {meta.get('step')} but its name says step {step}")
    return state


def check_folder(directory: Path) -> None:
    """A checkpoint folder (and the folders above it) must be folders where they exist."""
    for folder in (directory, *directory.parents):
        if folder.exists():
            if not folder.is_dir():
                raise CheckpointError(f"{folder}: is a file; expected a checkpoint folder (delete it, or pass "
                                      "another --checkpoints)")
            return


def remove_stale_temporaries(directory: Path) -> None:
    """The hidden temporary folders (`pipeline.io.atomic_path`) of checkpoint writes that were killed."""
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_dir() and _TEMPORARY.match(path.name):
                shutil.rmtree(path, ignore_errors=True)


def clear_checkpoints(directory: str | Path) -> None:
    for _, path in list_checkpoints(directory):
        path.unlink(missing_ok=True)
