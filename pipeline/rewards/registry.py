"""One registry for every reward: `reward(images, prompts, metadata) -> Tensor[B]`.

Names map to "module:class" strings so validating params never imports torch-heavy code.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UnknownRewardError, UnknownRewardOptionError

if TYPE_CHECKING:
    import numpy as np
    import torch

# name -> ("module:class", the `reward_options` keys it reads). Declaring the keys here lets a params
# file with a misspelt option fail at validation instead of silently training with the default.
_REWARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "composition": ("pipeline.rewards.composition:CompositionReward", ("count",)),
    "area": ("pipeline.rewards.composition:AreaReward", ("gate",)),
    "size": ("pipeline.rewards.composition:SizeReward", ()),
    "diversity": ("pipeline.rewards.diversity:DiversityReward", ("attribute",)),
    "preference": ("pipeline.rewards.preference:LearnedPreferenceReward", ("batch_size",)),
    "clip_preference": ("pipeline.rewards.adapters:ClipPreferenceReward", ("model", "processor", "batch_size")),
    "owl_detection": ("pipeline.rewards.adapters:OwlDetectionReward",
                      ("model", "processor", "batch_size", "query_template")),
    "clip_parity": ("pipeline.rewards.adapters:ClipParityReward",
                    ("model", "processor", "batch_size", "classes", "template")),
    "null": ("pipeline.rewards.null:NullReward", ()),
    "panel_utility": ("pipeline.rewards.oracle:PanelUtilityReward", ("raters",)),  # research only: the judge itself
}


@dataclass
class RewardContext:
    """What a reward may need to build itself: folders of learned models, device, options."""

    reward_model_dir: Path | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    declared: tuple[str, ...] | None = None  # set by `build_reward`: the keys the reward declares

    def option(self, key: str, default: Any = None) -> Any:
        """The task's `reward_options[key]`, or `default`."""
        if self.declared is not None and key not in self.declared:
            raise KeyError(f"reward option {key!r} is read but not declared in pipeline.rewards.registry")
        return (self.options or {}).get(key, default)


def check_batch(images: "torch.Tensor", prompts: list[str]) -> None:
    """Every reward's first check: one prompt per image."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")


def numpy_images(images: "torch.Tensor") -> "np.ndarray":
    """uint8 images (B, H, W, 3) as a CPU numpy array, for rewards that score pixels."""
    import torch

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {tuple(images.shape)}")
    return images.detach().to("cpu", torch.uint8).numpy()


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


def check_reward_options(name: str, options: dict[str, Any] | None) -> None:
    """Raise UnknownRewardOptionError naming each key of `options` that reward `name` does not read."""
    if name not in _REWARDS:
        raise UnknownRewardError(f"unknown reward {name!r}; known rewards: {', '.join(known_rewards())}")
    declared = _REWARDS[name][1]
    unknown = sorted(set(options or {}) - set(declared))
    if unknown:
        expected = f"its options are: {', '.join(declared)}" if declared else "it takes no options"
        raise UnknownRewardOptionError(f"reward {name!r} has no option {', '.join(map(repr, unknown))}; {expected}")


def build_reward(name: str, context: RewardContext | None = None) -> Reward:
    context = context or RewardContext()
    check_reward_options(name, context.options)
    path, declared = _REWARDS[name]
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls).build(replace(context, declared=declared))
