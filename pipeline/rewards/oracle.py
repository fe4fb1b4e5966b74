"""The oracle reward, for research only: the rater panel's noise-free mean utility.

It is what a perfect reward model would give: the upper bound of what learning the preference
from labels can buy, and a way to tell a weak reward model from a weak estimator. Never a
default: in the paper's setting the preference is only known through raters' choices, and the
evaluation's judge is this same panel, so training on it leaves no held-out judge of quality.
"""
from __future__ import annotations

import torch

from pipeline.world.panel import PANEL_SEED, RaterPanel
from pipeline.rewards.registry import Reward, RewardContext, check_batch


class PanelUtilityReward(Reward):
    """The panel's mean utility of each image for its prompt (0-10)."""

    name = "panel_utility"
    task = "preference"

    def __init__(self, panel: RaterPanel):
        self.panel = panel

    @classmethod
    def build(cls, context: RewardContext) -> "PanelUtilityReward":
        return cls(RaterPanel(int(context.option("raters", 5)), seed=PANEL_SEED))

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        specs = [row.get("spec") or prompt for row, prompt in zip(metadata or [{}] * len(prompts), prompts)]
        return self.panel.utility(images.detach().cpu(), specs).float()
