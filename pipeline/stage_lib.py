"""Helpers several stages share: run keys for checkpoint folders, accuracy on eval prompts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from pipeline.config import Params
from pipeline.evaluation.accuracy import spec_accuracy
from pipeline.io import read_jsonl
from pipeline.models.base import Text2ImageModel
from pipeline.samples import noise_seed
from pipeline.sampling import sample_images
from pipeline.world.scene import PromptSpec


def run_key(name: str, *parts) -> str:
    """A folder name that changes whenever anything that shapes the run changes."""
    dumped = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    digest = hashlib.sha256(json.dumps(dumped, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def evaluate_accuracy(model: Text2ImageModel, prompts_dir: str | Path, params: Params,
                      progress: bool = True) -> dict[str, float]:
    """Detector accuracy on the single and composition eval prompts x `sampling.seeds`."""
    prompts, seeds, specs = [], [], []
    for task in ("single", "composition"):
        for record in read_jsonl(Path(prompts_dir) / f"{task}.eval.jsonl", required=("prompt", "spec")):
            for seed in params.sampling.seeds:
                prompts.append(record["prompt"])
                seeds.append(noise_seed(record["prompt"], seed))
                specs.append(PromptSpec.from_dict(record["spec"]))
    s = params.sampling
    images = sample_images(model, prompts, seeds, steps=s.steps, guidance=s.guidance, eta=s.eta,
                           batch_size=s.batch_size, progress=progress)
    return spec_accuracy(images.numpy(), specs)


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
