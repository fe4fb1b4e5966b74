"""Sample sets on disk: a folder of PNGs plus index.jsonl, one row per (task, prompt, seed).

Written by the sample stages; read and aligned across models (base, control, RL) by evaluation
and the report.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.io import atomic_path, read_jsonl, write_jsonl

INDEX = "index.jsonl"
MODELS = ("base", "control", "rl")
REQUIRED = ("base", "rl")


def write_samples(out: str | Path, rows: list[dict], images: torch.Tensor) -> None:
    """PNGs plus index.jsonl (prompt, task, seed, path), written atomically as one folder."""
    with atomic_path(Path(out), directory=True) as tmp:
        indexed = []
        for number, (row, image) in enumerate(zip(rows, images)):
            name = f"{row['task']}/{number:05d}.png"
            (tmp / row["task"]).mkdir(exist_ok=True)
            Image.fromarray(image.numpy()).save(tmp / name)
            indexed.append({**row, "path": name})
        write_jsonl(tmp / INDEX, indexed)


def read_samples(folder: str | Path) -> tuple[list[dict], np.ndarray]:
    folder = Path(folder)
    rows = read_jsonl(folder / INDEX, required=("prompt", "task", "seed", "path"))
    images = np.stack([np.asarray(Image.open(folder / r["path"]).convert("RGB")) for r in rows])
    return rows, images


def pair_key(row: dict) -> tuple:
    return row["task"], row["prompt"], int(row["seed"])


@dataclass
class Aligned:
    """Rows (from base) and each model's images, aligned on (task, prompt, seed)."""

    rows: list[dict]
    images: dict[str, np.ndarray]
    prompts: np.ndarray = field(init=False)  # per row, its (task, prompt) cluster name

    def __post_init__(self):
        self.prompts = np.array([f"{r['task']}|{r['prompt']}" for r in self.rows])

    def subset(self, mask: np.ndarray) -> "Aligned":
        mask = np.asarray(mask, dtype=bool)
        return Aligned([r for r, m in zip(self.rows, mask) if m], {k: v[mask] for k, v in self.images.items()})

    def where_task(self, *tasks: str) -> "Aligned":
        return self.subset(np.array([r["task"] in tasks for r in self.rows], dtype=bool))


def load_models(samples_dir: str | Path) -> Aligned:
    """Read `<samples_dir>/{base,control,rl}` and align them; control is optional (warns if missing)."""
    samples_dir = Path(samples_dir)
    loaded = {}
    for name in MODELS:
        folder = samples_dir / name
        if not folder.is_dir():
            if name in REQUIRED:
                raise FileNotFoundError(f"{folder}: sample folder not found (run `dvc repro sample_{name}`)")
            warnings.warn(f"{folder} is missing: control comparisons are omitted", RuntimeWarning, stacklevel=2)
            continue
        loaded[name] = read_samples(folder)
    return align(loaded)


def align(loaded: dict[str, tuple[list[dict], np.ndarray]]) -> Aligned:
    """Keep the (task, prompt, seed) pairs every model has, in base's order; warn about dropped ones."""
    indexes = {name: {pair_key(r): i for i, r in enumerate(rows)} for name, (rows, _) in loaded.items()}
    base_rows = loaded["base"][0]
    common = [k for k in indexes["base"] if all(k in index for index in indexes.values())]
    if not common:
        raise ValueError("the sample sets share no (task, prompt, seed) pair; were they sampled from the same prompts?")
    dropped = max(len(index) for index in indexes.values()) - len(common)
    if dropped:
        warnings.warn(f"{dropped} sample(s) lack a counterpart in every model and are left out", RuntimeWarning,
                      stacklevel=2)
    images = {name: loaded[name][1][[indexes[name][k] for k in common]] for name in loaded}
    return Aligned([base_rows[indexes["base"][k]] for k in common], images)
