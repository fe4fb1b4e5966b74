"""Negative-aware fine-tuning: the diffusion loss on the policy's own samples, split by advantage.

An alternative estimator to the paper's clipped policy gradient (after DiffusionNFT, Zheng et al.
2025; docs/method.md "Estimators"). Each rollout's final sample x0 is noised again at random
timesteps, and the denoiser is trained towards it with the ordinary diffusion target v*, but
through two implicit policies built around the frozen sampling policy's prediction v_old:

    v+ = (1 - beta) v_old + beta v_theta        (the policy moved towards the good samples)
    v- = (1 + beta) v_old - beta v_theta        (its mirror image, moved towards the bad ones)
    L  = r ||v+ - v*||^2 + (1 - r) ||v- - v*||^2,   r = 1/2 + 1/2 clip(A / scale, -1, 1)

The gradient at theta = theta_old is 2 beta (2r - 1)(v_old - v*): the diffusion loss weighted by
the signed advantage. Within a prompt group the weights sum to about zero, so what every sample
shares (e.g. the drift of training on one's own guided samples, which collapsed the naive
positive-only version) cancels, and the loss has its minimum at a bounded distance from v_old:
v_theta = v_old + (2r - 1)(v* - v_old) / beta per point. The log-probabilities of the sampler are
never needed, so rollouts may use any sampler, deterministic DDIM included.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pipeline.models.base import Text2ImageModel
from pipeline.pretraining import diffusion_target
from pipeline.sampling import Trajectory, guided_prediction


def optimality(advantages: torch.Tensor, scale: float) -> torch.Tensor:
    """r in [0, 1]: 1/2 + 1/2 clip(A / scale, -1, 1); 1/2 (no pull either way) at A = 0."""
    return 0.5 + 0.5 * (advantages.float() / scale).clamp(-1.0, 1.0)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
             beta: float) -> torch.Tensor:
    """The negative-aware loss per point, [N] (mean over the non-batch dims); see the module docstring.

    Computed as ||e||^2 + beta^2 ||d||^2 + 2 beta (2r - 1) <e, d> with d = v_theta - v_old and
    e = v_old - v*, which equals r ||v+ - v*||^2 + (1 - r) ||v- - v*||^2 but has an exactly zero
    gradient at r = 1/2, d = 0 (the two-term form leaves rounding noise there, which Adam would
    scale up into full-size steps)."""
    error = (v_old.detach().float() - target.detach().float())
    change = v_theta.float() - v_old.detach().float()
    dims = tuple(range(1, v_theta.ndim))
    pull = (2 * r.detach().to(v_theta.device).float() - 1)
    return ((error**2).mean(dims) + beta**2 * (change**2).mean(dims)
            + 2 * beta * pull * (error * change).mean(dims))


@dataclass
class NFTPoints:
    """Noised copies of rollout samples: the inputs, targets and frozen predictions of one update."""

    samples: torch.Tensor  # [N] index into the trajectory batch
    timesteps: torch.Tensor  # [N]
    x_t: torch.Tensor  # [N, C, H, W]
    target: torch.Tensor  # [N, C, H, W]: the diffusion target for (x0, noise, t)
    v_old: torch.Tensor  # [N, C, H, W]: the sampling policy's (guided) prediction at (x_t, t)
    v_ref: torch.Tensor | None = None  # the reference model's prediction there (rl.nft_ref_weight > 0)

    def __len__(self) -> int:
        return len(self.samples)



def draw_points(model: Text2ImageModel, traj: Trajectory, per_sample: int, generator: torch.Generator,
                t_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`per_sample` (sample, timestep, noise) draws per trajectory: timesteps uniform in
    [t_min * T, T) of the training schedule, fresh noise; on the CPU, like the generator."""
    n, total = len(traj), model.scheduler.config.num_train_timesteps
    samples = torch.arange(n).repeat_interleave(per_sample)
    low = min(int(t_min * total), total - 1)
    timesteps = torch.randint(low, total, (len(samples),), generator=generator)
    noise = torch.randn((len(samples), *traj.latents.shape[2:]), generator=generator)
    return samples, timesteps, noise


@contextlib.contextmanager
def denoising_with(model: Text2ImageModel, unet: torch.nn.Module):
    """`model` predicts with `unet` (e.g. the frozen reference) inside the block."""
    previous = model.__dict__.get("_denoiser")
    model.wrap_denoiser(unet)
    try:
        yield model
    finally:
        model.wrap_denoiser(previous)


