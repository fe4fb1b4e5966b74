"""Benchmark one RL iteration: the project's trainer vs a per-timestep DDPO-style loop, side by side.

Measured in one process on the same samples and plan: sampling images/s, training
timestep-updates/s, seconds per iteration, peak memory, the (b)/(a) ratio, the UNet's FLOPs per
sample and step (torch.utils.flop_counter), this CPU's fp32 matmul rate, and the achieved
fraction of that rate while training and sampling. Variants (threads, channels_last,
inference_mode sampling, torch.compile) are measured in the same run when asked.

    python bench/rl_iteration.py [--model data/models/base] [--params params.yaml] [--variants] [--compile]
    python bench/rl_iteration.py --device cuda --mixed-precision bf16 [--channels 64,128,256 --resolution 64]

On CUDA every timing synchronises the device; `bench/cuda_check.sh` runs the GPU set.
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


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 20) -> float:
    """This device's matmul rate in `dtype` (512^2 on the CPU, 8192^2 on CUDA: the size each runs well at)."""
    size = 8192 if device.type == "cuda" else 512
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


def unet_gflop_per_sample(model) -> float:
    x = torch.randn(1, *model.sample_shape, device=model.device)
    embeds = model.encode_prompts(["a red circle left of a blue square"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict(x, torch.tensor([500]), embeds)
    return counter.get_total_flops() / 1e9


def peak_mb() -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def timed(fn):
    synchronize()
    began = time.perf_counter()
    result = fn()
    synchronize()
    return result, time.perf_counter() - began


def bench_params(args):
    """params.yaml with the command line's device, precision and model-size overrides applied."""
    params = load_params(args.params)
    model = params.model.model_copy(update={"mixed_precision": args.mixed_precision})
    world = params.world
    if args.channels:
        model = model.model_copy(update={"channels": [int(c) for c in args.channels.split(",")]})
    if args.resolution:
        world = world.model_copy(update={"resolution": args.resolution})
    return params.model_copy(update={"device": args.device, "model": model, "world": world})


def build(args):
    params = bench_params(args)
    torch.manual_seed(params.seed)
    fresh = args.channels or args.resolution or not (args.model and Path(args.model).is_dir())
    model = new_tiny_model(params) if fresh else load_model(args.model, params)
    task = params.rl.tasks[0]
    if task.reward == "preference":  # the bench needs no learned model: any reward gives the same cost
        task = task.model_copy(update={"reward": "composition", "prompts": "composition"})
    records = [{"prompt": "a red circle left of a blue square", "spec": None},
               {"prompt": "a green triangle above a yellow square", "spec": None}]
    if Path(args.prompts).is_dir():
        records = build_tasks(params.model_copy(update={"rl": params.rl.model_copy(update={"tasks": [task]})}),
                              args.prompts, None)[0].records
    trainer = build_trainer(model, params, [TaskRuntime(task, build_reward(task.reward), records)])
    return params, model, trainer


def measure(args) -> dict:
    params, model, trainer = build(args)
    steps, guidance = params.sampling.steps, params.sampling.guidance
    cfg = 2 if guidance != 1.0 else 1
    bf16 = params.model.mixed_precision == "bf16"
    peak = matmul_gflops(model.device, torch.bfloat16 if bf16 else torch.float32)
    flops = unet_gflop_per_sample(model)
    trainer.sample_task(trainer.tasks[0], 0)  # warm-up: lazy CUDA init, autotuning
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

    def time_training(suffix: str = "") -> None:
        for name, run in (("project", lambda: trainer.train_task(traj, advantages, valid, plan=plan)),
                          ("reference", lambda: per_timestep_update(trainer, traj, advantages, valid, plan))):
            times = []
            for _ in range(args.repeats):
                reset()
                times.append(timed(run)[1])
            best = min(times)  # with torch.compile the first repeat holds the compilation
            results[f"{name}{suffix}_train_s"] = best
            results[f"{name}{suffix}_updates_per_s"] = pairs / best
            results[f"{name}{suffix}_iteration_s"] = results[f"sampling{suffix}_s"] + best
            results[f"{name}{suffix}_train_fraction_of_matmul"] = 3 * flops * pairs * cfg / best / peak

    results = {"sampling_s": sample_s, "trajectories": n, "steps": steps, "pairs": pairs}
    time_training()
    results.update(
        images_per_s=n / sample_s,
        ratio_reference_over_project=results["reference_train_s"] / results["project_train_s"],
        iteration_ratio=results["reference_iteration_s"] / results["project_iteration_s"],
        unet_gflop_per_sample_step=flops,
        matmul_gflops=peak,
        sampling_fraction_of_matmul=flops * n * steps * cfg / sample_s / peak,
        device=str(model.device),
        mixed_precision=params.model.mixed_precision,
    )
    if args.compile:  # the same measurements through torch.compile, beside the eager ones above
        model.wrap_denoiser(torch.compile(model.unet))
        trainer.sample_task(trainer.tasks[0], 0)  # compiles the sampling shapes
        results["sampling_compiled_s"] = timed(lambda: trainer.sample_task(trainer.tasks[0], 0))[1]
        time_training("_compiled")
        results["ratio_reference_eager_over_project_compiled"] = (results["reference_train_s"]
                                                                   / results["project_compiled_train_s"])
        results["iteration_ratio_reference_eager_over_project_compiled"] = (results["reference_iteration_s"]
                                                                             / results["project_compiled_iteration_s"])
        model.wrap_denoiser(None)
    results.update(peak_mb())
    if args.variants:
        results["variants"] = variants(model, trainer, batch, params)
    if args.full_iterations:  # Algorithm 1 whole for the benchmarked task (rl.tasks[0]): sample, score, train, L_pre
        reset()
        seconds = [timed(trainer.iteration)[1] for _ in range(args.full_iterations)]
        results["full_iteration_s"] = min(seconds)
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
    chosen = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"sampling_threads_{threads}_s"] = timed(sample)[1]
    torch.set_num_threads(chosen)  # --threads holds for what is measured after the variants
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", default="data/models/base", help="model folder (fresh tiny model if missing)")
    p.add_argument("--prompts", default="data/prompts")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", action="store_true", help="also time sampling speed-up candidates")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16"], help="bf16 autocast (CUDA or CPU)")
    p.add_argument("--compile", action="store_true",
                   help="also time sampling and both loops with the UNet through torch.compile")
    p.add_argument("--full-iterations", type=int, default=0, help="also time this many whole iterations")
    p.add_argument("--channels", default=None, help="a fresh UNet of these block widths, e.g. 64,128,256")
    p.add_argument("--resolution", type=int, default=None, help="a fresh model at this image size")
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
