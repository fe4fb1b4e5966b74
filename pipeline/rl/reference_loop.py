"""The per-timestep update loop of common DDPO implementations, kept as the benchmark's baseline.

For each minibatch and each chosen timestep position, one UNet call on that position alone (with
guidance as a concatenated 2B batch), loss, backward; gradients accumulate over the positions and
the optimiser steps once per minibatch, through the trainer's own `apply_gradients`. Same samples,
same plan, same loss as `RLTrainer.train_task`, which instead puts all positions of a minibatch
through one UNet call.
"""
from __future__ import annotations

import torch

from pipeline.rl.loss import clipped_policy_loss
from pipeline.rl.policy import recompute_log_probs
from pipeline.rl.trainer import RLTrainer
from pipeline.sampling import Trajectory


def per_timestep_update(trainer: RLTrainer, traj: Trajectory, advantages: torch.Tensor, valid: torch.Tensor,
                        plan: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Runs the plan the DDPO way; returns each optimiser step's loss (mean over its positions)."""
    rl, losses = trainer.rl, []
    trainer.model.train()
    for minibatch, steps in plan:
        trainer.optimizer.zero_grad(set_to_none=True)
        positions = steps.shape[1]
        total = 0.0
        for j in range(positions):
            log_prob = recompute_log_probs(trainer.model, traj, minibatch, steps[:, j], uncond=trainer.uncond,
                                           guidance=trainer.sampling.guidance, eta=rl.eta, clamp_x0=rl.clamp_x0)
            out = clipped_policy_loss(log_prob, traj.log_probs[minibatch, steps[:, j]], advantages[minibatch],
                                      rl.clip_range, mask=valid[minibatch])
            (out.loss / positions).backward()
            total += out.loss.item() / positions
        trainer.apply_gradients()
        losses.append(total)
    return losses
