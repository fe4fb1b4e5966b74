"""Detector accuracy of generated images against the prompts' specs, split by object count."""
from __future__ import annotations

import numpy as np

from pipeline.world.detect import check_claims, claim_score, detect
from pipeline.world.scene import PromptSpec


def spec_accuracy(images: np.ndarray, specs: list[PromptSpec]) -> dict[str, float]:
    """Exact accuracy and claim score per object count (`single_*`, `two_*`) and the relation diagnosis.

    For two-object prompts also: both objects right (relation ignored) and the relation right
    given both objects, which tells "ignores relation words" apart from "cannot draw two objects".
    """
    rows = {"single": [], "two": []}
    for image, spec in zip(images, specs):
        objects = detect(np.asarray(image))
        claims = check_claims(objects, spec)
        object_claims = [v for k, v in claims.items() if k.startswith("object")]
        rows["single" if len(spec.objects) == 1 else "two"].append({
            "exact": float(all(claims.values())),
            "claim": claim_score(objects, spec),
            "objects": float(all(object_claims)),
            "relation": float(claims.get("relation", True)),
        })
    out: dict[str, float] = {}
    for kind, items in rows.items():
        out[f"{kind}_n"] = float(len(items))
        if not items:
            continue
        out[f"{kind}_exact"] = float(np.mean([r["exact"] for r in items]))
        out[f"{kind}_claim_score"] = float(np.mean([r["claim"] for r in items]))
        if kind == "two":
            both = [r for r in items if r["objects"]]
            out["two_objects_right"] = len(both) / len(items)
            out["two_relation_given_objects"] = float(np.mean([r["relation"] for r in both])) if both else 0.0
    return out
