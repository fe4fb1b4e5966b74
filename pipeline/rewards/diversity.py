"""Distribution-level diversity reward (the paper's fairness reward, Eq. 12, in the shapes world).

An under-specified prompt ("a circle") is sampled k times in a minibatch; the samples of one
prompt share metadata "group". The detector reads one attribute of each sample (colour by
default; "shape" or "size" via `context.options["attribute"]`) and the group's reward is

    -sum_a (p_a - 1/|A|)^2,   p_a = #{samples whose attribute is a} / #{samples in the group}

(negative statistical parity; 0 is an even split). A sample with no detected object counts for
the most frequent class and is penalised on top, so a missing object always lowers the score. Every sample of the group gets the group's reward.

When a group's prompt itself fixes the chosen attribute ("a red shape" with attribute colour),
asking for an even colour split would fight the prompt; such a group is scored on the first
attribute its prompt leaves open (colour, then shape, then size) instead.
"""
from __future__ import annotations

import torch

from pipeline.errors import RewardOptionError
from pipeline.rewards.registry import Reward, RewardContext, check_batch
from pipeline.world.attributes import (ATTRIBUTE_CLASSES, group_indices, open_attribute, read_attribute, spec_of,
                                       statistical_parity)


class DiversityReward(Reward):
    """Negative statistical parity of a detected attribute over each prompt group, given to every sample."""

    name = "diversity"
    task = "diversity"
    distribution_level = True

    def __init__(self, attribute: str = "colour"):
        if attribute not in ATTRIBUTE_CLASSES:
            raise RewardOptionError(f"diversity attribute must be one of {tuple(ATTRIBUTE_CLASSES)}, got {attribute!r}")
        self.attribute = attribute

    @classmethod
    def build(cls, context: RewardContext) -> "DiversityReward":
        return cls(attribute=context.option("attribute", "colour"))

    def group_attribute(self, prompt: str, row: dict | None) -> str:
        try:
            spec = spec_of(prompt, row)
        except ValueError:
            spec = None
        return open_attribute(spec, self.attribute)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        rewards = torch.zeros(len(prompts), dtype=torch.float32)
        for rows in group_indices(prompts, metadata).values():
            first = rows[0]
            attribute = self.group_attribute(prompts[first], metadata[first] if metadata else None)
            values = [read_attribute(images[i], attribute) for i in rows]
            rewards[rows] = -statistical_parity(values, ATTRIBUTE_CLASSES[attribute])
        return rewards
