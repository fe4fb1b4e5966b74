"""Log-probabilities of recorded actions under the current weights, many timesteps per UNet call."""
from __future__ import annotations

import torch

from pipeline.models.base import Text2ImageModel
from pipeline.sampling import Trajectory, ddim_transition, guided_prediction


def stochastic_steps(traj: Trajectory) -> torch.Tensor:
    """[n_steps] bool on the CPU: the steps with a log-prob to learn from (eta > 0 there)."""
    return (traj.log_probs.abs().sum(0) != 0).cpu()


def choose_train_steps(n_samples: int, n_steps: int, window: float, per_sample: int,
                       generator: torch.Generator, stochastic: torch.Tensor) -> torch.Tensor:
    """[n_samples, per_sample] step indices drawn without replacement from the noisy-end window.

    The window is the first `ceil(window * n_steps)` steps (high noise), restricted to stochastic
    steps (a deterministic step has no log-prob to learn from).
    """
    limit = max(1, int(-(-window * n_steps // 1)))
    allowed = torch.nonzero(stochastic[:limit]).flatten()
    if allowed.numel() == 0:
        raise ValueError("no stochastic step inside the timestep window; raise rl.timestep_window or rl.eta")
    k = min(per_sample, allowed.numel())
    order = torch.stack([torch.randperm(allowed.numel(), generator=generator)[:k] for _ in range(n_samples)])
    return allowed[order]


def recompute_log_probs(model: Text2ImageModel, traj: Trajectory, samples: torch.Tensor, steps: torch.Tensor, *,
                        uncond: torch.Tensor | None, guidance: float, eta: float, clamp_x0: bool) -> torch.Tensor:
    """log p_theta(x_{t-1} | x_t, c) for the (sample, step) pairs given as flat index tensors, in one call."""
    if model.scheduler.num_inference_steps != len(traj.timesteps):  # the transition's step size
        model.scheduler.set_timesteps(len(traj.timesteps), device=traj.latents.device)
    x_t = traj.latents[samples, steps]
    x_prev = traj.latents[samples, steps + 1]
    timesteps = traj.timesteps[steps]
    output = guided_prediction(model, x_t, timesteps, traj.embeds[samples], uncond, guidance)
    return ddim_transition(model.scheduler, output, timesteps, x_t, eta=eta, prev_sample=x_prev,
                           clamp_x0=clamp_x0).log_prob
