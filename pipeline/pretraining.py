"""The ordinary diffusion loss (the paper's L_pre) and the loop that pretrains on it.

The same loss serves three callers: the `pretrain` stage, the RL regulariser, and the
compute-matched `control`, which is the base pretrained on for the budget RL used.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup

from pipeline.checkpoints import restore_rng_state, resume, rng_state, save_checkpoint
from pipeline.models.base import Text2ImageModel
from pipeline.progress import Progress
from pipeline.world.realism import Realism
from pipeline.world.stream import SceneStream

TRAIN_PASS_COST = 3  # a forward+backward UNet pass costs ~3 forward passes (compute budget unit)


def diffusion_loss(model_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pretraining objective L_pre: mean squared error between predicted and true noise."""
    return F.mse_loss(model_output.float(), target.float())


def scene_stream(world, seed: int) -> SceneStream:
    """The pretraining stream of a WorldParams (web-like when `world.stream` says so)."""
    return SceneStream(seed, world.resolution, world.two_object_prob, realism=Realism.from_params(world.stream))


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {kind!r}")


def pretraining_loss(model: Text2ImageModel, images: torch.Tensor, captions: list[str], generator: torch.Generator,
                     caption_dropout: float = 0.0, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """E||target - f(x_t, t, c)||^2 on image-caption pairs, with captions dropped to "" at a rate."""
    x0 = model.from_images(images)
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (batch,), generator=generator)
    timesteps = timesteps.to(x0.device)
    if embeds is None:
        drop = torch.rand(batch, generator=generator) < caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        embeds = model.encode_prompts(captions)
    x_t = model.scheduler.add_noise(x0, noise, timesteps)
    target = diffusion_target(model.scheduler, x0, noise, timesteps)
    return diffusion_loss(model.predict(x_t, timesteps, embeds), target)


class ParameterEMA:
    """Exponential moving average of parameters; `averaged()` gives a model copy with EMA weights."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for avg, p in zip(self.shadow, module.parameters()):
            avg.lerp_(p.detach(), 1.0 - self.decay)

    def averaged(self, module: torch.nn.Module) -> torch.nn.Module:
        copy_ = copy.deepcopy(module)
        with torch.no_grad():
            for p, avg in zip(copy_.parameters(), self.shadow):
                p.copy_(avg)
        return copy_

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state):
        """Checkpoints load on the CPU; the averages stay where the live ones are (e.g. CUDA)."""
        self.decay = state["decay"]
        self.shadow = [t.to(device=old.device, dtype=old.dtype).clone() for t, old in zip(state["shadow"], self.shadow)]


@dataclass
class PretrainResult:
    model: Text2ImageModel  # EMA weights when EMA is on
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def pretrain(model: Text2ImageModel, stream: SceneStream, *, steps: int, batch_size: int, lr: float,
             warmup_steps: int, weight_decay: float, ema_decay: float, caption_dropout: float, seed: int,
             checkpoint_dir=None, checkpoint_every: int = 500, checkpoint_keep: int = 2, log_every: int = 50,
             log_fn=None, progress: bool = True, max_seconds: float | None = None,
             label: str = "pretrain") -> PretrainResult:
    """Train every parameter of `model` on the scene stream; resumes from `checkpoint_dir` if present.

    `max_seconds` stops early on wall time (the wall-time-matched control); `steps` still sets the
    learning-rate schedule. Progress is reported under `label` (pipeline/progress.py).
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    ema = ParameterEMA(model, ema_decay) if ema_decay > 0 else None
    generator = torch.Generator().manual_seed(seed)
    result = PretrainResult(model=model)
    carried = {"running": [], "seconds": 0.0}  # losses since the last log line; wall time of earlier launches

    def restore(state: dict) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stream.load_state_dict(state["stream"])
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        result.losses = [tuple(pair) for pair in state["losses"]]
        carried.update(running=list(state.get("running", [])), seconds=state.get("seconds", 0.0))
        if ema:
            ema.load_state_dict(state["ema"])

    start = resume(checkpoint_dir, "pretrain", restore) if checkpoint_dir else 0
    running, earlier_seconds = carried["running"], carried["seconds"]
    began = time.perf_counter()
    bar = Progress(label, steps, initial=start, enabled=progress)
    for step in range(start, steps):
        images, captions, _ = stream.next_batch(batch_size)
        loss = pretraining_loss(model, torch.from_numpy(images), captions, generator, caption_dropout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if ema:
            ema.update(model)
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = sum(running) / len(running)
            result.losses.append((step + 1, mean))
            bar.values["loss"] = mean
            if log_fn:
                log_fn({"pretrain/loss": mean, "pretrain/lr": schedule.get_last_lr()[0]}, step + 1)
            running = []
        bar.update(1)
        if max_seconds is not None and earlier_seconds + time.perf_counter() - began >= max_seconds:
            steps = step + 1
            break
        if checkpoint_dir and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(checkpoint_dir, step + 1, kind="pretrain", keep=checkpoint_keep, state={
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "stream": stream.state_dict(), "generator": generator.get_state(), "rng": rng_state(),
                "losses": result.losses, "ema": ema.state_dict() if ema else None,
                "running": running, "seconds": earlier_seconds + time.perf_counter() - began,
            })
    bar.close()
    result.seconds = earlier_seconds + time.perf_counter() - began
    result.steps = steps
    model.eval()
    result.model = ema.averaged(model) if ema else model
    return result


class StreamBatches:
    """Image-caption batches for L_pre from a scene stream, as (uint8 tensor, captions); resumable."""

    def __init__(self, stream: SceneStream):
        self.stream = stream

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        images, captions, _ = self.stream.next_batch(batch_size)
        return torch.from_numpy(images), captions

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state) -> None:
        self.stream.load_state_dict(state)
