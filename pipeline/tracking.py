"""MLflow tracking: one parent run per pipeline run, one child run per stage.

The parent is found (or made) by its run-group tag: `PIPELINE_RUN_GROUP` if set (the Prefect
flow sets it), else the DVC experiment name (`DVC_EXP_NAME`, which `dvc exp run` sets for every
stage: dvc/repo/experiments/queue/base.py), else the git commit. The default store is
`mlflow.db` (SQLite, git-ignored) in the project; `MLFLOW_TRACKING_URI` overrides it.

Tracking never breaks or stalls a stage. HTTP calls get a short timeout and one retry, and an
`http(s)` server is probed on `/health` first. If the server is down at the start, or dies
mid-run, every call from then on (params, metrics with their step and time, artifacts, the end
status) is appended to a JSONL file under `.cache/mlflow-buffer/`; the next StageRun that reaches
the same server replays it, or `python -m pipeline.tracking sync` does (pipeline/tracking_buffer.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline import PROJECT_ROOT
# The buffer's public names are re-exported here (`python -m pipeline.tracking sync|list` is its `main`).
from pipeline.tracking_buffer import BUFFER_ENV, RunBuffer, buffer_dir, main, pending, replay_buffer  # noqa: F401

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


def git_commit(cwd: Path = PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_group() -> str:
    return os.environ.get("PIPELINE_RUN_GROUP") or os.environ.get("DVC_EXP_NAME") or f"commit-{git_commit()[:12]}"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'rl': {'lr': 1e-4}} -> {'rl.lr': 1e-4}; lists of mappings get their index."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        for index, value in enumerate(data):
            flat.update(flatten(value, f"{prefix}{index}."))
    else:
        flat[prefix.rstrip(".")] = data
    return flat


def params_hash(params_dump) -> str:
    """A short, stable hash of any JSON-able value."""
    return hashlib.sha256(json.dumps(params_dump, sort_keys=True, default=str).encode()).hexdigest()[:16]


def metric_name(key: str) -> str:
    """One spelling for a metric everywhere: 'composition/reward mean' -> 'composition.reward_mean'."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(key).replace("/", "."))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise if an HTTP tracking server does not answer /health within `timeout` seconds."""
    if _is_http(uri):
        import urllib.request

        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()


class _QuickHttp:
    """Sets HTTP_ENV (where unset) for the duration of a block."""

    def __enter__(self):
        self.added = [k for k in HTTP_ENV if k not in os.environ]
        os.environ.update({k: HTTP_ENV[k] for k in self.added})

    def __exit__(self, *exc):
        for key in self.added:
            os.environ.pop(key, None)


def _rejected(exc: Exception) -> bool:
    """The server answered and refused the request (bad value, invalid state): sending it again
    later cannot help. A run that does not exist (a server restarted on another store) is not
    counted: buffered, it is replayed into a new run."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        return False
    return (isinstance(exc, MlflowException) and 400 <= exc.get_http_status_code() < 500
            and exc.error_code != "RESOURCE_DOES_NOT_EXIST")


def _experiment_id(client, uri: str) -> str:
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


def _parent_run(client, experiment_id: str, group: str, tags: dict[str, str]) -> str:
    """The group's parent run (the oldest, should two stages have raced), created if missing."""
    found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                               filter_string=f"tags.`pipeline.group` = '{group}' and tags.`pipeline.role` = 'parent'")
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=group, tags={**tags, "pipeline.role": "parent"}).info.run_id


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = list(params.items())
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])


def _log_metrics(client, run_id: str, rows: list[list]) -> None:
    from mlflow.entities import Metric

    for start in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in rows[start:start + 1000]])


def _log_path(client, run_id: str, path: Path, artifact_path: str | None) -> None:
    # Uploads (a model folder) may take longer than the short timeout we set for other calls.
    ours = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == HTTP_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    if ours:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(UPLOAD_TIMEOUT_S)
    try:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)
    finally:
        if ours:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = HTTP_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]


