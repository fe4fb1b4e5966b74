"""The MLflow client calls that stage tracking (pipeline/tracking.py) and its offline buffer
(pipeline/tracking_buffer.py) both make: where the store is, a quick health probe, the
experiment and the pipeline's parent run, and batched params, metrics and artifacts.

Calls get a short HTTP timeout and one retry (`QuickHttp`), so an unreachable server costs
seconds, not MLflow's default minutes.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from pipeline import PROJECT_ROOT

EXPERIMENT = "rl-diffusion"
# Quick failure instead of MLflow's defaults (7 retries with exponential backoff, 120 s timeout);
# a value the user set is kept.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_TIMEOUT_S = 3.0
UPLOAD_TIMEOUT_S = 600


def project_root() -> Path:
    """The repository stages run for: `DVC_ROOT` (set by DVC; for queued experiments it names
    the main repository, not the temporary copy) or this package's checkout."""
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise if an HTTP tracking server does not answer /health within `timeout` seconds."""
    if _is_http(uri):
        import urllib.request

        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()


class QuickHttp:
    """Sets HTTP_ENV (where unset) for the duration of a block."""

    def __enter__(self):
        self.added = [k for k in HTTP_ENV if k not in os.environ]
        os.environ.update({k: HTTP_ENV[k] for k in self.added})

    def __exit__(self, *exc):
        for key in self.added:
            os.environ.pop(key, None)


def rejected(exc: Exception) -> bool:
    """The server answered and refused the request (bad value, invalid state): sending it again
    later cannot help. A run that does not exist (a server restarted on another store) is not
    counted: buffered, it is replayed into a new run."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        return False
    return (isinstance(exc, MlflowException) and 400 <= exc.get_http_status_code() < 500
            and exc.error_code != "RESOURCE_DOES_NOT_EXIST")


def experiment_id(client, uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever the cwd is
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns" / EXPERIMENT).as_uri()
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent stage
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def parent_run(client, experiment_id: str, group: str, tags: dict[str, str]) -> str:
    """The group's parent run (the oldest, should two stages have raced), created if missing."""
    found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                               filter_string=f"tags.`pipeline.group` = '{group}' and tags.`pipeline.role` = 'parent'")
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=group, tags={**tags, "pipeline.role": "parent"}).info.run_id


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return True


def process_tags() -> dict[str, str]:
    """Which process a run belongs to, so a later run can tell a killed one from a live one."""
    return {"pipeline.host": socket.gethostname(), "pipeline.pid": str(os.getpid())}


def end_killed_runs(client, experiment_id: str, group: str, stage: str) -> list[str]:
    """Mark KILLED the group's runs of `stage` still RUNNING whose process on this machine is gone: a
    SIGKILL gives a stage no chance to end its run. Runs of other machines and live processes are left."""
    found = client.search_runs([experiment_id], max_results=100, filter_string=(
        f"tags.`pipeline.group` = '{group}' and tags.stage = '{stage}' and attributes.status = 'RUNNING'"))
    ended = []
    for run in found:
        tags = run.data.tags
        if "pipeline.pid" in tags and (tags.get("pipeline.host") != socket.gethostname()
                                       or pid_alive(int(tags["pipeline.pid"]))):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = list(params.items())
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])


def log_metrics(client, run_id: str, rows: list[list]) -> None:
    from mlflow.entities import Metric

    for start in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in rows[start:start + 1000]])


def set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def log_model(client, run_id: str, path: Path, name: str, parent_id: str | None = None) -> str:
    """A model folder as an MLflow logged model made by `run_id` (the runs table's Models column lists it
    on that run's row) and an output of it and of the pipeline's `parent_id`; returns the model id."""
    from mlflow.entities import LoggedModelOutput

    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment, name=name, source_run_id=run_id)
    with _upload_timeout():
        client.log_model_artifacts(model.model_id, str(path))
    client.finalize_logged_model(model.model_id, "READY")
    for run in (run_id, parent_id) if parent_id else (run_id,):
        client.log_outputs(run, [LoggedModelOutput(model.model_id, 0)])
    return model.model_id


class _upload_timeout:
    """Uploads (a model folder) may take longer than the short timeout set for other calls."""

    def __enter__(self):
        self.ours = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == HTTP_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]
        if self.ours:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(UPLOAD_TIMEOUT_S)

    def __exit__(self, *exc):
        if self.ours:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = HTTP_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]


def log_path(client, run_id: str, path: Path, artifact_path: str | None) -> None:
    with _upload_timeout():
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)
