"""Evaluation metrics on per-sample values, with prompt-level bootstrap confidence intervals.

Samples of one prompt are not independent (same prompt, several seeds), so every interval
resamples prompts ("clusters") with replacement and recomputes the statistic over the samples of
the drawn prompts: a percentile interval of the cluster bootstrap.
"""
from __future__ import annotations

import itertools
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.world.attributes import ATTRIBUTE_CLASSES, attribute_entropy, statistical_parity

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def flat(self, key: str) -> dict[str, float]:
        """{key: value, key_ci_low: low, key_ci_high: high}."""
        return {key: self.value, f"{key}_ci_low": self.low, f"{key}_ci_high": self.high}


def stable_seed(*parts: object) -> int:
    """A seed that depends only on the given parts (for per-metric bootstrap streams)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


def cluster_ids(keys: Sequence[Hashable]) -> np.ndarray:
    """Dense integer ids (0..G-1, in order of first appearance) for per-sample cluster keys."""
    ids: dict[Hashable, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def bootstrap_mean(values, clusters=None, resamples: int = 1000, seed: int = 0, contrast=None,
                   level: float = LEVEL) -> Estimate:
    """Mean of `values` (N,) -- or of `values @ contrast` for values (N, K) -- with a cluster-bootstrap CI.

    `clusters` (N,) names each sample's cluster (default: every sample its own). A resample draws
    as many clusters as there are, with replacement; the statistic is the mean over their samples.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    weights = np.ones(values.shape[1]) if contrast is None else np.asarray(contrast, dtype=float)
    combined = values @ weights
    if len(combined) == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    ids = cluster_ids(range(len(combined)) if clusters is None else list(clusters))
    groups = int(ids.max()) + 1
    sums = np.bincount(ids, weights=combined, minlength=groups)
    counts = np.bincount(ids, minlength=groups).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, groups, size=(resamples, groups))
    offsets = (draws + groups * np.arange(resamples)[:, None]).ravel()
    drawn = np.bincount(offsets, minlength=resamples * groups).reshape(resamples, groups).astype(float)
    stats = (drawn @ sums) / (drawn @ counts)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Estimate(float(combined.mean()), float(low), float(high))


def win_outcomes(scores_a, scores_b) -> np.ndarray:
    """Per pair, a's win from two scores: 1 if higher, 0 if lower, 0.5 on a tie."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # a NaN would otherwise count as a tie
        bad = int((~np.isfinite(a)).sum() + (~np.isfinite(b)).sum())
        raise ValueError(f"win outcomes need finite scores; got {bad} non-finite score(s)")
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def win_rate(outcomes, clusters=None, resamples: int = 1000, seed: int = 0) -> Estimate:
    """Mean win (ties 0.5) of pair outcomes in {0, 0.5, 1}, with a prompt-bootstrap CI."""
    outcomes = np.asarray(outcomes, dtype=float)
    if ((outcomes < 0) | (outcomes > 1)).any():
        raise ValueError("win outcomes must lie in [0, 1]")
    return bootstrap_mean(outcomes, clusters, resamples, seed)


def max_parity(n_classes: int) -> float:
    """Statistical parity of a collapsed distribution (every sample in one class): (K - 1) / K."""
    return (n_classes - 1) / n_classes


def attribute_balance(values: Sequence[str | None], attribute: str) -> tuple[float, float]:
    """(statistical parity, normalised entropy) of one prompt's detected attribute values."""
    classes = ATTRIBUTE_CLASSES[attribute]
    return statistical_parity(values, classes), attribute_entropy(values, classes)


def mean_pairwise_distance(images: np.ndarray) -> float:
    """Mean over pairs of uint8 images (N, H, W, 3) of their RMS distance in [0, 1] units; 0 for one image.

    RMS = L2 distance / sqrt(pixels x channels), so the value is in [0, 1] at any resolution.
    """
    flat = np.asarray(images, dtype=float).reshape(len(images), -1) / 255.0
    if len(flat) < 2:
        return 0.0
    pairs = list(itertools.combinations(range(len(flat)), 2))
    return float(np.mean([np.sqrt(np.mean((flat[i] - flat[j]) ** 2)) for i, j in pairs]))