class StageRun:
    """Context manager for one stage's child run. Logging calls never raise: when the tracking
    server cannot be reached they are buffered locally (see the module docstring)."""

    def __init__(self, stage: str, params_dump: dict | None = None, uri: str | None = None):
        self.stage = stage
        self.params_dump = params_dump or {}
        self.uri = uri or default_tracking_uri()
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self._buffer: RunBuffer | None = None  # set once this run is being buffered
        self._client = None

    @property
    def buffer_path(self) -> Path | None:
        """This run's buffer file, once it is being buffered."""
        return self._buffer.path if self._buffer is not None else None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "StageRun":
        self._http = _QuickHttp()
        self._http.__enter__()
        self.start_time = _now_ms()
        self.group = run_group()
        commit = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit()
        experiment = os.environ.get("DVC_EXP_NAME", "")
        base_tags = {"pipeline.group": self.group, "git_commit": commit, "mlflow.source.git.commit": commit,
                     "dvc_experiment": experiment}
        self.parent_tags = base_tags
        self.tags = {**base_tags, "pipeline.role": "stage", "stage": self.stage,
                     "params_hash": params_hash(self.params_dump)}
        self.params = {k[:250]: str(v)[:6000] for k, v in flatten(self.params_dump).items()}
        try:
            _probe(self.uri)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.uri)
            try:
                replay_buffer(self.uri, client=client)
            except Exception as exc:
                warnings.warn(f"MLflow: replaying buffered runs failed ({exc})", RuntimeWarning)
            experiment_id = _experiment_id(client, self.uri)
            self.parent_id = _parent_run(client, experiment_id, self.group, self.parent_tags)
            run = client.create_run(experiment_id, start_time=self.start_time, run_name=self.stage,
                                    tags={**self.tags, "mlflow.parentRunId": self.parent_id})
            self.run_id = run.info.run_id
            self._client = client
            _log_params(client, self.run_id, self.params)
        except Exception as exc:  # server down, bad URI, locked store
            self._start_buffer(exc)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        end = _now_ms()
        try:
            if self._client is not None:
                try:
                    self._client.set_terminated(self.run_id, status, end)
                    self._client.set_terminated(self.parent_id, status, end)
                except Exception as err:
                    self._start_buffer(err)
            if self._buffer is not None:
                closed = self._buffer.close(status, end)
                warnings.warn(f"MLflow: stage {self.stage}'s tracking data is buffered in {closed}; it is sent to "
                              f"{self.uri} by the next stage that reaches it, or by `python -m pipeline.tracking "
                              "sync`", RuntimeWarning, stacklevel=2)
        except Exception as err:  # even the buffer failed (disk full): report, never raise
            warnings.warn(f"MLflow: could not finish tracking stage {self.stage}: {err}", RuntimeWarning)
        finally:
            self._http.__exit__(None, None, None)

    # ---- logging ---------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = _now_ms()
        rows = []
        for key, value in metrics.items():
            if isinstance(value, str):
                continue
            try:
                rows.append([metric_name(key), float(value), now, int(step or 0)])
            except (TypeError, ValueError):
                continue
        if rows:
            self._call(_log_metrics, rows, event={"event": "metrics", "rows": rows})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder (e.g. a saved model) under `artifact_path`."""
        path = Path(path)
        if path.exists():
            self._call(_log_path, path, artifact_path, event=None)

    def _call(self, fn, *args, event: dict | None) -> None:
        if self._client is not None:
            try:
                fn(self._client, self.run_id, *args)
                return
            except Exception as exc:
                if _rejected(exc):
                    warnings.warn(f"MLflow refused a call for stage {self.stage} ({str(exc)[:300]}); skipped",
                                  RuntimeWarning)
                    return
                self._start_buffer(exc)
        if self._buffer is None:
            return
        try:
            if fn is _log_path:
                self._buffer.artifact(*args)
            else:
                self._buffer.write(event)
        except Exception as exc:
            warnings.warn(f"MLflow: buffering failed for stage {self.stage} ({exc})", RuntimeWarning)

    # ---- buffer ----------------------------------------------------------------------------
    def _start_buffer(self, reason: Exception) -> None:
        self._client = None
        if self._buffer is not None:
            return
        try:
            self._buffer = RunBuffer(self.stage, {
                "uri": self.uri, "experiment": EXPERIMENT, "run_id": self.run_id, "group": self.group,
                "stage": self.stage, "tags": self.tags, "parent_tags": self.parent_tags, "params": self.params,
                "start_time": self.start_time, "reason": f"{type(reason).__name__}: {reason}"[:500]})
            warnings.warn(f"MLflow tracking at {self.uri} is unavailable ({type(reason).__name__}: "
                          f"{str(reason)[:200]}); buffering stage {self.stage}'s tracking in {self.buffer_path}",
                          RuntimeWarning, stacklevel=3)
        except Exception as exc:
            self._buffer = None
            warnings.warn(f"MLflow: tracking unavailable ({reason}) and buffer not writable ({exc}); stage "
                          f"{self.stage} is not tracked", RuntimeWarning)


if __name__ == "__main__":
    main()
