"""Benchmark one RL iteration: the project's trainer vs a per-timestep DDPO-style loop, side by side.

Measured in one process on the same samples and plan: sampling images/s, training
timestep-updates/s, seconds per iteration, peak memory, the (b)/(a) ratio, the UNet's FLOPs per
sample and step (torch.utils.flop_counter), this CPU's fp32 matmul rate, and the achieved
fraction of that rate while training and sampling. Variants (threads, channels_last,
inference_mode sampling) are measured in the same run when asked.

    python bench/rl_iteration.py [--model data/models/base] [--params params.yaml] [--variants]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from pipeline.models.loading import load_model, new_tiny_model  # noqa: E402
from pipeline.rl.reference_loop import per_timestep_update  # noqa: E402
from pipeline.rl.run import build_tasks, build_trainer  # noqa: E402
from pipeline.rl.trainer import TaskRuntime  # noqa: E402
from pipeline.rewards.registry import build_reward  # noqa: E402
from pipeline.sampling import sample_trajectories  # noqa: E402


def matmul_gflops(size: int = 512, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    began = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


def unet_gflop_per_sample(model) -> float:
    x = torch.randn(1, *model.sample_shape)
    embeds = model.encode_prompts(["a red circle left of a blue square"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict(x, torch.tensor([500]), embeds)
    return counter.get_total_flops() / 1e9


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def build(args):
    params = load_params(args.params)
    torch.manual_seed(params.seed)
    model = load_model(args.model, params) if args.model and Path(args.model).is_dir() else new_tiny_model(params)
    task = params.rl.tasks[0]
    if task.reward == "preference":  # the bench needs no learned model: any reward gives the same cost
        task = task.model_copy(update={"reward": "composition", "prompts": "composition"})
    records = [{"prompt": "a red circle left of a blue square", "spec": None},
               {"prompt": "a green triangle above a yellow square", "spec": None}]
    if Path(args.prompts).is_dir():
        records = build_tasks(params.model_copy(update={"rl": params.rl.model_copy(update={"tasks": [task]})}),
                              args.prompts, None)[0].records
    trainer = build_trainer(model, params, [TaskRuntime(task, build_reward(task.reward), records)], progress=False)
    return params, model, trainer


def measure(args) -> dict:
    params, model, trainer = build(args)
    steps, guidance = params.sampling.steps, params.sampling.guidance
    cfg = 2 if guidance != 1.0 else 1
    peak = matmul_gflops()
    flops = unet_gflop_per_sample(model)
    (batch, traj), sample_s = timed(lambda: trainer.sample_task(trainer.tasks[0], 0))
    n = len(traj)
    advantages = torch.randn(n, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(n, dtype=torch.bool)
    plan = trainer.make_plan(traj)
    pairs = sum(s.numel() for _, s in plan)
    start = (copy.deepcopy(model.unet.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()),
             copy.deepcopy(trainer.schedule.state_dict()))

    def reset():
        model.unet.load_state_dict(start[0])
        trainer.optimizer.load_state_dict(start[1])
        trainer.schedule.load_state_dict(start[2])

    results = {"sampling_s": sample_s, "trajectories": n, "steps": steps, "pairs": pairs}
    for name, run in (("project", lambda: trainer.train_task(traj, advantages, valid, plan=plan)),
                      ("reference", lambda: per_timestep_update(trainer, traj, advantages, valid, plan))):
        times = []
        for _ in range(args.repeats):
            reset()
            times.append(timed(run)[1])
        results[f"{name}_train_s"] = min(times)
        results[f"{name}_updates_per_s"] = pairs / min(times)
        results[f"{name}_iteration_s"] = sample_s + min(times)
        results[f"{name}_train_fraction_of_matmul"] = 3 * flops * pairs * cfg / min(times) / peak
    results.update(
        images_per_s=n / sample_s,
        ratio_reference_over_project=results["reference_train_s"] / results["project_train_s"],
        iteration_ratio=results["reference_iteration_s"] / results["project_iteration_s"],
        unet_gflop_per_sample_step=flops,
        matmul_gflops=peak,
        sampling_fraction_of_matmul=flops * n * steps * cfg / sample_s / peak,
        peak_rss_mb=peak_mb(),
    )
    if args.variants:
        results["variants"] = variants(model, trainer, batch, params)
    return results


def variants(model, trainer, batch, params) -> dict:
    """Sampling speed under candidate speed-ups, each beside its own baseline in this run."""
    out = {}

    def sample():
        return sample_trajectories(model, batch.prompts, batch.seeds, steps=params.sampling.steps,
                                   guidance=params.sampling.guidance, eta=1.0, uncond=trainer.uncond)

    out["sampling_no_grad_s"] = timed(sample)[1]
    with torch.inference_mode():
        out["sampling_inference_mode_s"] = timed(sample)[1]
    model.unet.to(memory_format=torch.channels_last)
    out["sampling_channels_last_s"] = timed(sample)[1]
    model.unet.to(memory_format=torch.contiguous_format)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"sampling_threads_{threads}_s"] = timed(sample)[1]
    torch.set_num_threads(1)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", default="data/models/base", help="model folder (fresh tiny model if missing)")
    p.add_argument("--prompts", default="data/prompts")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", action="store_true", help="also time sampling speed-up candidates")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = measure(args)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
