"""The policy-gradient loss: the paper's clipped surrogate (its Eq. 7), as DDPO implements it (docs/method.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PolicyLossOutput:
    """loss: differentiable scalar to minimise; the rest are detached statistics over the
    masked entries (0.0 when the mask selects nothing)."""

    loss: torch.Tensor
    approx_kl: float
    clip_fraction: float
    ratio_mean: float


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    mask: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate as a loss: mean(max(-A*w, -A*clip(w, 1-eps, 1+eps))).

    w = exp(log_prob - old_log_prob). All inputs are same-shape tensors ([N]); ``advantages``
    and ``old_log_prob`` are detached here. ``mask`` (bool, e.g. the valid rewards) selects
    the entries averaged over; all of them if None. approx_kl = 0.5*mean((log_prob -
    old_log_prob)^2) (DDPO's estimate); clip_fraction = mean(|w - 1| > eps).
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape):
        raise ValueError(
            f"shape mismatch: log_prob {tuple(log_prob.shape)}, old_log_prob "
            f"{tuple(old_log_prob.shape)}, advantages {tuple(advantages.shape)}"
        )
    advantages = advantages.detach().to(log_prob.device, log_prob.dtype)
    old_log_prob = old_log_prob.detach().to(log_prob.device, log_prob.dtype)
    if mask is None:
        mask = torch.ones_like(log_prob, dtype=torch.bool)
    mask = mask.to(device=log_prob.device, dtype=torch.bool)
    if mask.shape != log_prob.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != log_prob shape {tuple(log_prob.shape)}")
    if not bool(mask.any()):
        return PolicyLossOutput(loss=(log_prob * 0).sum(), approx_kl=0.0, clip_fraction=0.0, ratio_mean=0.0)

    lp, old, adv = log_prob[mask], old_log_prob[mask], advantages[mask]
    diff = lp - old
    ratio = torch.exp(diff)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * (diff.float() ** 2).mean().item()
        clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean().item()
        ratio_mean = ratio.float().mean().item()
    return PolicyLossOutput(loss=loss, approx_kl=approx_kl, clip_fraction=clip_fraction, ratio_mean=ratio_mean)
