"""Run under `accelerate launch`: one RL update of the first task; saves what each process saw and did."""
import sys
from pathlib import Path

import torch

import pipeline  # noqa: F401
from pipeline.config import load_params
from pipeline.models.loading import load_model
from pipeline.rl.distributed import setup_distributed
from pipeline.rl.run import build_tasks, build_trainer
from pipeline.runtime import configure


def main(params_path: str, base: str, prompts: str, out: str) -> None:
    params = load_params(params_path)
    configure(params.seed, params.threads)
    model = load_model(base, params)
    dist = setup_distributed(model, params.device)
    trainer = build_trainer(model, params, build_tasks(params, prompts, None), dist=dist, progress=False)
    task = trainer.tasks[0]
    batch, traj = trainer.sample_task(task, 0)
    rewards, adv = trainer.score(task, batch, traj)
    trainer.train_task(traj, adv.advantages, adv.valid)
    torch.save({"traj": traj, "rewards": rewards, "group_ids": batch.group_ids, "advantages": adv.advantages,
                "valid": adv.valid, "plan": trainer.last_plan, "unet": model.unet.state_dict(),
                "num_processes": dist.num_processes}, Path(out) / f"process-{dist.process_index}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:5])
