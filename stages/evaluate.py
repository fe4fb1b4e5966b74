"""Stage `evaluate`: base vs control vs RL samples on identical (prompt, seed) pairs.

Win rates judged by a held-out rater panel (and, beside them, by the learned reward model: the
gap is reward over-optimisation), composition accuracy (seen / unseen, single / two objects),
diversity of under-specified prompts and the panel's absolute quality score, each with a 95%
prompt-bootstrap interval. Writes a flat eval.json and the win-rate and composition plot tables.
"""
from __future__ import annotations

from stages._cli import parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("evaluate", __doc__)
    p.add_argument("--samples", default="data/samples", help="folder with base/, rl/ and (optionally) control/")
    p.add_argument("--reward-model", default="data/models/reward",
                   help="learned preference model folder ('': the learned-judge metrics are left out)")
    p.add_argument("--metrics", default="data/metrics/eval.json", help="output metrics JSON")
    p.add_argument("--plots", default="data/plots", help="folder for win_rate.csv and composition.csv")
    args = p.parse_args(argv)

    def body(params) -> None:
        from pathlib import Path

        from pipeline.errors import DataFileError
        from pipeline.evaluation.compare import PLOT_FILES, evaluate_models, write_evaluation
        from pipeline.outputs import Output, check_outputs
        from pipeline.samples import load_models
        from pipeline.tracking import StageRun

        check_outputs("evaluate", [Output("--metrics", args.metrics)]
                      + [Output("--plots", Path(args.plots) / name) for name in PLOT_FILES],
                      {"--params": args.params, "--samples": args.samples, "--reward-model": args.reward_model})
        data = load_models(args.samples)
        if args.reward_model and not Path(args.reward_model).is_dir():
            raise DataFileError(f"--reward-model {args.reward_model}: reward model folder not found; expected the "
                                "reward_model stage's output (or --reward-model '' to leave out the learned judge)")
        with StageRun("evaluate", params.model_dump(mode="json")) as run:
            ev = evaluate_models(data, params, args.reward_model or None)
            write_evaluation(ev, args.metrics, args.plots)
            run.log_metrics(ev.metrics)
            for path in (Path(args.metrics), *(Path(args.plots) / name for name in PLOT_FILES)):
                run.log_artifact(path)
        headline = {k: round(v, 3) for k, v in ev.metrics.items()
                    if k.endswith(".pooled") or (k.startswith("quality.") and "_ci_" not in k)}
        print(f"evaluate: {len(data.rows)} pairs, {', '.join(data.images)} -> {args.metrics}; {headline}")

    run_main("evaluate", args, body)


if __name__ == "__main__":
    main()
