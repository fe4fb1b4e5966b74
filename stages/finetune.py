"""Stage `finetune`: RL fine-tune the base model on the tasks in `rl.tasks` (Algorithm 1).

Resumes from the newest checkpoint in --checkpoints (outside DVC outputs, keyed by the params and
input folders that shape the run). Writes the fine-tuned model, train.json (flat final metrics),
train.csv (one row per iteration and task) and budget.json for `control` (UNet passes; the seconds
too when `control.budget` is wall_time).
"""
from __future__ import annotations

from pathlib import Path

from stages._cli import machine, parser, positive_int, run_main


class _Untracked:
    """Stands in for the MLflow run on non-main processes: only the main process tracks."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def log_metrics(self, *args, **kwargs):
        pass

    log_outputs = log_metrics


def main(argv: list[str] | None = None) -> None:
    p = parser("finetune", __doc__)
    p.add_argument("--base", default="data/models/base", help="base model folder (or SD hub id/path)")
    p.add_argument("--prompts", default="data/prompts")
    p.add_argument("--reward-model", default="data/models/reward", help="learned preference model folder")
    p.add_argument("--out", default="data/models/rl")
    p.add_argument("--metrics", default="data/metrics/train.json")
    p.add_argument("--plots", default="data/plots/train.csv")
    p.add_argument("--budget", default="data/metrics/budget.json")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after this many iterations (testing resume)")
    args = p.parse_args(argv)

    def body(params) -> None:
        from pipeline.checkpoints import folder_fingerprint, run_key
        from pipeline.io import atomic_path, write_json, write_text
        from pipeline.models.loading import load_model
        from pipeline.models.tiny import MODEL_INDEX
        from pipeline.outputs import Output, check_outputs
        from pipeline.rl.distributed import setup_distributed
        from pipeline.rl.run import build_tasks, build_trainer, summarise, train
        from pipeline.tracking import StageRun

        check_outputs("finetune", [Output("--out", args.out, folder=True, marker=MODEL_INDEX),
                                   Output("--metrics", args.metrics), Output("--plots", args.plots),
                                   Output("--budget", args.budget)],
                      {"--params": args.params, "--base": args.base, "--prompts": args.prompts,
                       "--reward-model": args.reward_model, "--checkpoints": args.checkpoints})

        tasks = build_tasks(params, args.prompts, args.reward_model)
        model = load_model(args.base, params)
        key = run_key("finetune", params, params.rl, params.sampling, params.world, params.model,
                      folder_fingerprint(args.base), folder_fingerprint(args.reward_model), folder_fingerprint(args.prompts))
        dist = setup_distributed(model, params.device)
        tracker = StageRun("finetune", params.model_dump(mode="json")) if dist.is_main else _Untracked()
        with tracker as run:
            trainer = build_trainer(model, params, tasks, dist=dist)
            timing = train(trainer, params.rl.iterations, Path(args.checkpoints) / key, params.rl.checkpoint_every,
                           checkpoint_keep=params.checkpoint_keep, max_minutes=params.rl.max_minutes,
                           log_fn=run.log_metrics, stop_after=args.stop_after)
            if timing["stopped_by"] == "stop_after":
                print(f"finetune: stopped after iteration {trainer.state.iteration} as asked; outputs not written")
                return
            dist.barrier()
            if not dist.is_main:  # only the main process writes outputs and tracking
                return
            history = trainer.state.history
            metrics = summarise(history)
            model.unet = trainer.final_unet()
            with atomic_path(Path(args.out), directory=True) as tmp:
                model.save_pretrained(tmp)
            write_json(args.metrics, metrics)
            write_text(args.plots, curves_csv(history))
            write_json(args.budget, budget_record(trainer.state, timing, params.control.budget))
            # "final." keeps the summary apart from the per-iteration series of the same names
            run.log_metrics({f"final.{k}": v for k, v in metrics.items()} | {"seconds": timing["seconds"]})
            run.log_outputs(args.metrics, args.plots, args.budget, models={"rl": args.out})
        print(result_line(metrics, timing["seconds"], machine(params), args.out))

    run_main("finetune", args, body)


# Wall-clock columns of the trainer's history: MLflow logs them per iteration; train.csv, a DVC output,
# leaves them out so that a re-run of the same params writes the same bytes (dvc.lock unchanged).
WALL_TIME_COLUMNS = ("seconds", "iteration_seconds")


def curves_csv(history: list[dict]) -> str:
    """train.csv: one row per iteration and task, without wall-clock columns."""
    import pandas as pd

    return pd.DataFrame(history).drop(columns=list(WALL_TIME_COLUMNS), errors="ignore").to_csv(index=False)


def result_line(metrics: dict, seconds: float, machine_text: str, out: str) -> str:
    """'finetune: 8 iterations in 5.2 min (...); ... preference 0.12 -> 0.35, ...'."""
    tasks = [k.removesuffix(".reward_first") for k in metrics if k.endswith(".reward_first")]
    rewards = ", ".join(f"{t} {metrics[f'{t}.reward_first']:.3g} -> {metrics[f'{t}.reward_last']:.3g}" for t in tasks)
    return (f"finetune: {metrics.get('iterations', 0)} iterations in {seconds / 60:.1f} min ({machine_text}), "
            f"{metrics.get('unet_passes', 0):.3g} UNet passes; mean reward of the first iteration -> of the last "
            f"five: {rewards} -> {out}")


def budget_record(state, timing: dict, control_budget: str) -> dict:
    """What the control stage matches. The seconds go in only for `control.budget: wall_time`: they
    differ on every run, and a budget file that always changes would make DVC re-run the control
    after every finetune, even when the UNet passes it matches are the same (a sweep over rl.lr)."""
    record = {"unet_passes": state.unet_passes, "iterations": state.iteration, "stopped_by": timing["stopped_by"]}
    if control_budget == "wall_time":
        record["seconds"] = timing["seconds"]
    return record


if __name__ == "__main__":
    main()
