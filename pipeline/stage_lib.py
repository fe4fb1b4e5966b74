"""Helpers several stages share: run keys for checkpoint folders, accuracy on eval prompts."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from pipeline.corpora import SPECIFIED_CORPORA
from pipeline.eval_sets import eval_rows, sample_rows
from pipeline.evaluation.accuracy import spec_accuracy
from pipeline.keys import params_hash
from pipeline.models.base import Text2ImageModel
from pipeline.params import Params
from pipeline.world.scene import PromptSpec


def run_key(name: str, params: Params, *parts) -> str:
    """A checkpoint folder name that changes whenever anything that shapes the run changes: the seed,
    device and thread count (CPU kernels reduce in a thread-dependent order) and `parts`, which must
    name every params section and input folder fingerprint the run reads. A checkpoint of another
    run must never be resumed."""
    parts = (params.seed, params.device, params.threads, *parts)
    dumped = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return f"{name}-{params_hash(dumped)[:12]}"


def evaluate_accuracy(model: Text2ImageModel, prompts_dir: str | Path, params: Params,
                      progress: bool = True) -> dict[str, float]:
    """Detector accuracy on the single and composition eval prompts x `sampling.seeds`."""
    rows = eval_rows(prompts_dir, params, tasks=SPECIFIED_CORPORA)
    images = sample_rows(model, rows, params, progress=progress)
    return spec_accuracy(images.numpy(), [PromptSpec.from_dict(r["spec"]) for r in rows])


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
