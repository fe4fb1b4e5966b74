"""Rasterise a scene: anti-aliased shapes on a plain background, in pure numpy."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scene import Scene, ShapeObject
from .vocab import BACKGROUND, COLOURS

SUPERSAMPLE = 4  # sub-pixels per pixel side; coverage is their mean

# Whether offsets (dx, dy) from the centre lie inside a shape of half-side h (y downwards).
_INSIDE = {
    "circle": lambda dx, dy, h: dx**2 + dy**2 <= h**2,
    "square": lambda dx, dy, h: (np.abs(dx) <= h) & (np.abs(dy) <= h),
    "triangle": lambda dx, dy, h: (dy <= h) & (np.abs(dx) <= (dy + h) / 2),  # apex up, base at bottom
}


def coverage(obj: ShapeObject, resolution: int, side: float | None = None) -> np.ndarray:
    """The fraction of each pixel that `obj` covers, float (resolution, resolution); `side` overrides
    the object's own box side (fraction of the image side)."""
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    half = (obj.side if side is None else side) / 2
    inside = _INSIDE[obj.shape](coords[None, :] - obj.cx, coords[:, None] - obj.cy, half)
    return inside.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3))


def render_float(scene: Scene, resolution: int = 24, colours: Sequence | None = None,
                 sides: Sequence | None = None) -> np.ndarray:
    """The image of a scene before rounding, float (resolution, resolution, 3) in [0, 255].

    `colours` / `sides` (one entry per object, None = the object's own) override an object's RGB
    colour and box side: the web-like stream's faded and too-small objects (`realism`).
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = np.empty((resolution, resolution, 3))
    image[:] = BACKGROUND
    for i, obj in enumerate(scene.objects):
        side = sides[i] if sides is not None else None
        colour = colours[i] if colours is not None and colours[i] is not None else COLOURS[obj.colour]
        alpha = coverage(obj, resolution, side)[..., None]
        image = image * (1 - alpha) + np.asarray(colour, float) * alpha
    return image


def render(scene: Scene, resolution: int = 24) -> np.ndarray:
    """The image of a scene, uint8 (resolution, resolution, 3); deterministic."""
    return to_uint8(render_float(scene, resolution))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 255)).astype(np.uint8)
