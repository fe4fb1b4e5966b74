"""Prefect flow that runs the pipeline through DVC, so DVC stays the source of truth.

Without overrides, each dvc.yaml stage is one Prefect task, `dvc repro --single-item <stage>`, in
topological order (DVC skips stages whose deps and params did not change). With parameter
overrides or an experiment name, the flow runs `dvc exp run -S key=value ... --name EXP` once (one
task), so the overrides are recorded as a DVC experiment. Failed tasks are retried (a crashed
stage, DVC's repository lock held by another run); a stage that reports a user error (exit
status 2: bad params, missing input) is not. Every stage of one flow run gets the same
`PIPELINE_RUN_GROUP`, so its MLflow runs share one parent run (pipeline/tracking.py).

    python -m pipeline.flows run [--set key=value ...] [--name EXP] [--cwd DIR] [--stages a,b]
    python -m pipeline.flows serve --cron "0 3 * * *" [--deployment NAME] [run options]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pipeline  # noqa: F401  (environment defaults: analytics off, PREFECT_HOME in the project)

Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # before prefect is imported

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

FLOW_NAME = "rl-diffusion-pipeline"
USER_ERROR_STATUS = 2  # stages/_cli.py: a user error exits with 2; retrying cannot fix it


class StageFailed(RuntimeError):
    def __init__(self, what: str, returncode: int, output: str):
        status = re.findall(r"exited with (-?\d+)", output)
        self.stage_status = int(status[-1]) if status else None
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{what} failed (dvc exit {returncode}, stage exit {self.stage_status}):\n{tail}")


def _retryable(task, task_run, state) -> bool:
    return getattr(state.data, "stage_status", None) != USER_ERROR_STATUS


def stage_order(cwd: str | Path = ".", targets: list[str] | None = None) -> list[str]:
    """dvc.yaml stages in topological order (upstream first, ties in file order); with `targets`,
    only those stages and what they depend on, as `dvc repro <targets>` would run."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(cwd)) as repo:
        graph = repo.index.graph  # edges: stage -> the stages it depends on
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage)]
        names = {}
        for s in stages:  # addressed from the repository root, where the tasks run dvc
            dvcfile = Path(s.path).relative_to(repo.root_dir).as_posix()
            names[s] = s.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{s.name}"
        if targets:
            unknown = sorted(set(targets) - set(names.values()))
            if unknown:
                raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(names.values())}")
            wanted = set()
            for stage in stages:
                if names[stage] in targets:
                    wanted |= {stage} | nx.descendants(graph, stage)
            stages = [s for s in stages if s in wanted]
        position = {s: i for i, s in enumerate(stages)}
        upstream_first = graph.subgraph(stages).reverse(copy=True)
        return [names[s] for s in nx.lexicographical_topological_sort(upstream_first, key=position.__getitem__)]


def _stage_env(group: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PIPELINE_RUN_GROUP"] = group
    env["DVC_NO_ANALYTICS"] = "1"
    # Stage commands call `python`: make it this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run_dvc(args: list[str], cwd: str, env: dict[str, str], what: str) -> tuple[str, float]:
    """Run `dvc <args>`, streaming its output to the Prefect log; raise StageFailed on failure."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", *args]
    logger.info("%s: %s (in %s)", what, " ".join(cmd[2:]), cwd)
    began = time.monotonic()
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line)
            if line.strip():
                logger.info(line.rstrip())
    output = "".join(lines)
    if proc.returncode != 0:
        raise StageFailed(what, proc.returncode, output)
    return output, time.monotonic() - began


@task(name="dvc-stage", task_run_name="{stage}", retries=2, retry_delay_seconds=10,
      retry_condition_fn=_retryable, cache_policy=NO_CACHE, persist_result=False)
def run_stage(stage: str, cwd: str, env: dict[str, str]) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage if DVC sees it changed."""
    output, seconds = _run_dvc(["repro", "--single-item", stage], cwd, env, f"stage {stage}")
    return {"stage": stage, "ran": f"Running stage '{stage}'" in output, "seconds": round(seconds, 2)}


@task(name="dvc-exp-run", task_run_name="exp-run-{name}", retries=2, retry_delay_seconds=10,
      retry_condition_fn=_retryable, cache_policy=NO_CACHE, persist_result=False)
def run_experiment(name: str, set_params: list[str], targets: list[str], cwd: str,
                   env: dict[str, str]) -> dict[str, Any]:
    """`dvc exp run -S key=value ... [--name NAME] [targets]`: one experiment for all stages."""
    args = ["exp", "run", *(["--name", name] if name else [])]
    for item in set_params:
        args += ["-S", item]
    output, seconds = _run_dvc([*args, *targets], cwd, env, f"experiment {name or '(unnamed)'}")
    ran = re.findall(r"Running stage '([^']+)'", output)
    return {"experiment": name, "ran": ran, "seconds": round(seconds, 2)}


def _set_params(overrides: dict[str, Any] | list[str] | None) -> list[str]:
    """{'rl.lr': 1e-4} or ['rl.lr=1e-4'] -> DVC `-S` values (for params.yaml, the file every stage reads)."""
    if isinstance(overrides, dict):
        items = [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in overrides.items()]
    else:
        items = list(overrides or [])
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
    return items


@flow(name=FLOW_NAME, log_prints=True)
def pipeline_flow(overrides: dict[str, Any] | list[str] | None = None, experiment: str | None = None,
                  cwd: str = ".", stages: list[str] | None = None,
                  retries: int = 2, retry_delay_seconds: float = 10.0,
                  run_group: str | None = None) -> list[dict[str, Any]]:
    """Run the DVC pipeline in `cwd`.

    overrides: params to set (`{"rl.lr": 1e-4}` or `["rl.lr=1e-4"]`, DVC's `-S` syntax, e.g.
        `++new.key=1` to add a key); with overrides or `experiment` the run is a DVC experiment.
    experiment: DVC experiment name (`dvc exp run --name`).
    stages: target stages (default: all); their upstream stages are included, as with `dvc repro`.
    run_group: MLflow parent-run group (default: the experiment name or flow run, made unique).
    """
    from prefect.runtime import flow_run

    workdir = str(Path(cwd).resolve())
    if not (Path(workdir) / "dvc.yaml").exists():
        raise FileNotFoundError(f"no dvc.yaml in {workdir}")
    if not (Path(workdir) / "params.yaml").exists():  # every dvc.yaml stage reads it
        raise FileNotFoundError(f"params file params.yaml not found in {workdir}")
    set_params = _set_params(overrides)
    group = run_group or f"{experiment or 'prefect-' + str(flow_run.name)}-{str(flow_run.id)[:8]}"
    env = _stage_env(group)
    logger = get_run_logger()
    logger.info("run group %s (MLflow parent run)", group)
    order = stage_order(workdir, stages)
    if set_params or experiment:
        job = run_experiment.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
        results = [job(experiment or "", set_params, list(stages or []), workdir, env)]
        ran = set(results[0]["ran"])
    else:
        job = run_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)
        results = [job(stage, workdir, env) for stage in order]
        ran = {r["stage"] for r in results if r["ran"]}
    publish_verdict(workdir, "ran" if EVALUATE in ran else "up to date" if EVALUATE in order else "not run")
    return results


