"""MLflow tracking against a real `mlflow server`: parent/child runs, metric histories, artifacts,
and no loss when the server is down at the start or killed mid-run (buffer, then replay)."""
from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import MlflowServer
from pipeline import tracking_buffer, tracking_client
from pipeline.keys import flatten
from pipeline.tracking import StageRun, metric_name, run_group
from pipeline.tracking_buffer import pending

SMOKE = Path(__file__).parent / "params.smoke.yaml"
PARAMS = {"seed": 0, "rl": {"iterations": 10, "lr": 5e-5, "tasks": [{"name": "composition", "reward": "composition"}]}}


@pytest.fixture(scope="module")
def mlflow_srv(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def tracked(mlflow_srv, tmp_path, monkeypatch):
    """Stages in this test log to the server, under a fresh run group, with a private buffer."""
    group = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_srv.url)
    monkeypatch.setenv("PIPELINE_RUN_GROUP", group)
    monkeypatch.setenv(tracking_buffer.BUFFER_ENV, str(tmp_path / "buffer"))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return group


def client_for(url):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def group_runs(client, group):
    experiment = client.get_experiment_by_name(tracking_client.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`pipeline.group` = '{group}'")
    parents = [r for r in runs if r.data.tags["pipeline.role"] == "parent"]
    children = {r.info.run_name: r for r in runs if r.data.tags["pipeline.role"] == "stage"}
    return parents, children


def history(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def fake_finetune(tmp_path, iterations):
    """What stages.finetune logs: per-iteration metrics, the summary (train.json's keys, under "final."
    so that no per-iteration series gets a point at step 0), train.json and the model."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    summary = {"composition.reward_last": 0.5, "composition.approx_kl": 0.01, "iterations": iterations}
    (tmp_path / "train.json").write_text(json.dumps(summary))
    with StageRun("finetune", PARAMS) as run:
        for it in range(1, iterations + 1):
            run.log_metrics({"composition/reward_mean": 0.1 * it, "composition/approx_kl": 0.01 * it}, step=it)
        run.log_metrics({f"final.{k}": v for k, v in summary.items()})
        run.log_artifact(tmp_path / "train.json")
        run.log_model(model, "rl")
    return run


def logged_models(client, run) -> dict[str, list[str]]:
    """{name: artifact paths} of the MLflow logged models whose source is `run`."""
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    return {m.name: sorted(a.path for a in client.list_logged_model_artifacts(m.model_id)) for m in found
            if m.status.to_proto() == m.status.READY.to_proto()}


def test_helpers(monkeypatch):
    assert flatten({"rl": {"lr": 1e-4, "tasks": [{"name": "a"}]}, "seeds": [0, 1]}) == {
        "rl.lr": 1e-4, "rl.tasks.0.name": "a", "seeds": [0, 1]}
    assert metric_name("composition/reward mean") == "composition.reward_mean"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_client.default_tracking_uri() == f"sqlite:///{tracking_client.PROJECT_ROOT / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", "/repo")  # a queued experiment runs in a temp copy: the store stays in the repo
    assert tracking_client.default_tracking_uri() == "sqlite:////repo/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_client.default_tracking_uri() == "http://127.0.0.1:1"
    monkeypatch.delenv("PIPELINE_RUN_GROUP", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_group().startswith("commit-")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # what `dvc exp run` sets (dvc/repo/experiments/queue/base.py)
    assert run_group() == "exp-1"
    monkeypatch.setenv("PIPELINE_RUN_GROUP", "flow-1")
    assert run_group() == "flow-1"

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    # Refused calls are skipped, not buffered (they would fail on every replay); outages are buffered.
    assert tracking_client.rejected(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))
    assert not tracking_client.rejected(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not tracking_client.rejected(MlflowException("API request failed with exception ConnectionError"))
    assert not tracking_client.rejected(ConnectionError("refused"))


def test_hung_server_does_not_stall_a_stage_and_sync_sends_to_local_store(tmp_path, monkeypatch, capsys):
    """A server that accepts connections but never answers: the stage goes on at once, buffered;
    `python -m pipeline.tracking sync --any --uri sqlite:///...` puts everything in a local store."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # never accepted: requests hang
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("PIPELINE_RUN_GROUP", "offline")
    monkeypatch.setenv(tracking_buffer.BUFFER_ENV, str(tmp_path / "buffer"))
    began = time.monotonic()
    with pytest.warns(RuntimeWarning, match="buffering stage finetune"):
        run = fake_finetune(tmp_path, iterations=4)
    assert time.monotonic() - began < 15  # the /health probe times out after 3 s
    hung.close()
    assert run.run_id is None and pending(url) == [run.buffer_path]

    tracking_buffer.main(["list", "--uri", url])
    assert str(run.buffer_path) in capsys.readouterr().out
    local = f"sqlite:///{tmp_path / 'local.db'}"
    tracking_buffer.main(["sync", "--uri", local, "--any"])
    assert "sent 1 buffered run(s)" in capsys.readouterr().out
    client = client_for(local)
    parents, children = group_runs(client, "offline")
    finetune = children["finetune"]
    assert len(parents) == 1 and finetune.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert finetune.info.status == "FINISHED" and finetune.data.tags["pipeline.replayed"] == "true"
    assert [s for s, _ in history(client, finetune, "composition.reward_mean")] == [1, 2, 3, 4]
    assert finetune.data.params["rl.tasks.0.name"] == "composition"
    assert {a.path for a in client.list_artifacts(finetune.info.run_id)} == {"train.json"}
    assert logged_models(client, finetune) == {"rl": ["config.json"]}  # the buffered model, logged on replay
    assert pending() == [] and list((tmp_path / "buffer").iterdir()) == []


def test_smoke_pipeline_parent_and_children(tracked, mlflow_srv, tmp_path):
    """A real stage (pretrain on the smoke profile) and stand-ins for finetune/evaluate/report: one
    parent, a child per stage with flattened params, tags, metric histories and artifacts."""
    from stages import pretrain, prompts

    prompts.main(["--params", str(SMOKE), "--out", str(tmp_path / "prompts")])
    pretrain.main(["--params", str(SMOKE), "--prompts", str(tmp_path / "prompts"), "--out", str(tmp_path / "base"),
                   "--metrics", str(tmp_path / "pretrain.json"), "--checkpoints", str(tmp_path / "ckpt"),
                   "--no-progress"])
    fake_finetune(tmp_path, iterations=3)
    (tmp_path / "eval.json").write_text("{}")
    with StageRun("evaluate", {"seed": 0}) as run:
        run.log_metrics({"win_rate/composition": 0.6})
        run.log_artifact(tmp_path / "eval.json")
        run.log_summary({"rl_vs_base.win_rate": 0.6}, {"rl.lr": 5e-5, "threads": 2}, note="RL beats the base.")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    with StageRun("report", {"seed": 0}) as run:
        run.log_artifact(tmp_path / "report", "report")

    client = client_for(mlflow_srv.url)
    parents, children = group_runs(client, tracked)
    assert len(parents) == 1 and set(children) == {"prompts", "pretrain", "finetune", "evaluate", "report"}
    parent = parents[0]
    assert parent.data.tags["git_commit"] and "dvc_experiment" in parent.data.tags
    # The headline on the parent: the runs table compares pipeline runs by it; the verdict is its description.
    assert parent.data.metrics == {"rl_vs_base.win_rate": 0.6}
    assert parent.data.params == {"rl.lr": "5e-05", "threads": "2"}
    assert parent.data.tags["mlflow.note.content"] == "RL beats the base."
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["stage"] == child.info.run_name
        assert len(child.data.tags["params_hash"]) == 16 and child.data.tags["git_commit"] == parent.data.tags["git_commit"]

    smoke = __import__("yaml").safe_load(SMOKE.read_text())
    pre = children["pretrain"]
    assert pre.data.params["pretrain.steps"] == str(smoke["pretrain"]["steps"])  # flattened
    log_every, steps = smoke["pretrain"]["log_every"], smoke["pretrain"]["steps"]
    assert [s for s, _ in history(client, pre, "pretrain.loss")] == list(range(log_every, steps + 1, log_every))
    assert "pretrain.json" in {a.path for a in client.list_artifacts(pre.info.run_id)}
    assert set(logged_models(client, pre)) == {"base"} and pre.outputs.model_outputs  # the Models column
    assert "manifest.json" in {a.path for a in client.list_artifacts(children["prompts"].info.run_id)}

    fine = children["finetune"]
    assert fine.data.params["rl.tasks.0.reward"] == "composition"
    assert [s for s, _ in history(client, fine, "composition.reward_mean")] == [1, 2, 3]
    assert [s for s, _ in history(client, fine, "composition.approx_kl")] == [1, 2, 3]  # no summary at step 0
    assert fine.data.metrics["final.composition.approx_kl"] == 0.01
    assert logged_models(client, fine) == {"rl": ["config.json"]}
    assert "eval.json" in {a.path for a in client.list_artifacts(children["evaluate"].info.run_id)}
    assert "report/index.html" in {a.path for a in client.list_artifacts(children["report"].info.run_id, "report")}

    # Metric names are the same from one pipeline run to the next.
    other = fake_finetune(tmp_path, iterations=2)
    assert set(client.get_run(other.run_id).data.metrics) == set(fine.data.metrics)
    assert not (tmp_path / "buffer").exists()


def test_server_killed_mid_run_or_down_at_start_then_replayed(tracked, mlflow_srv, tmp_path):
    """Kill the server (SIGKILL) in the middle of a stage, run another stage while it is down, restart it
    on the same store and port: the next stage replays both buffered runs; nothing is lost."""
    client = client_for(mlflow_srv.url)
    try:
        with pytest.warns(RuntimeWarning, match="buffering stage finetune"):
            with StageRun("finetune", PARAMS) as killed:
                for it in range(1, 4):
                    killed.log_metrics({"composition/reward_mean": 0.1 * it}, step=it)
                assert killed.buffer_path is None
                mlflow_srv.kill()
                began = time.monotonic()
                for it in range(4, 11):
                    killed.log_metrics({"composition/reward_mean": 0.1 * it}, step=it)
                (tmp_path / "train.json").write_text("{}")
                killed.log_artifact(tmp_path / "train.json")
                (tmp_path / "model").mkdir()
                (tmp_path / "model" / "config.json").write_text("{}")
                killed.log_model(tmp_path / "model", "rl")
        assert time.monotonic() - began < 20
        assert killed.run_id and killed.buffer_path.exists()

        began = time.monotonic()
        with pytest.warns(RuntimeWarning, match="buffering stage evaluate"):
            with StageRun("evaluate", {"seed": 0}) as down:
                down.log_metrics({"win_rate/composition": 0.6})
                for step in range(5):
                    down.log_metrics({"judge/loss": 1.0 / (step + 1)}, step=step)
                (tmp_path / "eval.json").write_text('{"win_rate": 0.6}')
                down.log_artifact(tmp_path / "eval.json")
                down.log_summary({"rl_vs_base.win_rate": 0.6}, {"seed": 0}, note="RL beats the base.")
        assert time.monotonic() - began < 10
        assert down.run_id is None
        assert pending(mlflow_srv.url) == sorted([killed.buffer_path, down.buffer_path])
    finally:
        mlflow_srv.start()  # same store, same port

    with StageRun("report", {"seed": 0}) as run:  # replays the buffer first
        run.log_metrics({"pages": 1})
    assert pending() == []

    parents, children = group_runs(client, tracked)
    assert len(parents) == 1 and set(children) == {"finetune", "evaluate", "report"}
    fine = client.get_run(killed.run_id)  # the same run, completed
    assert fine.info.status == "FINISHED"
    assert [s for s, _ in history(client, fine, "composition.reward_mean")] == list(range(1, 11))
    assert "train.json" in {a.path for a in client.list_artifacts(killed.run_id)}
    assert logged_models(client, fine) == {"rl": ["config.json"]}
    assert parents[0].data.metrics == {"rl_vs_base.win_rate": 0.6} and parents[0].data.params == {"seed": "0"}
    assert parents[0].data.tags["mlflow.note.content"] == "RL beats the base."
    evaluate = children["evaluate"]
    assert evaluate.data.tags["pipeline.replayed"] == "true" and evaluate.info.status == "FINISHED"
    assert evaluate.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert len(history(client, evaluate, "judge.loss")) == 5 and evaluate.data.metrics["win_rate.composition"] == 0.6
    assert "eval.json" in {a.path for a in client.list_artifacts(evaluate.info.run_id)}


# A stage's run, then the process dies: by SIGKILL (no chance to end the run) or SIGTERM (ends it).
DIE_IN_A_RUN = """
import os, signal, sys, time
from pipeline.tracking import StageRun
with StageRun("finetune", {"seed": 0}) as run:
    print(run.run_id, flush=True)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(30)
"""


def test_runs_of_killed_stages_do_not_stay_running(tmp_path, monkeypatch):
    """SIGTERM ends the stage through its run (KILLED); a SIGKILLed stage's run is marked KILLED when the
    stage next starts in the same group, while a live process's run of that stage is left alone."""
    import os
    import signal
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    group = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PIPELINE_RUN_GROUP", group)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    client.search_experiments()  # create the store first (a new store logs its migrations)

    ids = {}
    for name in ("SIGTERM", "SIGKILL"):
        died = subprocess.run([sys.executable, "-c", DIE_IN_A_RUN, name], cwd=Path(__file__).parent.parent,
                              env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert died.returncode in ((143, -signal.SIGTERM) if name == "SIGTERM" else (-signal.SIGKILL,)), died.stderr
        ids[name] = died.stdout.split()[0]
    assert client.get_run(ids["SIGTERM"]).info.status == "KILLED"
    assert client.get_run(ids["SIGKILL"]).info.status == "RUNNING"
    experiment = client.get_experiment_by_name(tracking_client.EXPERIMENT).experiment_id
    live = client.create_run(experiment, tags={"pipeline.group": group, "stage": "finetune",
                                               **tracking_client.process_tags()}).info.run_id

    with StageRun("finetune", {"seed": 0}) as run:
        assert client.get_run(ids["SIGKILL"]).info.status == "KILLED"
        assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_the_suite_leaves_the_checkouts_mlflow_store_alone(smoke_workspace):
    """Session fixtures run before function-scoped ones: smoke_workspace's real stages once logged into
    the checkout's mlflow.db. Now the session's own store has their runs, and the checkout's store,
    runs and buffer are as the session found them (conftest.py checks again at the end)."""
    import os

    from mlflow.tracking import MlflowClient

    from tests.conftest import CHECKOUT_AT_START, SESSION_TRACKING, tracking_fingerprint

    checkout = f"sqlite:///{tracking_client.PROJECT_ROOT / 'mlflow.db'}"
    assert SESSION_TRACKING["uri"] != checkout and os.environ["MLFLOW_TRACKING_URI"] != checkout
    session = MlflowClient(SESSION_TRACKING["uri"])
    experiment = session.get_experiment_by_name(tracking_client.EXPERIMENT)
    assert experiment is not None
    stages = {r.info.run_name for r in session.search_runs([experiment.experiment_id])}
    assert {"prompts", "pretrain"} <= stages  # smoke_workspace's stages logged there
    with StageRun("evaluate", {"seed": 0}) as run:  # a stage under this test's own store
        run.log_metrics({"pairs": 1})
    assert run.run_id is not None
    assert tracking_fingerprint() == CHECKOUT_AT_START
