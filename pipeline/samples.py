"""Sample sets on disk: a folder of PNGs plus index.jsonl, one row per (task, prompt, seed).

Written by the sample stages; read by evaluation and the report.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.io import atomic_path, read_jsonl, write_jsonl

INDEX = "index.jsonl"


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
