"""The Prefect flow on a tiny git + DVC project: stage tasks in topological order, retries, overrides
as a DVC experiment, the CLI, and a served deployment with its cron schedule on a real server."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from pipeline import flows
from tests.servers import PrefectServer, experiments, stop_process, tiny_dvc_repo


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_runs(state):
    """The flow run's task runs, oldest first, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def order_log(repo):
    path = repo / "order.log"
    return [line.split(" ") for line in path.read_text().splitlines()] if path.exists() else []


def test_stage_tasks_run_in_topological_order(harness, tmp_path):
    repo = tiny_dvc_repo(tmp_path / "repo")
    state = flows.pipeline_flow(cwd=str(repo), retries=0, return_state=True)
    assert state.is_completed(), state.message
    assert [(r["stage"], r["ran"]) for r in state.result()] == [("a", True), ("b", True), ("c", True)]
    log = order_log(repo)
    assert [row[0] for row in log] == ["a", "b", "c"]  # dvc.yaml lists c first
    groups = {row[2] for row in log}
    assert len(groups) == 1 and groups.pop().startswith("prefect-")  # one MLflow parent for the whole run
    runs = task_runs(state)
    assert [r.name for r in runs] == ["a", "b", "c"] and all(r.state.is_completed() for r in runs)

    # DVC decides what runs: nothing changed, so a target and its upstream are skipped.
    state = flows.pipeline_flow(cwd=str(repo), stages=["b"], retries=0, return_state=True)
    assert [(r["stage"], r["ran"]) for r in state.result()] == [("a", False), ("b", False)]


def test_flow_run_states_the_verdict_in_a_markdown_artifact(harness, tmp_path):
    """After the stages, the flow run carries the verdict of data/metrics/eval.json (pipeline/verdict.py)
    as its Markdown artifact, saying whether this run's evaluate stage made that file."""
    import json

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from pipeline.verdict import verdict

    repo = tiny_dvc_repo(tmp_path / "repo")
    metrics = {"win_rate.rl_vs_base.pooled": 0.61, "win_rate.rl_vs_base.pooled_ci_low": 0.55,
               "win_rate.rl_vs_base.pooled_ci_high": 0.67, "win_rate.rl_vs_control.pooled": 0.48,
               "win_rate.rl_vs_control.pooled_ci_low": 0.42, "win_rate.rl_vs_control.pooled_ci_high": 0.54}
    (repo / "data" / "metrics").mkdir(parents=True)
    (repo / "data" / "metrics" / "eval.json").write_text(json.dumps(metrics))
    state = flows.pipeline_flow(cwd=str(repo), retries=0, return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-verdict"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert len(found) == 1 and found[0].type == "markdown"
    assert verdict(metrics).sentence in found[0].data and "0.480 [0.420, 0.540]" in found[0].data
    assert "was not among this run's stages" in found[0].data  # the tiny project has no evaluate stage


def test_failing_stage_is_retried_then_reported_failed(harness, tmp_path):
    repo = tiny_dvc_repo(tmp_path / "repo", fail={"b": 1})
    state = flows.pipeline_flow(cwd=str(repo), retries=2, retry_delay_seconds=0, return_state=True)
    assert state.is_failed()
    assert [row[0] for row in order_log(repo)] == ["a", "b", "b", "b"]  # 1 attempt + 2 retries; c never ran
    runs = {r.name: r for r in task_runs(state)}
    assert set(runs) == {"a", "b"} and runs["b"].state.is_failed() and runs["b"].run_count == 3

    # A user error (stage exit status 2) is not retried.
    (repo / "dvc.yaml").write_text((repo / "dvc.yaml").read_text().replace("step.py b 1", "step.py b 2"))
    state = flows.pipeline_flow(cwd=str(repo), stages=["b"], retries=2, retry_delay_seconds=0, return_state=True)
    assert state.is_failed() and [row[0] for row in order_log(repo)].count("b") == 4


def test_cli_overrides_make_a_dvc_experiment(harness, tmp_path, capsys):
    repo = tiny_dvc_repo(tmp_path / "repo")
    assert flows.main(["run", "--cwd", str(repo), "--set", "p=7", "--name", "flow-exp", "--retries", "0"]) == 0
    assert "flow-exp" in capsys.readouterr().out
    log = order_log(repo)
    assert [row[0] for row in log] == ["a", "b", "c"] and {row[1] for row in log} == {"7"}
    groups = {row[2] for row in log}
    assert len(groups) == 1 and groups.pop().startswith("flow-exp-")
    found = experiments(repo)
    assert found["flow-exp"]["params"]["p"] == 7 and found["flow-exp"]["metrics"]["score"] == 70


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        flows.main(["serve", "--help"])
    assert exit_info.value.code == 0 and "--cron" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        flows.main(["serve"])  # --cron is required
    assert exit_info.value.code == 2 and "--cron" in capsys.readouterr().err


def test_served_deployment_has_cron_schedule(tmp_path):
    """`python -m pipeline.flows serve --cron ...` against a real `prefect server start`: the deployment and
    its schedule read back through the client."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo = tiny_dvc_repo(tmp_path / "repo")
    server = PrefectServer(tmp_path / "prefect").start()
    serve = None
    try:
        serve = subprocess.Popen([sys.executable, "-m", "pipeline.flows", "serve", "--cron", "0 3 * * *",
                                  "--deployment", "nightly", "--cwd", str(repo), "--set", "p=2"],
                                 env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deployment = None
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 120
                while deployment is None and time.monotonic() < deadline:
                    assert serve.poll() is None, serve.stdout.read().decode()[-3000:]
                    try:
                        deployment = client.read_deployment_by_name(f"{flows.FLOW_NAME}/nightly")
                    except Exception:
                        time.sleep(0.5)
        assert deployment is not None, "deployment never appeared"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["cwd"] == str(repo) and deployment.parameters["overrides"] == ["p=2"]
    finally:
        if serve is not None:  # the runner before its server
            stop_process(serve, signal.SIGINT, timeout=30)
        server.stop()
