"""DDIM sampling that records the denoising MDP (DDPO-style), and the one transition it shares
with the trainer.

`ddim_transition` is the only place a DDIM step is computed: the sampler calls it with fresh
noise, the trainer calls it with the recorded action to get the log-prob under new weights, so a
recomputed log-prob equals the recorded one (a mismatch here made 91% of on-policy steps fall
outside the trust region in the prototype: docs/method.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.models.base import Text2ImageModel
from pipeline.progress import Progress

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class Transition:
    prev_sample: torch.Tensor  # x_{t-1}
    log_prob: torch.Tensor  # [B], mean over non-batch dims; 0 where the step is deterministic
    mean: torch.Tensor
    std: torch.Tensor  # [B]


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.reshape(-1, *([1] * (ndim - 1)))


def ddim_transition(scheduler, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, *,
                    eta: float, prev_sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                    clamp_x0: bool = False) -> Transition:
    """One batched DDIM step x_t -> x_{t-1} with per-sample `timesteps`, and its Gaussian log-prob.

    Matches `DDIMScheduler.step` (same alphas, variance and direction term). Give `prev_sample` to
    score a recorded action, or `noise` to draw one (mean + std * noise).
    """
    timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1).expand(sample.shape[0])
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_timesteps = timesteps - step
    alphas = scheduler.alphas_cumprod.to(sample.device, torch.float64)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64, device=sample.device)
    alpha_t = alphas[timesteps]
    alpha_prev = torch.where(prev_timesteps >= 0, alphas[prev_timesteps.clamp(min=0)], final)
    beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp(min=0).sqrt()

    a_t, b_t = (_per_sample(v.to(sample.dtype), sample.ndim) for v in (alpha_t, beta_t))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (sample - b_t.sqrt() * model_output) / a_t.sqrt()
        eps = model_output
    elif kind == "v_prediction":
        x0 = a_t.sqrt() * sample - b_t.sqrt() * model_output
        eps = a_t.sqrt() * model_output + b_t.sqrt() * sample
    elif kind == "sample":
        x0 = model_output
        eps = (sample - a_t.sqrt() * x0) / b_t.sqrt()
    else:
        raise ValueError(f"unknown prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    if clamp_x0:
        x0 = x0.clamp(-1, 1)
    direction = _per_sample((1 - alpha_prev - std**2).clamp(min=0).sqrt().to(sample.dtype), sample.ndim) * eps
    mean = _per_sample(alpha_prev.sqrt().to(sample.dtype), sample.ndim) * x0 + direction
    std_b = _per_sample(std.to(sample.dtype), sample.ndim)
    if prev_sample is None:
        prev_sample = mean if noise is None else mean + std_b * noise
    prev_sample = prev_sample.detach()
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std)).to(sample.dtype)
    safe_std_b = _per_sample(safe_std, sample.ndim)
    log_density = -((prev_sample - mean) ** 2) / (2 * safe_std_b**2) - safe_std_b.log() - LOG_SQRT_2PI
    log_prob = log_density.mean(dim=tuple(range(1, sample.ndim)))
    log_prob = torch.where(stochastic.to(log_prob.device), log_prob, torch.zeros_like(log_prob))
    return Transition(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std.to(sample.dtype))


def guided_prediction(model: Text2ImageModel, sample: torch.Tensor, timesteps: torch.Tensor,
                      embeds: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Denoiser output with classifier-free guidance in one batched call (2B rows)."""
    timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1).expand(sample.shape[0])
    if uncond is None or guidance == 1.0:
        return model.predict(sample, timesteps, embeds)
    uncond = uncond.expand(embeds.shape[0], *embeds.shape[1:])
    both = model.predict(torch.cat([sample, sample]), torch.cat([timesteps, timesteps]), torch.cat([uncond, embeds]))
    out_uncond, out_cond = both.chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)


