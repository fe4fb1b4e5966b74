"""Stage `evaluate`: base vs control vs RL samples on identical (prompt, seed) pairs.

Win rates judged by a held-out rater panel (and, beside them, by the learned reward model: the
gap is reward over-optimisation), composition accuracy (seen / unseen, single / two objects),
diversity of under-specified prompts and the panel's absolute quality score, each with a 95%
prompt-bootstrap interval; with the sample folders' `check/` sets, RL's panel win rates under the
other sampler (the sampler check). Writes a flat eval.json, headline.json (the verdict's dozen numbers,
pipeline/verdict.py; also on the MLflow parent run) and the win-rate and composition plot tables.
"""
from __future__ import annotations

from pathlib import Path

from stages._cli import parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("evaluate", __doc__)
    p.add_argument("--samples", default="data/samples", help="folder with base/, rl/ and (optionally) control/")
    p.add_argument("--reward-model", default="data/models/reward",
                   help="learned preference model folder ('': the learned-judge metrics are left out)")
    p.add_argument("--metrics", default="data/metrics/eval.json", help="output metrics JSON")
    p.add_argument("--plots", default="data/plots", help="folder for win_rate.csv and composition.csv")
    p.add_argument("--headline", default=None,
                   help="the verdict's numbers (pipeline/verdict.py), the metrics `dvc metrics show` reads "
                        "(default: headline.json beside --metrics)")
    args = p.parse_args(argv)
    args.headline = args.headline or str(Path(args.metrics).with_name("headline.json"))

    def body(params) -> None:
        from pipeline.errors import DataFileError
        from pipeline.evaluation.compare import PLOT_FILES, evaluate_models, write_evaluation
        from pipeline.io import write_json
        from pipeline.outputs import Output, check_outputs
        from pipeline.samples import load_check, load_models
        from pipeline.tracking import StageRun
        from pipeline.verdict import headline_metrics, read_eval, table_rows, to_markdown, verdict

        check_outputs("evaluate", [Output("--metrics", args.metrics), Output("--headline", args.headline)]
                      + [Output("--plots", Path(args.plots) / name) for name in PLOT_FILES],
                      {"--params": args.params, "--samples": args.samples, "--reward-model": args.reward_model})
        data = load_models(args.samples)
        check = load_check(args.samples, data.images)  # None: no sampler check (sampler_check.* omitted)
        if args.reward_model and not Path(args.reward_model).is_dir():
            raise DataFileError(f"--reward-model {args.reward_model}: reward model folder not found; expected the "
                                "reward_model stage's output (or --reward-model '' to leave out the learned judge)")
        with StageRun("evaluate", params.model_dump(mode="json")) as run:
            ev = evaluate_models(data, params, args.reward_model or None, check)
            write_evaluation(ev, args.metrics, args.plots)
            result = verdict(read_eval(args.metrics))  # from the file: the verdict's numbers are eval.json's
            write_json(args.headline, result.headline)
            run.log_metrics(ev.metrics)
            run.log_outputs(args.metrics, args.headline, *(Path(args.plots) / name for name in PLOT_FILES))
            run.log_summary(headline_metrics(result.headline), key_params(params), note=to_markdown(result))
        print(f"evaluate: {len(data.rows)} (prompt, seed) pairs of {', '.join(data.images)} -> {args.metrics} "
              f"({len(ev.metrics)} metrics); the headline, {args.headline}:")
        for label, value, reading in table_rows(result):
            print(f"  {label}: {value} ({reading})")

    run_main("evaluate", args, body)


# The params shown beside the headline on the MLflow parent run (the runs table compares pipeline runs by them).
KEY_PARAMS = ("seed", "threads", "device", "model.kind", "model.mixed_precision", "world.two_object_prob",
              "pretrain.steps", "rl.algorithm", "rl.iterations", "rl.lr", "rl.lora_rank", "rl.pretrain_beta",
              "reward_model.pairs", "control.budget", "sampling.steps", "sampling.guidance")


def key_params(params) -> dict:
    """KEY_PARAMS of `params` (resolved: threads and mixed precision as run) and the RL tasks' names."""
    from pipeline.keys import flatten

    flat = flatten(params.model_dump(mode="json"))
    return {**{key: flat[key] for key in KEY_PARAMS if key in flat},
            "rl.tasks": ",".join(task.name for task in params.rl.tasks)}


if __name__ == "__main__":
    main()
