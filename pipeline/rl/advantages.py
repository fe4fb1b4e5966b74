"""Reward -> advantage normalisation (docs/method.md: the paper's advantages, and why groups).

Two modes:

* ``"batch"`` (the paper): A = (r - mean) / (std + eps) over all finite rewards of the
  (possibly gathered) batch.
* ``"group"`` (GRPO-style): the same normalisation within each group of samples that share a
  group id (same prompt). A group whose finite rewards have std 0 (including a single finite
  member) gets advantage 0 for every member: there is nothing to learn from it.

Standard deviations are population std (``unbiased=False``). Advantages are clipped to
``[-clip, clip]``. Non-finite rewards (NaN, +-inf) are left out of every statistic, get
advantage 0 and ``valid=False``. If no reward is finite the result is all zeros and
``valid`` is all False; no exception is raised (the trainer skips the iteration).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

ADVANTAGE_MODES = ("batch", "group")


@dataclass
class AdvantageResult:
    """advantages: float32 [B] (0 where dropped); valid: bool [B]; n_dropped: number of
    non-finite rewards in the returned (local) slice; mean/std: population statistics of the
    finite rewards of the whole (global) batch, NaN when none is finite."""

    advantages: torch.Tensor
    valid: torch.Tensor
    n_dropped: int
    mean: float
    std: float


def _normalise(r: torch.Tensor, eps: float) -> torch.Tensor:
    """(r - mean) / (std + eps) with population std; zeros if std == 0 or len(r) < 2."""
    if r.numel() < 2:
        return torch.zeros_like(r)
    std = r.std(unbiased=False)
    if std == 0:
        return torch.zeros_like(r)
    return (r - r.mean()) / (std + eps)


def compute_advantages(
    rewards: torch.Tensor,
    mode: str,
    group_ids: torch.Tensor | None = None,
    clip: float = 10.0,
    eps: float = 1e-8,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    local_slice: slice | None = None,
) -> AdvantageResult:
    """Normalise ``rewards`` ([B]) into advantages; see the module docstring.

    Multi-process: when ``gather`` is given, the global batch is ``gather(rewards)`` (and
    ``gather(group_ids)``); statistics and advantages are computed on it and the result is
    sliced with ``local_slice`` (whole global batch if None). ``mean``/``std`` are global.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; known modes: {ADVANTAGE_MODES}")
    if mode == "group" and group_ids is None:
        raise ValueError("advantage mode 'group' requires group_ids")
    rewards = rewards.reshape(-1)
    if group_ids is not None:
        group_ids = group_ids.reshape(-1)
        if group_ids.shape != rewards.shape:
            raise ValueError(f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(rewards.shape)}")
    if gather is not None:
        rewards = gather(rewards).reshape(-1)
        if group_ids is not None:
            group_ids = gather(group_ids).reshape(-1)

    r = rewards.detach().to(torch.float64)
    valid = torch.isfinite(r)
    adv = torch.zeros_like(r)
    finite = r[valid]
    if finite.numel() > 0:
        mean, std = finite.mean().item(), finite.std(unbiased=False).item()
        if mode == "batch":
            adv[valid] = _normalise(finite, eps)
        else:
            for g in torch.unique(group_ids[valid]):
                sel = valid & (group_ids == g)
                adv[sel] = _normalise(r[sel], eps)
        adv = adv.clamp(-clip, clip)
    else:
        mean, std = float("nan"), float("nan")

    if gather is not None and local_slice is not None:
        adv, valid = adv[local_slice], valid[local_slice]
    return AdvantageResult(
        advantages=adv.to(torch.float32),
        valid=valid,
        n_dropped=int((~valid).sum().item()),
        mean=mean,
        std=std,
    )
