"""Sample sets on disk: a folder of PNGs plus index.jsonl, one row per (task, prompt, seed).

Written by the sample stages; read and aligned across models (base, control, RL) by evaluation
and the report.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.corpora import NAME_PATTERN, NAME_RULE
from pipeline.errors import DataFileError
from pipeline.io import atomic_path, read_jsonl, write_jsonl

INDEX = "index.jsonl"
MODELS = ("base", "control", "rl")
REQUIRED = ("base", "rl")
# The sampler check's set inside a model's sample folder: the preference eval prompts and seeds sampled
# with sampling.check_eta (its rows carry their `eta`), in the same format as the folder's own set.
CHECK = "check"


def write_samples(out: str | Path, rows: list[dict], images: torch.Tensor,
                  check: tuple[list[dict], torch.Tensor] | None = None) -> None:
    """PNGs plus index.jsonl (prompt, task, seed, path), and the sampler check's (rows, images) in the
    CHECK subfolder, written atomically as one folder."""
    with atomic_path(Path(out), directory=True) as tmp:
        _write_set(tmp, rows, images)
        if check is not None:
            _write_set(tmp / CHECK, *check)


def _write_set(tmp_folder: Path, rows: list[dict], images: torch.Tensor) -> None:
    """One sample set into `tmp_folder`, a folder inside atomic_path's temporary one."""
    tmp_folder.mkdir(exist_ok=True)
    indexed = []
    for number, (row, image) in enumerate(zip(rows, images)):
        name = f"{row['task']}/{number:05d}.png"
        (tmp_folder / row["task"]).mkdir(exist_ok=True)
        Image.fromarray(image.numpy()).save(tmp_folder / name)
        indexed.append({**row, "path": name})
    write_jsonl(tmp_folder / INDEX, indexed)


def read_samples(folder: str | Path) -> tuple[list[dict], np.ndarray]:
    """A sample folder's rows and images; DataFileError naming the file and line of any bad row or image."""
    folder = Path(folder)
    rows = read_jsonl(folder / INDEX, required=("prompt", "task", "seed", "path"), check=_row_checker(folder))
    seen: dict[tuple, int] = {}
    for number, row in enumerate(rows, start=1):
        if seen.setdefault(pair_key(row), number) != number:
            raise DataFileError(f"{folder / INDEX}: rows {seen[pair_key(row)]} and {number} are both {pair_key(row)}; "
                                "expected one image per (task, prompt, seed)")
    images = [_read_image(folder / r["path"]) for r in rows]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataFileError(f"{folder}: images of different sizes {sorted(shapes)}; expected the images of one "
                            "model's sample stage")
    return rows, np.stack(images)


def _row_checker(folder: Path):
    """What is wrong with an index row: a task name that is not plain, a seed that is not a whole number, an
    image path outside the folder (a set could show another model's images) or missing."""
    inside = folder.resolve()

    def check(row: dict) -> str | None:
        if not isinstance(row["task"], str) or not re.fullmatch(NAME_PATTERN, row["task"]):
            return f"'task' is {row['task']!r}; expected {NAME_RULE}"
        if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
            return f"'seed' is {row['seed']!r}; expected a whole number"
        path = row["path"]
        if not isinstance(path, str) or not (folder / path).resolve().is_relative_to(inside):
            return f"'path' {path!r} points outside {folder}; expected an image inside the sample folder"
        if not (folder / path).is_file():
            return f"'path' {path!r}: image not found in {folder}"
        return None

    return check


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: not an image, truncated, corrupt
        raise DataFileError(f"{path}: cannot read the image ({type(exc).__name__}: {exc}); expected a PNG the "
                            "sample stage wrote (re-run it)") from None


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
                raise DataFileError(f"{folder}: sample folder not found (run `dvc repro sample_{name}`)")
            warnings.warn(f"{folder} is missing: control comparisons are omitted", RuntimeWarning, stacklevel=2)
            continue
        loaded[name] = read_samples(folder)
    return align(loaded, {name: samples_dir / name for name in loaded})


def load_check(samples_dir: str | Path, models) -> Aligned | None:
    """The sampler check's sets (`<samples_dir>/<model>/check`) of `models`, aligned, or None when one lacks
    it (check_eta null, or a folder sampled before the check existed: with a warning if only some lack it)."""
    folders = {name: Path(samples_dir) / name / CHECK for name in models}
    lacking = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if lacking:
        if len(lacking) < len(folders):
            warnings.warn(f"{', '.join(lacking)} missing: the sampler check (sampler_check.*) is omitted; re-run "
                          "the sample stages to compare every model", RuntimeWarning, stacklevel=2)
        return None
    loaded = {name: read_samples(folder) for name, folder in folders.items()}
    etas = {name: {row.get("eta") for row in rows} for name, (rows, _) in loaded.items()}
    found = set().union(*etas.values())
    if len(found) != 1 or None in found:
        raise DataFileError(f"{Path(samples_dir)}: the sampler check's sets give eta {etas}; expected one eta, the "
                            "same in every model's check/index.jsonl (re-run the sample stages)")
    return align(loaded, folders)


def align(loaded: dict[str, tuple[list[dict], np.ndarray]], folders: dict[str, Path] | None = None) -> Aligned:
    """The models' samples aligned on (task, prompt, seed), in base's order. Every model must have the
    same pairs: judging on the pairs some model lacks would compare the models on different prompts."""
    folders = folders or {}
    indexes = {name: {pair_key(r): i for i, r in enumerate(rows)} for name, (rows, _) in loaded.items()}
    base_rows = loaded["base"][0]
    common = [k for k in indexes["base"] if all(k in index for index in indexes.values())]
    if not common:
        raise DataFileError("the sample sets share no (task, prompt, seed) pair; expected sets sampled from the same "
                            "prompts and params (re-run the sample stages)")
    for name, index in indexes.items():
        for other, other_index in indexes.items():
            lacking = [k for k in other_index if k not in index]
            if lacking:
                raise DataFileError(f"{folders.get(name, name)}: lacks {len(lacking)} of the {len(other_index)} "
                                    f"(task, prompt, seed) samples of {folders.get(other, other)}, e.g. {lacking[0]}; "
                                    "expected sets sampled from the same prompts and params (re-run its sample stage)")
    images = {name: loaded[name][1][[indexes[name][k] for k in common]] for name in loaded}
    return Aligned([base_rows[indexes["base"][k]] for k in common], images)
