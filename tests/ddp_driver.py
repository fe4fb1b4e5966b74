"""Run under `accelerate launch`: one RL update of the first task; saves what each process saw and did.

With a fifth argument `nan-on-process-1`, process 1's rewards are all NaN and whole iterations of
Algorithm 1 run instead (they must not hang, and the replicas must stay identical)."""
import sys
from pathlib import Path

import torch

import pipeline  # noqa: F401
from pipeline.config import load_params
from pipeline.models.loading import load_model
from pipeline.rl.distributed import setup_distributed
from pipeline.rl.run import build_tasks, build_trainer
from pipeline.runtime import configure


class _NaNOnProcess1:
    def __init__(self, reward, process_index: int):
        self.reward, self.process_index = reward, process_index
        self.distribution_level = reward.distribution_level

    def __call__(self, images, prompts, metadata):
        scores = self.reward(images, prompts, metadata)
        return torch.full_like(scores, float("nan")) if self.process_index == 1 else scores


def main(params_path: str, base: str, prompts: str, out: str, mode: str = "one-update") -> None:
    params = load_params(params_path)
    configure(params.seed, params.threads)
    model = load_model(base, params)
    dist = setup_distributed(model, params.device)
    trainer = build_trainer(model, params, build_tasks(params, prompts, None), dist=dist)
    task = trainer.tasks[0]
    if mode == "nan-on-process-1":
        task.reward = _NaNOnProcess1(task.reward, dist.process_index)
        rows = [row for _ in range(2) for row in trainer.iteration()]
        torch.save({"rows": rows, "unet": model.unet.state_dict()}, Path(out) / f"process-{dist.process_index}.pt")
        return
    batch, traj = trainer.sample_task(task, 0)
    rewards, adv = trainer.score(task, batch, traj)
    plan = trainer.make_plan(traj)
    trainer.train_task(traj, adv.advantages, adv.valid, plan=plan)
    torch.save({"traj": traj, "rewards": rewards, "group_ids": batch.group_ids, "advantages": adv.advantages,
                "valid": adv.valid, "plan": plan, "unet": model.unet.state_dict(),
                "num_processes": dist.num_processes}, Path(out) / f"process-{dist.process_index}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:6])
