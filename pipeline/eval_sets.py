"""The evaluation sets: every eval prompt x seed, with noise fixed by (prompt, seed), sampled from a model.

The noise seed depends only on the prompt text and the seed, so the base, control and RL models
are compared on identical (prompt, seed) pairs whatever the file order.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

from pipeline.corpora import DIVERSITY, EVAL_CORPORA, PREFERENCE
from pipeline.io import read_jsonl
from pipeline.models.base import Text2ImageModel
from pipeline.params import Params
from pipeline.sampling import sample_images
from pipeline.world.captions import record_problem


def noise_seed(prompt: str, seed: int) -> int:
    return zlib.crc32(f"{prompt}|{seed}".encode()) & 0x7FFFFFFF


def eval_rows(prompts_dir: str | Path, params: Params, tasks: tuple[str, ...] = EVAL_CORPORA) -> list[dict]:
    """One row per (eval prompt, seed) of `tasks`; diversity prompts get `diversity_seeds` seeds each."""
    rows = []
    for task in tasks:
        records = read_jsonl(Path(prompts_dir) / f"{task}.eval.jsonl", required=("prompt", "spec"),
                             check=record_problem)
        seeds = range(params.sampling.diversity_seeds) if task == DIVERSITY else params.sampling.seeds
        for index, record in enumerate(records):
            for seed in seeds:
                rows.append({"task": task, "prompt": record["prompt"], "spec": record["spec"],
                             "unseen": bool(record.get("unseen", False)), "prompt_index": index,
                             "seed": int(seed), "noise_seed": noise_seed(record["prompt"], int(seed))})
    return rows


def check_rows(prompts_dir: str | Path, params: Params) -> list[dict]:
    """The sampler check's rows: the preference rows of `eval_rows` (same prompts, seeds and noise), each with
    `eta` = sampling.check_eta, the other sampler's; [] when the check is off (check_eta null)."""
    eta = params.sampling.check_eta
    return [] if eta is None else [{**row, "eta": eta} for row in eval_rows(prompts_dir, params, (PREFERENCE,))]


def sample_rows(model: Text2ImageModel, rows: list[dict], params: Params, progress: bool = True,
                label: str = "sampling", eta: float | None = None) -> torch.Tensor:
    """Images of `rows` with the params' sampler; `eta` (e.g. the sampler check's) in place of sampling.eta."""
    s = params.sampling
    return sample_images(model, [r["prompt"] for r in rows], [r["noise_seed"] for r in rows], steps=s.steps,
                         guidance=s.guidance, eta=s.eta if eta is None else eta, batch_size=s.batch_size,
                         progress=progress, label=label)
