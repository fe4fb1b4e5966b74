"""The null reward: a score that carries no information about the image's quality or its prompt.

RL on it measures how far the policy drifts from gradient noise alone (Adam turns a noisy gradient
into full-size steps), the baseline a real reward's side effects must be read against
(docs/experiments.md E14). Each image's score is a hash of its pixels and the prompt, so it is
deterministic (the same run gives the same numbers) yet unrelated to anything the model can learn:
a one-pixel change gives an unrelated score.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from pipeline.rewards.registry import Reward, check_batch, numpy_images


def hashed_uniform(image: np.ndarray, prompt: str) -> float:
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes() + prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class NullReward(Reward):
    """Uniform in [0, 1), a pseudo-random function of (pixels, prompt)."""

    name = "null"
    task = "single"

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        return torch.tensor([hashed_uniform(a, p) for a, p in zip(numpy_images(images), prompts)], dtype=torch.float32)
