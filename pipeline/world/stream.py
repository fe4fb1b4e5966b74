"""An infinite, seeded, resumable stream of (image, caption, scene) for pretraining."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .captions import caption_scene
from .render import render
from .scene import Scene, sample_scene


class SceneStream:
    """Random scenes with training captions; the same seed gives the same sequence."""

    def __init__(self, seed: int, resolution: int = 24, two_object_prob: float = 0.5):
        self.seed = seed
        self.resolution = resolution
        self.two_object_prob = two_object_prob
        self.rng = np.random.default_rng(seed)

    def _next(self) -> tuple[np.ndarray, str, Scene]:
        scene = sample_scene(self.rng, two_object_prob=self.two_object_prob)
        return render(scene, self.resolution), caption_scene(scene, self.rng), scene

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, list[str], list[Scene]]:
        """Images uint8 (B, H, W, 3), their captions and their scenes."""
        images, captions, scenes = zip(*(self._next() for _ in range(batch_size)))
        return np.stack(images), list(captions), list(scenes)

    def __iter__(self) -> Iterator[tuple[np.ndarray, str, Scene]]:
        while True:
            yield self._next()

    def state_dict(self) -> dict:
        """JSON-safe state: settings and the bit generator's state."""
        return {
            "seed": self.seed,
            "resolution": self.resolution,
            "two_object_prob": self.two_object_prob,
            "bit_generator": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where the stream that produced `state` was."""
        self.seed = state["seed"]
        self.resolution = state["resolution"]
        self.two_object_prob = state["two_object_prob"]
        self.rng.bit_generator.state = state["bit_generator"]
