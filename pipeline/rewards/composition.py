"""Per-sample shapes-world rewards read by the analytic detector.

- `composition`: the share of the prompt's claims that the detected objects satisfy (each named
  object present with the right colour and shape, and, for two objects in a spatial relation,
  the relation), in [0, 1]: `claim_score(detect(image), spec)`.
- `area`: a sanity reward, the detected object pixel area over the image area, in [0, 1]; with
  nothing detected, the share of pixels the detector calls palette-coloured, so it stays smooth.
  Option `gate` (default false): only images whose detections satisfy every claim of their
  prompt, the object count included, earn their area; the others score 0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pipeline.errors import RewardOptionError
from pipeline.rewards.registry import Reward, RewardContext, check_batch, numpy_images
from pipeline.world.attributes import spec_of
from pipeline.world.detect import claim_score, detect, exact_match, object_area_fraction
from pipeline.world.scene import PromptSpec


def _bool_option(context: RewardContext, key: str, reward: str) -> bool:
    value = context.option(key, False)
    if not isinstance(value, bool):
        raise RewardOptionError(f"reward option {key!r} of reward {reward!r} must be true or false, got {value!r}")
    return value


def _rows(metadata: list[dict] | None, n: int) -> list[dict]:
    if metadata is None:
        return [{} for _ in range(n)]
    if len(metadata) != n:
        raise ValueError(f"got {n} images but {len(metadata)} metadata rows")
    return [row or {} for row in metadata]


def score_against_prompts(images: torch.Tensor, prompts: list[str], metadata: list[dict] | None,
                          score: Callable[[np.ndarray, list, PromptSpec], float]) -> torch.Tensor:
    """`score(image, detections, spec)` for each image against its own prompt's spec, as a float tensor."""
    check_batch(images, prompts)
    rows = _rows(metadata, len(prompts))
    return torch.tensor([score(image, detect(image), spec_of(prompt, row))
                         for image, prompt, row in zip(numpy_images(images), prompts, rows)], dtype=torch.float32)


class CompositionReward(Reward):
    """claim_score of the detected objects against the prompt's spec, in [0, 1].

    Option `count` (reward_options, default false as the paper's detector reward): the object
    count is a claim too. Without it the reward cannot see extra objects, and RL learned to draw
    them (docs/experiments.md E8)."""

    name = "composition"
    task = "composition"

    def __init__(self, count: bool = False):
        self.count = count

    @classmethod
    def build(cls, context: RewardContext) -> "CompositionReward":
        return cls(count=_bool_option(context, "count", cls.name))

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        return score_against_prompts(images, prompts, metadata,
                                     lambda image, objects, spec: claim_score(objects, spec, count=self.count))


class _ImageOnlyReward(Reward):
    """A reward that scores each image alone, whatever its prompt, with `score_image`."""

    task = "single"

    @staticmethod
    def score_image(image: np.ndarray) -> float:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        return torch.tensor([self.score_image(image) for image in numpy_images(images)], dtype=torch.float32)


class AreaReward(_ImageOnlyReward):
    """Sanity reward: the mean size of the detected objects as a fraction of the image, in [0, 1].

    With `gate`, an image earns its area only when it is exactly what its prompt says (colour,
    shape, size and one object each): growing a "small" object past the detector's size line,
    or turning a circle into a square, then scores 0 (docs/experiments.md E24)."""

    name = "area"
    score_image = staticmethod(object_area_fraction)

    def __init__(self, gate: bool = False):
        self.gate = gate

    @classmethod
    def build(cls, context: RewardContext) -> "AreaReward":
        return cls(gate=_bool_option(context, "gate", cls.name))

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        if not self.gate:
            return super().__call__(images, prompts, metadata)
        return score_against_prompts(images, prompts, metadata, lambda image, objects, spec: (
            object_area_fraction(image, objects) if exact_match(objects, spec) else 0.0))


def object_extent(image: np.ndarray) -> float:
    """Mean bounding-box side of the detected objects / image side; 0 when nothing is detected."""
    objects = detect(image)
    if not objects:
        return 0.0
    side = image.shape[0]
    return float(np.mean([max(o.box[2] - o.box[0], o.box[3] - o.box[1]) / side for o in objects]))


class SizeReward(_ImageOnlyReward):
    """Sanity reward that is neutral to shape: the mean box extent of the detected objects, in [0, 1].

    Pixel area favours squares (a square fills its box, a triangle half of it); the box extent
    rewards size alone.
    """

    name = "size"
    score_image = staticmethod(object_extent)
