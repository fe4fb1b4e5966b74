"""An infinite, seeded, resumable stream of (image, caption, scene) for pretraining."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .captions import caption_scene
from .realism import Realism, apply_realism
from .render import render
from .scene import Scene, sample_scene

REALISM_STREAM = 1  # the realism draws come from np.random.default_rng([seed, REALISM_STREAM])


class SceneStream:
    """Random scenes with training captions; the same seed gives the same sequence.

    With a `Realism` that is not clean, each item is made web-like (`realism.apply_realism`) from
    a generator of its own, so the scenes and captions drawn before it are those of the clean stream.
    """

    def __init__(self, seed: int, resolution: int = 24, two_object_prob: float = 0.5,
                 realism: Realism | None = None):
        self.seed = seed
        self.resolution = resolution
        self.two_object_prob = two_object_prob
        self.realism = realism if realism is not None and not realism.is_clean else None
        self.rng = np.random.default_rng(seed)
        self.realism_rng = np.random.default_rng([seed, REALISM_STREAM])
        self.defects: list[str | None] = []  # the defect of each item of the last batch

    def _next(self) -> tuple[np.ndarray, str, Scene]:
        scene = sample_scene(self.rng, two_object_prob=self.two_object_prob)
        if self.realism is None:
            self.defects.append(None)
            return render(scene, self.resolution), caption_scene(scene, self.rng), scene
        item = apply_realism(scene, caption_scene(scene, self.rng), self.realism_rng, self.realism, self.resolution)
        self.defects.append(item.defect)
        return item.image, item.caption, item.scene

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, list[str], list[Scene]]:
        """Images uint8 (B, H, W, 3), their captions and their scenes."""
        self.defects = []
        images, captions, scenes = zip(*(self._next() for _ in range(batch_size)))
        return np.stack(images), list(captions), list(scenes)

    def __iter__(self) -> Iterator[tuple[np.ndarray, str, Scene]]:
        while True:
            yield self._next()

    def state_dict(self) -> dict:
        """JSON-safe state: settings and the bit generators' states."""
        return {
            "seed": self.seed,
            "resolution": self.resolution,
            "two_object_prob": self.two_object_prob,
            "bit_generator": self.rng.bit_generator.state,
            "realism_bit_generator": self.realism_rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where the stream that produced `state` was."""
        self.seed = state["seed"]
        self.resolution = state["resolution"]
        self.two_object_prob = state["two_object_prob"]
        self.rng.bit_generator.state = state["bit_generator"]
        if "realism_bit_generator" in state:
            self.realism_rng.bit_generator.state = state["realism_bit_generator"]
