"""Detector accuracy of generated images against the prompts' specs, split by object count."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.world.detect import DetectedObject, check_claims, claim_score, detect
from pipeline.world.scene import PromptSpec
from pipeline.world.vocab import ATTRIBUTES

ERROR_KINDS = ("extra_objects", *(f"wrong_{a}" for a in ATTRIBUTES))


def attribute_errors(objects: list[DetectedObject], spec: PromptSpec) -> dict[str, float]:
    """What went wrong in one image, for telling reward hacking apart: more objects than the spec
    names, and, for a one-object spec drawn as one object, each stated attribute drawn otherwise."""
    out = {"extra_objects": float(len(objects) > len(spec.objects))}
    single = len(spec.objects) == 1 and len(objects) == 1
    for attribute in ATTRIBUTES:
        stated = getattr(spec.objects[0], attribute) if single else None
        out[f"wrong_{attribute}"] = float(stated is not None and getattr(objects[0], attribute) != stated)
    return out


def composition_scores(images: np.ndarray, specs: Sequence[PromptSpec]) -> dict[str, np.ndarray]:
    """Per image: exact match, claim score, both objects right, relation right, and the
    `attribute_errors` (floats in [0, 1])."""
    out = {"exact": [], "claim_score": [], "objects": [], "relation": [], **{k: [] for k in ERROR_KINDS}}
    for image, spec in zip(images, specs):
        objects = detect(np.asarray(image))
        claims = check_claims(objects, spec)
        for kind, value in attribute_errors(objects, spec).items():
            out[kind].append(value)
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
            if both.any():  # undefined when no image has both objects right (not "always wrong")
                out["two_relation_given_objects"] = float(scores["relation"][both].mean())
    return out