@dataclass
class Trajectory:
    """A batch of denoising trajectories: everything the trainer needs to score actions again."""

    prompts: list[str]
    latents: torch.Tensor  # (B, T+1, C, H, W): x_T ... x_0
    timesteps: torch.Tensor  # (T,)
    log_probs: torch.Tensor  # (B, T)
    embeds: torch.Tensor  # (B, L, D)
    images: torch.Tensor  # uint8 (B, H, W, 3)

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def cat(cls, parts: list["Trajectory"]) -> "Trajectory":
        """Several batches of the same sampler settings as one batch (e.g. gathered from processes)."""
        return cls(prompts=[p for part in parts for p in part.prompts],
                   latents=torch.cat([p.latents for p in parts]), timesteps=parts[0].timesteps,
                   log_probs=torch.cat([p.log_probs for p in parts]), embeds=torch.cat([p.embeds for p in parts]),
                   images=torch.cat([p.images for p in parts]))


def seeded_noise(seeds: list[int], shape: tuple[int, ...], device, dtype=torch.float32) -> torch.Tensor:
    """One independent normal draw per seed, so a sample's noise depends on its seed alone."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype) for s in seeds]
    return torch.stack(rows).to(device)


class _StepNoise:
    """Per-sample generators for the noise of each stochastic step."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(int(s) + 1_000_003) for s in seeds]

    def draw(self, shape, device, dtype) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in self.generators]).to(device)


@torch.no_grad()
def sample_trajectories(model: Text2ImageModel, prompts: list[str], seeds: list[int], *, steps: int,
                        guidance: float, eta: float, clamp_x0: bool = False, init_seeds: list[int] | None = None,
                        embeds: torch.Tensor | None = None, uncond: torch.Tensor | None = None,
                        progress: bool = False) -> Trajectory:
    """Sample `prompts` with DDIM, recording latents, timesteps and per-step log-probs.

    `seeds[i]` drives sample i's step noise; `init_seeds[i]` (default `seeds`) its initial noise,
    so samples of one prompt group can share a start while their paths differ.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    device = model.device
    model.scheduler.set_timesteps(steps, device=device)
    timesteps = model.scheduler.timesteps.to(device)
    embeds = model.encode_prompts(prompts) if embeds is None else embeds
    if uncond is None and guidance != 1.0:
        uncond = model.encode_prompts([""])
    x = seeded_noise(init_seeds or seeds, model.sample_shape, device)
    step_noise = _StepNoise(seeds)
    latents, log_probs = [x], []
    for t in tqdm(timesteps, desc="sampling", leave=False, disable=not progress):
        output = guided_prediction(model, x, t, embeds, uncond, guidance)
        noise = step_noise.draw(model.sample_shape, device, x.dtype) if eta > 0 else None
        step = ddim_transition(model.scheduler, output, t, x, eta=eta, noise=noise, clamp_x0=clamp_x0)
        x = step.prev_sample
        latents.append(x)
        log_probs.append(step.log_prob)
    return Trajectory(
        prompts=list(prompts),
        latents=torch.stack(latents, dim=1),
        timesteps=timesteps,
        log_probs=torch.stack(log_probs, dim=1),
        embeds=embeds,
        images=model.to_images(x),
    )


def sample_images(model: Text2ImageModel, prompts: list[str], seeds: list[int], *, steps: int, guidance: float,
                  eta: float = 0.0, batch_size: int = 64, progress: bool = True,
                  label: str = "sampling") -> torch.Tensor:
    """uint8 images (N, H, W, 3) for (prompt, seed) pairs, in chunks; same pair -> same image."""
    chunks = []
    uncond = model.encode_prompts([""]) if guidance != 1.0 else None
    bar = Progress(label, len(prompts), unit="image", enabled=progress)
    for start in range(0, len(prompts), batch_size):
        part = slice(start, start + batch_size)
        traj = sample_trajectories(model, prompts[part], seeds[part], steps=steps, guidance=guidance, eta=eta,
                                   uncond=uncond)
        chunks.append(traj.images.cpu())  # images are scored and written on the CPU
        bar.update(len(traj))
    bar.close()
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
