"""Stage `report`: `index.html` (self-contained, readable offline) and `report.md` from metrics, curves and samples.

The verdict first (pipeline/verdict.py), then a summary of base vs control vs RL with 95%
intervals, the win-rate chart, reward curves, image grids for the same prompts and seeds, the
over-optimisation gap, optionally several runs side by side (`--runs NAME=eval.json ...` or
`dvc exp show --json` output), and the params and where MLflow holds the rest.
"""
from __future__ import annotations

import hashlib
import os

from stages._cli import parser, run_main


def main(argv: list[str] | None = None) -> None:
    p = parser("report", __doc__)
    p.add_argument("--metrics", default="data/metrics", help="folder with eval.json, train.json, pretrain.json")
    p.add_argument("--plots", default="data/plots", help="folder with train.csv")
    p.add_argument("--samples", default="data/samples", help="folder with base/, control/, rl/ samples")
    p.add_argument("--out", default="data/report", help="output folder (index.html, report.md, PNGs)")
    p.add_argument("--runs", nargs="*", default=[], metavar="[NAME=]PATH",
                   help="other runs' eval.json files or `dvc exp show --json` output, for a runs table")
    p.add_argument("--mlflow-run-ids", nargs="*", default=None,
                   help="MLflow run ids to list (default: $MLFLOW_RUN_IDS, comma-separated)")
    args = p.parse_args(argv)

    def body(params) -> None:
        from pathlib import Path

        from pipeline.outputs import Output, check_outputs
        from pipeline.report import build_document, load_inputs, write_report
        from pipeline.report.build import REPORT_HTML
        from pipeline.report.inputs import read_runs
        from pipeline.tracking import StageRun

        check_outputs("report", [Output("--out", args.out, folder=True, marker=REPORT_HTML)],
                      {"--params": args.params, "--metrics": args.metrics, "--plots": args.plots,
                       "--samples": args.samples, **{f"--runs {spec}": spec.rpartition("=")[2] for spec in args.runs}})

        inputs = load_inputs(args.metrics, args.plots, args.samples)
        inputs.runs = read_runs(args.runs)
        inputs.params_text = Path(args.params).read_text()
        ids = args.mlflow_run_ids
        if ids is None:
            ids = [i for i in os.environ.get("MLFLOW_RUN_IDS", "").split(",") if i.strip()]
        # Only what the report's inputs determine: a re-run of unchanged inputs writes the same bytes, so
        # dvc.lock does not change. The git commit and this run's MLflow ids are on the MLflow runs.
        inputs.provenance = {"params file": str(args.params),
                             "params (sha-256)": hashlib.sha256(inputs.params_text.encode()).hexdigest()[:16],
                             "tracking": "MLflow experiment rl-diffusion (`make mlflow-ui`): the pipeline run's "
                                         "parent run states this verdict; its stage runs hold their metrics, "
                                         "models, artifacts and the git commit"}
        if ids:
            inputs.provenance["MLflow run ids"] = ", ".join(ids)
        with StageRun("report", params.model_dump(mode="json")) as run:
            write_report(build_document(inputs), args.out)
            run.log_artifact(args.out, "report")
        tracked = f"; MLflow: report run {run.run_id} of pipeline run {run.parent_id}" if run.run_id else ""
        print(f"report: {args.out}/index.html (open it in a browser) and {args.out}/report.md{tracked}")

    run_main("report", args, body)


if __name__ == "__main__":
    main()
