"""Is the policy gradient signal or noise? The cosine between the RL gradients of two independent
batches of the same prompts (fresh noise), beside the same batches with shuffled advantages.

    python -m pipeline.rl.diagnostics --params params.yaml --model data/models/base [--repeats 3]

Values near the shuffled baseline mean the gradient is mostly noise, which AdamW turns into
full-size random steps (docs/experiments.md E12, E14).
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from pipeline.rl.policy import choose_train_steps, stochastic_steps
from pipeline.rl.trainer import RLTrainer
from pipeline.sampling import Trajectory

SEED_SHIFT = 10**6  # the second batch's noise seeds: far from any the trainer draws


def policy_gradient(trainer: RLTrainer, traj: Trajectory, advantages: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The flattened gradient of the trainer's clipped loss over every sample of `traj` at `steps` [n, k]."""
    trainer.model.zero_grad(set_to_none=True)
    trainer.policy_loss(traj, advantages, torch.arange(len(traj)), steps).loss.backward()
    grads = [p.grad.flatten() for p in trainer.parameters if p.grad is not None]
    trainer.model.zero_grad(set_to_none=True)
    return torch.cat(grads)


def gradient_agreement(trainer: RLTrainer, task_index: int = 0, repeats: int = 3, seed_shift: int = SEED_SHIFT) -> dict:
    """Cosines between the two batches' gradients: {"reward": [...], "shuffled": [...]}, one per repeat."""
    task = trainer.tasks[task_index]
    out = {"reward": [], "shuffled": []}
    for repeat in range(repeats):
        batch, first = trainer.sample_task(task, task_index)
        twin = dataclasses.replace(batch, seeds=[s + seed_shift for s in batch.seeds],
                                   init_seeds=[s + seed_shift for s in batch.init_seeds])
        second = trainer.sample(twin)
        order = torch.randperm(len(first), generator=torch.Generator().manual_seed(repeat))
        grads = {"reward": [], "shuffled": []}
        for b, traj in ((batch, first), (twin, second)):
            advantages = trainer.score(task, b, traj)[1].advantages
            steps = choose_train_steps(len(traj), traj.log_probs.shape[1], trainer.rl.timestep_window,
                                       trainer.rl.train_timesteps, torch.Generator().manual_seed(repeat),
                                       stochastic_steps(traj))
            grads["reward"].append(policy_gradient(trainer, traj, advantages, steps))
            grads["shuffled"].append(policy_gradient(trainer, traj, advantages[order], steps))
        for key, (a, b) in grads.items():
            out[key].append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", default="data/models/base")
    p.add_argument("--prompts", default="data/prompts")
    p.add_argument("--reward-model", default="data/models/reward")
    p.add_argument("--task", type=int, default=0, help="index into rl.tasks")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from pipeline.config import load_params
    from pipeline.models.loading import load_model
    from pipeline.rl.run import build_tasks, build_trainer
    from pipeline.runtime import configure

    params = load_params(args.params)
    configure(params.seed, params.threads)
    model = load_model(args.model, params)
    trainer = build_trainer(model, params, build_tasks(params, args.prompts, args.reward_model))
    cosines = gradient_agreement(trainer, args.task, args.repeats)
    for key, values in cosines.items():
        print(f"{key:9s} cosine {np.mean(values):+.4f} ± {np.std(values):.4f}  ({', '.join(f'{v:+.3f}' for v in values)})")


if __name__ == "__main__":
    main()