EVALUATE = "evaluate"  # the stage that writes eval.json
EVAL_JSON = Path("data") / "metrics" / "eval.json"
REPORT = Path("data") / "report" / "index.html"


def publish_verdict(workdir: str, evaluate: str) -> str | None:
    """The run's verdict (pipeline/verdict.py, from `<workdir>/data/metrics/eval.json`) as the flow
    run's Markdown artifact `pipeline-verdict`, with where the report is; also in the flow's log.
    `evaluate` says whether the evaluate stage "ran", was "up to date" or was "not run" by this flow."""
    from prefect.artifacts import create_markdown_artifact

    from pipeline.verdict import read_eval, to_markdown, verdict

    logger = get_run_logger()
    path = Path(workdir) / EVAL_JSON
    if not path.is_file():
        logger.info("no %s: no verdict to publish", path)
        return None
    when = {"ran": "the evaluate stage ran in this flow run",
            "up to date": "the evaluate stage was up to date, so DVC skipped it",
            "not run": "the evaluate stage was not among this run's stages: it may predate this run's models"}[evaluate]
    report = Path(workdir) / REPORT
    markdown = f"## Verdict\n\nFrom `{path}` ({when}).\n\n{to_markdown(verdict(read_eval(path)))}"
    if report.is_file():
        markdown += f"\nReport: [{report}]({report.as_uri()}) (open it in a browser).\n"
    create_markdown_artifact(key="pipeline-verdict", markdown=markdown, description="the pipeline run's verdict")
    logger.info("%s", markdown)
    return markdown


EXAMPLES = """examples:
  python -m pipeline.flows run                                   # dvc repro, one task per stage
  python -m pipeline.flows run --stages finetune                 # finetune and what it depends on
  python -m pipeline.flows run --set rl.lr=1e-4 --name lr-1e-4   # a DVC experiment
  python -m pipeline.flows serve --cron "0 3 * * *"              # nightly; Ctrl+C stops serving
Runs use the Prefect API in PREFECT_API_URL, or a temporary local one when it is unset."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", "-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param (DVC -S syntax; repeatable); makes the run a DVC experiment")
    common.add_argument("--name", default=None,
                        help="DVC experiment name (runs `dvc exp run --name NAME`); names must be new, so leave it "
                             "out with serve and DVC names each scheduled run")
    common.add_argument("--cwd", default=".", help="DVC project folder (default: .)")
    common.add_argument("--stages", default=None,
                        help="comma-separated target stages, run with what they depend on (default: all)")
    common.add_argument("--retries", type=int, default=2, help="retries per task on failure (default: 2)")
    common.add_argument("--retry-delay", type=float, default=10.0, help="seconds between retries (default: 10)")
    common.add_argument("--group", default=None, help="MLflow run group (default: derived from the flow run)")
    p = argparse.ArgumentParser(prog="python -m pipeline.flows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the pipeline once",
                   description="Run the pipeline once through DVC as a Prefect flow.")
    serve = sub.add_parser("serve", parents=[common], help="serve a scheduled deployment (blocks)",
                           description="Serve a deployment of the flow on a cron schedule; runs until stopped.")
    serve.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * *" (03:00 daily)')
    serve.add_argument("--deployment", default="scheduled", help="deployment name (default: scheduled)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parameters = {"overrides": args.overrides or None, "experiment": args.name,
                  "cwd": str(Path(args.cwd).resolve()),
                  "stages": [s for s in args.stages.split(",") if s] if args.stages else None,
                  "retries": args.retries, "retry_delay_seconds": args.retry_delay, "run_group": args.group}
    if args.command == "serve":
        pipeline_flow.serve(name=args.deployment, cron=args.cron, parameters=parameters)
        return 0
    state = pipeline_flow(**parameters, return_state=True)
    if not state.is_completed():
        print(f"error: pipeline flow {state.name}: {state.message}", file=sys.stderr)
        return 1
    for row in state.result():
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
