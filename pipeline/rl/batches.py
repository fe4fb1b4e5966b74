"""Drawing a task's prompts for one iteration: prompt groups, group ids and per-sample seeds."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TaskBatch:
    prompts: list[str]
    metadata: list[dict]  # per sample: {"spec": ..., "group": g}
    group_ids: torch.Tensor  # [B] int64, samples of one prompt share a group
    seeds: list[int]  # per-sample step-noise seeds
    init_seeds: list[int]  # per-sample initial-noise seeds (shared within a group when asked)


def draw_task_batch(records: list[dict], rng: np.random.Generator, *, prompts_per_iteration: int,
                    samples_per_prompt: int, share_group_noise: bool, group_offset: int = 0) -> TaskBatch:
    """`prompts_per_iteration` prompts, each repeated `samples_per_prompt` times, fresh noise seeds.

    `group_offset` keeps group ids distinct across processes so gathered groups never merge.
    """
    if not records:
        raise ValueError("the task's train prompt corpus is empty")
    picks = rng.choice(len(records), size=prompts_per_iteration, replace=len(records) < prompts_per_iteration)
    prompts, metadata, groups, seeds, init_seeds = [], [], [], [], []
    for g, index in enumerate(picks):
        record = records[int(index)]
        group_seed = int(rng.integers(2**31 - 1))
        for _ in range(samples_per_prompt):
            seed = int(rng.integers(2**31 - 1))
            prompts.append(record["prompt"])
            metadata.append({"spec": record.get("spec"), "group": group_offset + g})
            groups.append(group_offset + g)
            seeds.append(seed)
            init_seeds.append(group_seed if share_group_noise else seed)
    return TaskBatch(prompts, metadata, torch.tensor(groups, dtype=torch.int64), seeds, init_seeds)
