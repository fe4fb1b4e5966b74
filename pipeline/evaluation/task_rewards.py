"""The training rewards themselves, measured on held-out eval samples of every model.

For each task in `rl.tasks`: the reward of base, control and RL samples of that task's eval
corpus (`reward.<task>.<model>`), the paired gains `rl_minus_base` / `rl_minus_control`, and the
RL gain in base-model standard deviations (the unit the sanity experiment is judged in).
Distribution-level rewards score each prompt's samples as one minibatch, as in training.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.rewards.registry import RewardContext, build_reward


def _scores(reward, images: np.ndarray, rows: list[dict], groups: np.ndarray) -> np.ndarray:
    metadata = [{"spec": r.get("spec"), "group": int(g)} for r, g in zip(rows, groups)]
    with torch.no_grad():
        values = reward(torch.from_numpy(np.ascontiguousarray(images)), [r["prompt"] for r in rows], metadata)
    return values.detach().cpu().numpy().astype(float)


def add_task_rewards(ev, data, reward_model_dir: str | Path | None) -> None:
    """Adds `reward.<task>.*` keys to an `Evaluation` for aligned sample sets `data`."""
    # CLIP/OWL rewards score on the run's device; samples made on a GPU may be evaluated on a CPU machine
    device = ev.params.device if not ev.params.device.startswith("cuda") or torch.cuda.is_available() else "cpu"
    context = RewardContext(reward_model_dir=Path(reward_model_dir) if reward_model_dir else None, device=device)
    for task in ev.params.rl.tasks:
        subset = data.where_task(task.prompts)
        if not subset.rows:
            continue
        try:
            reward = build_reward(task.reward, dataclasses.replace(context, options=dict(task.reward_options)))
        except Exception as exc:  # e.g. no learned reward model: the other metrics still stand
            warnings.warn(f"reward {task.reward!r} unavailable for evaluation ({exc})", RuntimeWarning)
            continue
        _, groups = np.unique(subset.prompts, return_inverse=True)
        scores = {m: _scores(reward, images, subset.rows, groups) for m, images in subset.images.items()}
        prefix = f"reward.{task.name}"
        for model, values in scores.items():
            ev.estimate(f"{prefix}.{model}", values, subset.prompts)
        base_std = float(np.std(scores["base"]))
        ev.metrics[f"{prefix}.base_std"] = base_std
        for other in ("base", "control"):
            if other in scores and "rl" in scores:
                gain = ev.estimate(f"{prefix}.rl_minus_{other}", np.stack([scores["rl"], scores[other]], 1),
                                   subset.prompts, (1.0, -1.0))
                if other == "base" and base_std > 0:
                    ev.metrics[f"{prefix}.rl_gain_in_base_std"] = gain.value / base_std
