"""One registry for every reward: `reward(images, prompts, metadata) -> Tensor[B]`.

Names map to "module:class" strings so validating params never imports torch-heavy code.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_REWARDS: dict[str, str] = {
    "composition": "pipeline.rewards.composition:CompositionReward",
    "area": "pipeline.rewards.composition:AreaReward",
    "size": "pipeline.rewards.composition:SizeReward",
    "diversity": "pipeline.rewards.diversity:DiversityReward",
    "preference": "pipeline.rewards.preference:LearnedPreferenceReward",
    "clip_preference": "pipeline.rewards.adapters:ClipPreferenceReward",
    "owl_detection": "pipeline.rewards.adapters:OwlDetectionReward",
    "clip_parity": "pipeline.rewards.adapters:ClipParityReward",
    "null": "pipeline.rewards.null:NullReward",
}


class UnknownRewardError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class RewardContext:
    """What a reward may need to build itself: folders of learned models, device, options."""

    reward_model_dir: Path | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)


class Reward(abc.ABC):
    """Scores uint8 images (B, H, W, 3) for their prompts; metadata rows carry `spec` and `group`."""

    name: str = ""
    task: str = ""  # the prompt corpus this reward is meant for
    distribution_level: bool = False  # True: scores each prompt's minibatch as a whole

    @classmethod
    def build(cls, context: RewardContext) -> "Reward":
        return cls()

    @abc.abstractmethod
    def __call__(self, images: "torch.Tensor", prompts: list[str], metadata: list[dict]) -> "torch.Tensor": ...


def known_rewards() -> list[str]:
    return sorted(_REWARDS)


def build_reward(name: str, context: RewardContext | None = None) -> Reward:
    if name not in _REWARDS:
        raise UnknownRewardError(f"unknown reward {name!r}; known rewards: {', '.join(known_rewards())}")
    module, cls = _REWARDS[name].split(":")
    return getattr(importlib.import_module(module), cls).build(context or RewardContext())
