"""Algorithm 1 of the paper: multi-task clipped policy gradient with the pretraining regulariser.

Each iteration samples every task's trajectories from the current weights (theta_old), then for
each task in turn scores them, normalises the rewards into advantages, and takes the clipped
gradient steps on timesteps from the noisy end of the trajectory; then one L_pre step (or L_pre
added to the RL loss). The trainer knows rewards only through the registry interface.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from pipeline.errors import ParamsError
from pipeline.models.base import Text2ImageModel
from pipeline.params import RLParams, SamplingParams, TaskParams
from pipeline.pretraining import TRAIN_PASS_COST, ParameterEMA, pretraining_loss
from pipeline.rewards.registry import Reward
from pipeline.rl.advantages import compute_advantages
from pipeline.rl.batches import TaskBatch, draw_task_batch
from pipeline.rl.distributed import Distributed
from pipeline.rl.loss import clipped_policy_loss
from pipeline.rl.nft import nft_update
from pipeline.rl.policy import choose_train_steps, recompute_log_probs, stochastic_steps
from pipeline.sampling import Trajectory, sample_trajectories


@dataclass
class TaskRuntime:
    params: TaskParams
    reward: Reward
    records: list[dict]


@dataclass
class TrainerState:
    iteration: int = 0
    unet_passes: int = 0
    seconds: float = 0.0  # wall time of the iterations so far, across resumes (the control's wall-time budget)
    history: list[dict] = field(default_factory=list)


def step_means(stats: dict[str, list[float]]) -> dict[str, float]:
    """The mean over optimiser steps of each statistic `train_task` returns (one train.csv row's values)."""
    return {key: float(np.mean(values)) for key, values in stats.items()}


class RLTrainer:
    def __init__(self, model: Text2ImageModel, tasks: list[TaskRuntime], rl: RLParams, sampling: SamplingParams,
                 seed: int, pretrain_batches: Callable[[int], tuple[torch.Tensor, list[str]]] | None = None,
                 dist: Distributed | None = None, caption_dropout: float = 0.0):
        self.model, self.tasks, self.rl, self.sampling = model, tasks, rl, sampling
        self.dist = dist or Distributed()
        self.pretrain_batches = pretrain_batches
        self.caption_dropout = caption_dropout  # L_pre drops captions as pretraining did: the unconditional
        # branch, which the guided RL gradient reaches with weight 1 - guidance, is regularised too
        for index, task in enumerate(tasks):
            if task.reward.distribution_level and task.params.advantage == "group":
                raise ParamsError(f"rl.tasks[{index}].advantage is 'group' but reward {task.params.reward!r} is "
                                  "distribution-level (every sample of a prompt gets the same reward, so group "
                                  "advantages are all zero); use advantage: batch")
            groups = task.params.prompts_per_iteration * self.dist.num_processes
            if task.reward.distribution_level and groups < 2:
                raise ParamsError(f"rl.tasks[{index}] ({task.params.name}): reward {task.params.reward!r} is "
                                  f"distribution-level, so each prompt group gets one reward, and a batch of "
                                  f"{groups} group (prompts_per_iteration {task.params.prompts_per_iteration} x "
                                  f"{self.dist.num_processes} process(es)) normalises to all-zero advantages; "
                                  "raise prompts_per_iteration to at least 2")
        self.parameters = model.trainable_unet_parameters()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=rl.lr, betas=(rl.adam_beta1, rl.adam_beta2),
                                           eps=rl.adam_eps, weight_decay=rl.weight_decay)
        steps_per_iteration = rl.optimizer_steps * rl.inner_epochs * len(tasks)
        warmup = max(1, rl.warmup_iterations * steps_per_iteration)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.ema = ParameterEMA(model.unet, rl.ema_decay) if rl.ema_decay > 0 else None
        self.rng = np.random.default_rng([seed, self.dist.process_index])
        self.generator = torch.Generator().manual_seed(seed * 7919 + self.dist.process_index)
        self.state = TrainerState()
        # nft's anchor to the model RL started from: a frozen copy of its UNet (adapters, if any, at zero)
        self.reference = (copy.deepcopy(model.unet).eval().requires_grad_(False)
                          if rl.algorithm == "nft" and rl.nft_ref_weight > 0 else None)
        self.rollout_steps = rl.rollout_steps or sampling.steps
        self.guidance = sampling.guidance if rl.rollout_guidance is None else rl.rollout_guidance
        with torch.no_grad():
            self.uncond = model.encode_prompts([""]) if self.guidance != 1.0 else None

    # -- one iteration ---------------------------------------------------------------------------
    def sample_task(self, task: TaskRuntime, index: int) -> tuple[TaskBatch, Trajectory]:
        p = task.params
        # a distribution-level reward scores the spread of a group's samples: their noise must be independent
        share = self.rl.share_group_noise and not task.reward.distribution_level
        batch = draw_task_batch(task.records, self.rng, prompts_per_iteration=p.prompts_per_iteration,
                                samples_per_prompt=p.samples_per_prompt, share_group_noise=share,
                                group_offset=self.dist.process_index * p.prompts_per_iteration)
        return batch, self.sample(batch)

    def sample(self, batch: TaskBatch) -> Trajectory:
        """Trajectories of `batch` from the current policy, without gradients, `sampling.batch_size`
        samples a call. Each sample's noise comes from its own seeds, so the chunking changes the
        samples by float rounding at most (none for the default model on this CPU: 128 samples in
        one call or two of 64 are bitwise equal)."""
        self.model.eval()
        size = self.sampling.batch_size
        traj = Trajectory.cat([
            sample_trajectories(self.model, batch.prompts[start:start + size], batch.seeds[start:start + size],
                                init_seeds=batch.init_seeds[start:start + size], steps=self.rollout_steps,
                                guidance=self.guidance, eta=self.rl.eta, clamp_x0=self.rl.clamp_x0,
                                uncond=self.uncond)
            for start in range(0, len(batch.prompts), size)])
        self.count_passes(len(batch.prompts) * self.rollout_steps, train=False)
        return traj

    def score(self, task: TaskRuntime, batch: TaskBatch, traj: Trajectory):
        rewards = task.reward(traj.images, batch.prompts, batch.metadata).detach().float().cpu()
        local = slice(self.dist.process_index * len(rewards), (self.dist.process_index + 1) * len(rewards))
        return rewards, compute_advantages(rewards, task.params.advantage, batch.group_ids, clip=self.rl.adv_clip,
                                           gather=self.dist.gather, local_slice=local)

    def make_plan(self, traj: Trajectory) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (samples [m], steps [m, k]) of each optimiser step: shuffled minibatches x inner epochs."""
        rl, n = self.rl, len(traj)
        stochastic = stochastic_steps(traj)  # the plan lives on the CPU, like its generator
        plan = []
        for _ in range(rl.inner_epochs):
            steps = choose_train_steps(n, traj.log_probs.shape[1], rl.timestep_window, rl.train_timesteps,
                                       self.generator, stochastic)
            order = torch.randperm(n, generator=self.generator)
            plan.extend((minibatch, steps[minibatch]) for minibatch in order.chunk(rl.optimizer_steps))
        return plan

    def train_task(self, traj: Trajectory, advantages: torch.Tensor, valid: torch.Tensor,
                   plan: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   step_scale: float = 1.0) -> dict[str, list[float]]:
        """Clipped policy-gradient steps; all chosen timesteps of a minibatch go through one UNet call.
        `step_scale` (the task's weight) multiplies the learning rate of these steps. Returns each
        statistic per optimiser step, in plan order: approx_kl, clip_fraction, ratio_mean,
        grad_norm_rl (before clipping) and loss_rl (the clipped surrogate)."""
        rl = self.rl
        if rl.algorithm == "nft":
            return nft_update(self, traj, advantages, valid, step_scale)
        plan = self.make_plan(traj) if plan is None else plan
        stats = {"approx_kl": [], "clip_fraction": [], "ratio_mean": [], "grad_norm_rl": [], "loss_rl": []}
        self.model.train()
        for minibatch, steps in plan:
            out = self.policy_loss(traj, advantages, minibatch, steps, valid)
            stats["grad_norm_rl"].append(self.optimiser_step(self.with_joint_pretraining(out.loss), scale=step_scale))
            self.count_passes(steps.numel(), train=True)
            for key, value in (("approx_kl", out.approx_kl), ("clip_fraction", out.clip_fraction),
                               ("ratio_mean", out.ratio_mean), ("loss_rl", out.loss.item())):
                stats[key].append(value)
        return stats

    def policy_loss(self, traj: Trajectory, advantages: torch.Tensor, minibatch: torch.Tensor, steps: torch.Tensor,
                    valid: torch.Tensor | None = None):
        """The clipped surrogate over samples `minibatch` [m] at their `steps` [m, k], in one UNet call."""
        samples = minibatch[:, None].expand(-1, steps.shape[1]).reshape(-1)
        chosen = steps.reshape(-1)
        log_prob = recompute_log_probs(self.model, traj, samples, chosen, uncond=self.uncond,
                                       guidance=self.guidance, eta=self.rl.eta, clamp_x0=self.rl.clamp_x0)
        return clipped_policy_loss(log_prob, traj.log_probs[samples, chosen], advantages[samples], self.rl.clip_range,
                                   mask=None if valid is None else valid[samples])

    @property
    def rows_per_sample(self) -> int:
        """UNet rows a sample costs: 2 with classifier-free guidance (conditional and unconditional)."""
        return 2 if self.uncond is not None else 1

    def count_passes(self, samples: int, train: bool, rows: int | None = None) -> None:
        """Count UNet calls on `samples` inputs of `rows` rows each (default: the policy's, two when guided),
        forward only or trained."""
        self._count((TRAIN_PASS_COST if train else 1) * samples * (self.rows_per_sample if rows is None else rows))

    def with_joint_pretraining(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` plus beta * L_pre when rl.pretrain_mode is "joint" (Algorithm 1's separate step otherwise)."""
        if self.pretrain_batches and self.rl.pretrain_mode == "joint" and self.rl.pretrain_beta > 0:
            return loss + self.rl.pretrain_beta * self._pretrain_loss()
        return loss

    def _count(self, passes: int) -> None:
        """UNet forward-equivalents of the whole run (all processes), the control's budget."""
        self.state.unet_passes += passes * self.dist.num_processes

    def optimiser_step(self, loss: torch.Tensor, scale: float = 1.0, schedule: bool = True) -> float:
        """Every optimiser step of the trainer: clear the gradients, backpropagate `loss` (through DDP
        when distributed), then `apply_gradients`. Returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        self.dist.backward(loss)
        return self.apply_gradients(scale, schedule)

    def apply_gradients(self, scale: float = 1.0, schedule: bool = True) -> float:
        """Clip the gradients to rl.max_grad_norm, step at `scale` times the scheduled learning rate
        (weight decay included), advance the warm-up schedule (RL steps; Algorithm 1's L_pre step
        does not), update the EMA. Returns the gradient norm before clipping."""
        norm = self._clip()
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = lr * scale
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = lr
        if schedule:
            self.schedule.step()
        if self.ema:
            self.ema.update(self.model.unet)
        return norm

    def _clip(self) -> float:
        if self.dist.clip_grad_norm is not None:
            return float(self.dist.clip_grad_norm(self.parameters, self.rl.max_grad_norm))
        return float(torch.nn.utils.clip_grad_norm_(self.parameters, self.rl.max_grad_norm))

    def _pretrain_loss(self) -> torch.Tensor:
        images, captions = self.pretrain_batches(self.rl.pretrain_batch_size)
        drop = torch.rand(len(captions), generator=self.generator) < self.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():  # the text encoder is frozen in RL
            embeds = self.model.encode_prompts(captions)
        self._count(TRAIN_PASS_COST * len(captions))
        return pretraining_loss(self.model, images, captions, self.generator, embeds=embeds)

    def pretrain_step(self) -> dict[str, float]:
        """Algorithm 1's separate L_pre step with weight beta; logs the gradient norm of beta * L_pre."""
        if not self.pretrain_batches or self.rl.pretrain_beta <= 0 or self.rl.pretrain_mode != "separate":
            return {}
        self.model.train()
        loss = self._pretrain_loss()
        norm = self.optimiser_step(self.rl.pretrain_beta * loss, schedule=False)
        return {"loss_pre": loss.item(), "grad_norm_pre": norm}

    def iteration(self) -> list[dict]:
        began = time.perf_counter()
        sampled = [self.sample_task(task, i) for i, task in enumerate(self.tasks)]
        rows = []
        for task, (batch, traj) in zip(self.tasks, sampled):
            task_began = time.perf_counter()
            rewards, adv = self.score(task, batch, traj)
            everywhere = self.dist.gather(rewards) if self.dist.gather else rewards
            finite = everywhere[torch.isfinite(everywhere)]
            row = {"iteration": self.state.iteration + 1, "task": task.params.name,
                   "reward_mean": float(finite.mean()) if finite.numel() else math.nan,
                   "reward_std": float(finite.std(unbiased=False)) if finite.numel() else math.nan,
                   "dropped": int((~torch.isfinite(everywhere)).sum())}
            # decided on the gathered rewards, so every process takes the same steps (a process whose own
            # rewards are all NaN still joins each backward, with a zero loss: DDP all-reduces there)
            if finite.numel() == 0:
                warnings.warn(f"iteration {row['iteration']}, task {task.params.name}: no finite reward; "
                              "skipping its update", RuntimeWarning)
                row["skipped"] = 1
            else:
                row.update(step_means(self.train_task(traj, adv.advantages, adv.valid, step_scale=task.params.weight)))
                row["skipped"] = 0
            row["seconds"] = time.perf_counter() - task_began
            rows.append(row)
        pre = self.pretrain_step()
        self.state.iteration += 1
        for row in rows:
            row.update(pre)
            row["iteration_seconds"] = time.perf_counter() - began
            row["unet_passes"] = self.state.unet_passes
        self.state.history.extend(rows)
        return rows

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        from pipeline.checkpoints import rng_state

        return {"unet": self.model.unet.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
                "global_rng": rng_state(), "state": asdict(self.state),
                "pretrain_batches": getattr(self.pretrain_batches, "state_dict", lambda: None)()}

    def load_state_dict(self, state: dict) -> None:
        from pipeline.checkpoints import restore_rng_state

        self.model.unet.load_state_dict(state["unet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        restore_rng_state(state["global_rng"])
        self.state = TrainerState(**state["state"])
        if state.get("pretrain_batches") is not None:
            self.pretrain_batches.load_state_dict(state["pretrain_batches"])

    def final_unet(self) -> torch.nn.Module:
        return self.ema.averaged(self.model.unet) if self.ema else self.model.unet
