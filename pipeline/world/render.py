"""Rasterise a scene: anti-aliased shapes on a plain background, in pure numpy."""
from __future__ import annotations

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


def coverage(obj: ShapeObject, resolution: int) -> np.ndarray:
    """The fraction of each pixel that `obj` covers, float (resolution, resolution)."""
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    inside = _INSIDE[obj.shape](coords[None, :] - obj.cx, coords[:, None] - obj.cy, obj.side / 2)
    return inside.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, resolution: int = 24) -> np.ndarray:
    """The image of a scene, uint8 (resolution, resolution, 3); deterministic."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = np.empty((resolution, resolution, 3))
    image[:] = BACKGROUND
    for obj in scene.objects:
        alpha = coverage(obj, resolution)[..., None]
        image = image * (1 - alpha) + np.asarray(COLOURS[obj.colour], float) * alpha
    return np.rint(image).astype(np.uint8)
