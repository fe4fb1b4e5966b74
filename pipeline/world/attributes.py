"""What a prompt fixes and what an image shows, attribute by attribute: the world's ground truth
that rewards and evaluation read alike.

- `spec_of`: a prompt's spec (from its metadata row, or parsed from the caption);
- `read_attribute`: the colour, shape or size the detector reads off an image's largest object;
- `open_attribute`: the attribute a prompt leaves open, for asking a group of its samples to vary;
- `group_indices`: the samples of each prompt group in a batch (metadata "group", else the prompt);
- `statistical_parity` and `attribute_entropy`: how evenly a group's values spread over the classes.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch

from .captions import parse_caption
from .detect import detect
from .scene import PromptSpec
from .vocab import ATTRIBUTES, COLOURS, SHAPES, SIZES

ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}


def statistical_parity(attribute_values: Sequence[str | None], classes: Sequence[str]) -> float:
    """sum_a (p_a - 1/|A|)^2 over `classes` (0 = an even split), where a sample with no value (nothing
    detected, or a value outside `classes`) can never help: it counts for the most frequent class, and
    adds its share / |A| on top. So a group with a missing object scores worse than the same group
    with that object drawn in the majority class (7 red + 1 blank: 0.781 > 8 red: 0.75; all blank: 1.0)."""
    classes = list(classes)
    if not classes:
        raise ValueError("statistical parity needs at least one class")
    n = len(attribute_values)
    if n == 0:
        raise ValueError("statistical parity needs at least one sample")
    counts = {c: 0 for c in classes}
    for value in attribute_values:
        if value in counts:
            counts[value] += 1
    missing = n - sum(counts.values())
    counts[max(classes, key=lambda c: counts[c])] += missing  # ties: the first class
    return float(sum((counts[c] / n - 1.0 / len(classes)) ** 2 for c in classes) + missing / n / len(classes))


def attribute_entropy(attribute_values: Sequence[str | None], classes: Sequence[str], normalise: bool = True) -> float:
    """Entropy of the class histogram of the samples that have a class (None ignored); 0 if none has.

    With `normalise`, divided by log|A| so an even split is 1.
    """
    classes = list(classes)
    counts = np.array([sum(v == c for v in attribute_values) for c in classes], dtype=float)
    total = counts.sum()
    if total == 0 or len(classes) < 2:
        return 0.0
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log(p)).sum())
    return entropy / math.log(len(classes)) if normalise else entropy


def group_indices(prompts: Sequence[str], metadata: Sequence[dict] | None) -> dict[Hashable, list[int]]:
    """Sample indices per prompt group: metadata "group" where given, else the prompt text."""
    groups: dict[Hashable, list[int]] = {}
    for i, prompt in enumerate(prompts):
        row = metadata[i] if metadata is not None and i < len(metadata) and metadata[i] is not None else {}
        key = ("group", row["group"]) if row.get("group") is not None else ("prompt", prompt)
        groups.setdefault(key, []).append(i)
    return groups


def spec_of(prompt: str | PromptSpec | dict, row: dict | None = None) -> PromptSpec:
    """The prompt's spec: its metadata row's "spec" when given, else the prompt itself (a PromptSpec,
    a PromptSpec dict, or a caption, which is parsed)."""
    source = row["spec"] if row and row.get("spec") is not None else prompt
    if isinstance(source, PromptSpec):
        return source
    if isinstance(source, dict):
        return PromptSpec.from_dict(source)
    return parse_caption(source)


def read_attribute(image: np.ndarray | torch.Tensor, attribute: str) -> str | None:
    """The attribute of the largest detected object, or None when nothing is detected."""
    if attribute not in ATTRIBUTE_CLASSES:
        raise ValueError(f"attribute must be one of {tuple(ATTRIBUTE_CLASSES)}, got {attribute!r}")
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    objects = detect(array)
    if not objects:
        return None
    return getattr(max(objects, key=lambda o: o.area), attribute)


def open_attribute(spec: PromptSpec | None, preferred: str) -> str:
    """`preferred` unless the spec fixes it for its (first) object; then the first attribute it leaves open."""
    if spec is None or getattr(spec.objects[0], preferred) is None:
        return preferred
    for attribute in ATTRIBUTES:
        if getattr(spec.objects[0], attribute) is None:
            return attribute
    return preferred
