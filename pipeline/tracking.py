"""MLflow tracking: one parent run per pipeline run, one child run per stage.

The parent is found (or made) by its run-group tag: `PIPELINE_RUN_GROUP` if set (the Prefect
flow sets it), else the DVC experiment name (`DVC_EXP_NAME`, set by `dvc exp run`), else the
git commit. Tracking never breaks a stage: if the tracking server is unreachable, everything is
written to the local SQLite store instead, with a warning that says how to sync.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

from pipeline import PROJECT_ROOT

EXPERIMENT = "rl-diffusion"
log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


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


def params_hash(params_dump: dict) -> str:
    return hashlib.sha256(json.dumps(params_dump, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRun:
    """Context manager for one stage's child run; methods are no-ops after a tracking failure."""

    def __init__(self, stage: str, params_dump: dict | None = None, uri: str | None = None):
        self.stage = stage
        self.params_dump = params_dump or {}
        self.uri = uri or default_tracking_uri()
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self._mlflow = None

    def __enter__(self) -> "StageRun":
        try:
            self._start(self.uri)
        except Exception as exc:  # server down, bad URI: fall back to the local store
            local = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
            warnings.warn(f"MLflow tracking at {self.uri} failed ({type(exc).__name__}: {exc}); "
                          f"logging to {local} instead. Sync later with `mlflow-export-import` or re-run the "
                          "stage with the server up.", RuntimeWarning, stacklevel=2)
            try:
                self._start(local)
            except Exception as exc2:
                warnings.warn(f"local MLflow store failed too ({exc2}); this stage is not tracked", RuntimeWarning)
                self._mlflow = None
        return self

    def _start(self, uri: str) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment(EXPERIMENT)
        client = MlflowClient(uri)
        group = run_group()
        found = client.search_runs([experiment.experiment_id],
                                   filter_string=f"tags.`pipeline.group` = '{group}' and tags.`pipeline.role` = 'parent'",
                                   max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
        else:
            parent = client.create_run(experiment.experiment_id, run_name=group,
                                       tags={"pipeline.group": group, "pipeline.role": "parent",
                                             "git_commit": git_commit(),
                                             "dvc_experiment": os.environ.get("DVC_EXP_NAME", "")})
            self.parent_id = parent.info.run_id
            client.set_terminated(self.parent_id)
        run = client.create_run(experiment.experiment_id, run_name=self.stage, tags={
            "mlflow.parentRunId": self.parent_id, "pipeline.group": group, "pipeline.role": "stage",
            "stage": self.stage, "git_commit": git_commit(), "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
            "params_hash": params_hash(self.params_dump),
        })
        self.run_id = run.info.run_id
        self._client = client
        self._mlflow = mlflow
        flat = {k: str(v)[:5000] for k, v in flatten(self.params_dump).items()}
        items = list(flat.items())
        for start in range(0, len(items), 100):
            client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start:start + 100]])

    def _safe(self, action, *args, **kwargs) -> None:
        if self._mlflow is None:
            return
        try:
            action(*args, **kwargs)
        except Exception as exc:
            warnings.warn(f"MLflow logging failed for stage {self.stage} ({exc}); continuing untracked",
                          RuntimeWarning)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow is None:
            return
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("/", "."), float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float))]
        self._safe(self._client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            self._safe(self._client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self._safe(self._client.log_artifact, self.run_id, str(path), artifact_path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None:
            status = "FINISHED" if exc_type is None else "FAILED"
            self._safe(self._client.set_terminated, self.run_id, status)
