"""Stage `control`: the compute-matched control — the base pretrained on for the budget RL used.

On an under-trained base, plain pretraining improves the same metrics RL does (docs/experiments.md
E2), so every RL gain is reported beside this model (docs/design.md, "Contracts"). Budget
`unet_passes` (default, deterministic) converts the UNet forward-equivalents `finetune` spent into
pretraining steps; `wall_time` trains for the same seconds, and at most those steps (whichever ends
first: the learning-rate schedule spans them).
"""
from __future__ import annotations

import math
from pathlib import Path

from stages._cli import machine, parser, run_main

CONTROL_STREAM_OFFSET = 2_000  # fresh pretraining data, apart from the base's and L_pre's streams


def control_steps(budget: dict, batch_size: int) -> int:
    from pipeline.pretraining import TRAIN_PASS_COST

    return max(1, math.ceil(budget["unet_passes"] / (TRAIN_PASS_COST * batch_size)))


def read_budget(path: str | Path, wall_time: bool = False) -> dict:
    """finetune's budget.json: the UNet forward-equivalents the RL run spent and, for a wall-time
    budget, its seconds."""
    import json

    from pipeline.errors import DataFileError
    from pipeline.io import read_text

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: finetune's budget file not found (run `dvc repro finetune`)")
    try:
        budget = json.loads(read_text(path, "finetune's budget.json"))
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); expected finetune's budget.json") \
            from None
    for key in ("unet_passes", "seconds") if wall_time else ("unet_passes",):
        value = budget.get(key) if isinstance(budget, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            hint = " (finetune writes it when control.budget is wall_time)" if key == "seconds" else ""
            raise DataFileError(f"{path}: expected a number under '{key}' (finetune's budget.json), got {value!r}"
                                f"{hint}; re-run `dvc repro finetune`")
        if value <= 0 or (key == "unet_passes" and not isinstance(value, int)):  # 0 or 0.5 would run one step
            raise DataFileError(f"{path}: '{key}' is {value!r}; expected a positive {'whole ' * (key != 'seconds')}"
                                "number (finetune's budget.json): re-run `dvc repro finetune`")
    return budget


def main(argv: list[str] | None = None) -> None:
    p = parser("control", __doc__)
    p.add_argument("--base", default="data/models/base")
    p.add_argument("--budget", default="data/metrics/budget.json", help="finetune's budget.json")
    p.add_argument("--out", default="data/models/control")
    p.add_argument("--metrics", default="data/metrics/control.json")
    p.add_argument("--checkpoints", default="checkpoints")
    args = p.parse_args(argv)

    def body(params) -> None:
        from pipeline.checkpoints import folder_fingerprint, run_key
        from pipeline.io import atomic_path, write_json
        from pipeline.models.loading import load_model
        from pipeline.models.tiny import MODEL_INDEX
        from pipeline.outputs import Output, check_outputs
        from pipeline.pretraining import TRAIN_PASS_COST, pretrain, scene_stream
        from pipeline.tracking import StageRun

        check_outputs("control", [Output("--out", args.out, folder=True, marker=MODEL_INDEX),
                                  Output("--metrics", args.metrics)],
                      {"--params": args.params, "--base": args.base, "--budget": args.budget,
                       "--checkpoints": args.checkpoints})

        wall = params.control.budget == "wall_time"
        budget = read_budget(args.budget, wall_time=wall)
        pt = params.pretrain
        steps = control_steps(budget, pt.batch_size)
        key = run_key("control", params, params.control, pt, params.world, params.model,
                      budget if wall else budget["unet_passes"], folder_fingerprint(args.base))
        model = load_model(args.base, params)
        stream = scene_stream(params.world, params.seed + CONTROL_STREAM_OFFSET)
        with StageRun("control", params.model_dump(mode="json")) as run:
            result = pretrain(model, stream, steps=steps, batch_size=pt.batch_size, lr=params.control.lr,
                              warmup_steps=0, weight_decay=pt.weight_decay, ema_decay=pt.ema_decay,
                              caption_dropout=pt.caption_dropout, seed=params.seed + CONTROL_STREAM_OFFSET,
                              checkpoint_dir=None if wall else Path(args.checkpoints) / key,
                              checkpoint_every=pt.checkpoint_every, checkpoint_keep=params.checkpoint_keep,
                              log_every=pt.log_every, log_fn=run.log_metrics, label="control",
                              max_seconds=budget["seconds"] if wall else None)
            with atomic_path(Path(args.out), directory=True) as tmp:
                result.model.save_pretrained(tmp)
            metrics = {"steps": result.steps, "budget": params.control.budget,
                       "unet_passes": TRAIN_PASS_COST * result.steps * pt.batch_size,
                       "rl_unet_passes": budget["unet_passes"]}
            write_json(args.metrics, metrics)
            run.log_metrics({"steps": result.steps, "seconds": result.seconds})
            run.log_outputs(args.metrics, models={"control": args.out})
        matched = (f"{budget['seconds'] / 60:.1f} min of RL's wall time" if wall else
                   f"{metrics['rl_unet_passes']:.3g} UNet passes of RL, {metrics['unet_passes']:.3g} here")
        print(f"control: the base pretrained on for {result.steps} more steps ({matched}) in {result.seconds / 60:.1f} "
              f"min ({machine(params)}) -> {args.out}")

    run_main("control", args, body)


if __name__ == "__main__":
    main()
