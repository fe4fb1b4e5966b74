"""The two judges of evaluation (docs/design.md, "Contracts"): the rater panel and the learned reward model.

The judging panel is the hidden preference itself: the same raters (`panel.PANEL_SEED`) whose
noisy choices labelled the reward model's training pairs, with the same rater noise. Only its
choice draws are fresh:
they are seeded with `judge_seed(params.seed)`, distinct from the label draws'
(`panel.label_seed(params.seed)`), plus the comparison's index. The panel's win rate
is a noisy rater's, as a human evaluation would be; the over-optimisation gap instead compares the
learned model's verdict with the panel's noise-free one (its mean utility), so that the gap is what
the reward model failed to learn or RL exploited, not rater noise.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.world.panel import PANEL_SEED, RaterPanel, label_seed, make_panel
from pipeline.world.scene import PromptSpec

JUDGE_SEED_OFFSET = 104_729  # a prime; used nowhere in training


def judge_seed(seed: int) -> int:
    """The seed of the judge's choice draws: never the label draws' nor the panel's own."""
    value = int(seed) + JUDGE_SEED_OFFSET
    while value in (PANEL_SEED, label_seed(seed)):
        value += 1
    return value


def judge_panel(params) -> RaterPanel:
    """The hidden-preference panel: `reward_model.raters` raters with `reward_model.rater_noise`."""
    return make_panel(params.reward_model)


def panel_outcomes(panel: RaterPanel, images_a: np.ndarray, images_b: np.ndarray,
                   specs: Sequence[PromptSpec], seed: int) -> np.ndarray:
    """Per pair, a's win over b by one random rater of the panel: {0, 1}, 0.5 for identical images."""
    generator = torch.Generator().manual_seed(int(seed))
    won = panel.prefer(torch.from_numpy(np.ascontiguousarray(images_a)),
                       torch.from_numpy(np.ascontiguousarray(images_b)), list(specs), generator)
    return won.numpy().astype(float)


def panel_utility(panel: RaterPanel, images: np.ndarray, specs: Sequence[PromptSpec]) -> np.ndarray:
    """The panel's mean utility of each image (absolute quality)."""
    return panel.utility(torch.from_numpy(np.ascontiguousarray(images)), list(specs)).numpy().astype(float)


def load_learned_judge(folder: str | Path | None):
    """The learned preference reward from `folder`, or None (with a warning) when no folder is given.
    A folder that does not hold a readable reward model is an error (RewardLoadError naming it)."""
    from pipeline.rewards.registry import RewardContext, build_reward

    if folder is None:
        warnings.warn("no reward model given: learned-judge win rates (win_rate_learned.*, overopt_gap.*) are "
                      "omitted", RuntimeWarning, stacklevel=2)
        return None
    return build_reward("preference", RewardContext(reward_model_dir=Path(folder)))


def learned_scores(reward, images: np.ndarray, rows: Sequence[dict]) -> np.ndarray:
    """The learned reward of each image for its row's prompt."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    with torch.no_grad():
        scores = reward(tensor, [r["prompt"] for r in rows], list(rows))
    return scores.detach().cpu().numpy().astype(float)
