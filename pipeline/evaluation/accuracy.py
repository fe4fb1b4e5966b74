"""Detector accuracy of generated images against the prompts' specs, split by object count."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.world.detect import check_claims, claim_score, detect
from pipeline.world.scene import PromptSpec


def composition_scores(images: np.ndarray, specs: Sequence[PromptSpec]) -> dict[str, np.ndarray]:
    """Per image: exact match, claim score, both objects right, relation right (floats in [0, 1])."""
    out = {"exact": [], "claim_score": [], "objects": [], "relation": []}
    for image, spec in zip(images, specs):
        objects = detect(np.asarray(image))
        claims = check_claims(objects, spec)
        out["exact"].append(float(all(claims.values())))
        out["claim_score"].append(claim_score(objects, spec))
        out["objects"].append(float(all(v for k, v in claims.items() if k.startswith("object"))))
        out["relation"].append(float(claims.get("relation", True)))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def spec_accuracy(images: np.ndarray, specs: list[PromptSpec]) -> dict[str, float]:
    """Exact accuracy and claim score per object count (`single_*`, `two_*`) and the relation diagnosis.

    For two-object prompts also: both objects right (relation ignored) and the relation right
    given both objects, which tells "ignores relation words" apart from "cannot draw two objects".
    """
    scores = composition_scores(images, specs)
    two = np.array([len(spec.objects) == 2 for spec in specs], dtype=bool)
    out: dict[str, float] = {}
    for kind, mask in (("single", ~two), ("two", two)):
        out[f"{kind}_n"] = float(mask.sum())
        if not mask.any():
            continue
        out[f"{kind}_exact"] = float(scores["exact"][mask].mean())
        out[f"{kind}_claim_score"] = float(scores["claim_score"][mask].mean())
        if kind == "two":
            both = mask & (scores["objects"] > 0)
            out["two_objects_right"] = float(scores["objects"][mask].mean())
            out["two_relation_given_objects"] = float(scores["relation"][both].mean()) if both.any() else 0.0
    return out