@torch.no_grad()
def prepare_points(model: Text2ImageModel, traj: Trajectory, samples: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor, *, uncond: torch.Tensor | None, guidance: float,
                   chunk: int = 256, reference: torch.nn.Module | None = None) -> NFTPoints:
    """x_t, targets, v_old (the current weights' guided prediction, before any update) and, given a
    `reference` UNet, v_ref (its prediction at the same points)."""
    device = traj.latents.device
    x0 = traj.latents[samples.to(device), -1]
    noise, steps = noise.to(device, x0.dtype), timesteps.to(device)
    x_t = model.scheduler.add_noise(x0, noise, steps)
    target = diffusion_target(model.scheduler, x0, noise, steps)
    was_training = model.training
    model.eval()

    def predict() -> torch.Tensor:
        return torch.cat([
            guided_prediction(model, x_t[i:i + chunk], steps[i:i + chunk],
                              traj.embeds[samples[i:i + chunk].to(device)], uncond, guidance).float()
            for i in range(0, len(samples), chunk)])

    v_old = predict()
    v_ref = None
    if reference is not None:
        with denoising_with(model, reference):
            v_ref = predict()
    model.train(was_training)
    return NFTPoints(samples, timesteps, x_t, target, v_old, v_ref)


def points_loss(model: Text2ImageModel, traj: Trajectory, points: NFTPoints, r: torch.Tensor, *, beta: float,
                uncond: torch.Tensor | None, guidance: float, mask: torch.Tensor | None = None,
                ref_weight: float = 0.0) -> torch.Tensor:
    """The mean negative-aware loss over `points` under the current weights (differentiable), plus
    `ref_weight` * ||v_theta - v_ref||^2 when the points carry the reference's predictions."""
    device = traj.latents.device
    v_theta = guided_prediction(model, points.x_t, points.timesteps.to(device),
                                traj.embeds[points.samples.to(device)], uncond, guidance)
    per_point = nft_loss(v_theta, points.v_old, points.target, r[points.samples], beta)
    if ref_weight and points.v_ref is not None:
        dims = tuple(range(1, v_theta.ndim))
        per_point = per_point + ref_weight * ((v_theta.float() - points.v_ref) ** 2).mean(dims)
    if mask is not None:
        keep = mask[points.samples].to(per_point.device)
        return per_point[keep].mean() if bool(keep.any()) else (per_point * 0).sum()
    return per_point.mean()


def nft_update(trainer, traj: Trajectory, advantages: torch.Tensor, valid: torch.Tensor,
               step_scale: float = 1.0) -> dict[str, list[float]]:
    """An RLTrainer's negative-aware steps on one task's rollouts: `train_timesteps` noised copies of each
    rollout in `optimizer_steps` minibatches per inner epoch. Returns loss_rl and grad_norm_rl per step
    and the mean |2r - 1| (how hard the advantages pull) as optimality_spread."""
    rl, model = trainer.rl, trainer.model
    guidance = trainer.guidance if rl.nft_guidance is None else rl.nft_guidance
    uncond = trainer.uncond if guidance != 1.0 else None
    r = optimality(advantages, rl.nft_adv_scale)
    stats = {"loss_rl": [], "grad_norm_rl": [], "optimality_spread": [float((2 * r[valid] - 1).abs().mean())]}
    for _ in range(rl.inner_epochs):
        samples, timesteps, noise = draw_points(model, traj, rl.train_timesteps, trainer.generator, rl.nft_t_min)
        order = torch.randperm(len(samples), generator=trainer.generator)
        # each minibatch's frozen predictions in the very call shape it trains in, before the first step:
        # at theta_old the change is then exactly 0 (not kernel rounding, which Adam would scale up)
        minibatches = [prepare_points(model, traj, samples[rows], timesteps[rows], noise[rows],
                                      uncond=uncond, guidance=guidance, chunk=len(rows), reference=trainer.reference)
                       for rows in order.chunk(rl.optimizer_steps)]
        rows_per_point = 2 if uncond is not None else 1
        trainer.count_passes(len(samples) * (2 if trainer.reference is not None else 1), train=False,
                             rows=rows_per_point)
        model.train()
        for points in minibatches:
            loss = points_loss(model, traj, points, r, beta=rl.nft_beta, uncond=uncond, guidance=guidance,
                               mask=valid, ref_weight=rl.nft_ref_weight)
            stats["grad_norm_rl"].append(trainer.optimiser_step(trainer.with_joint_pretraining(loss), scale=step_scale))
            trainer.count_passes(len(points), train=True, rows=rows_per_point)
            stats["loss_rl"].append(loss.item())
    return stats
