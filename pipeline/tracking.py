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

import os
import re
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

from pipeline import PROJECT_ROOT
from pipeline import tracking_client as calls
from pipeline.keys import flatten, params_hash
from pipeline.tracking_buffer import RunBuffer, main, replay_buffer


SIGTERM_EXIT = 128 + signal.SIGTERM  # the status a shell reports for a process SIGTERM ended


def git_commit(cwd: Path = PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_group() -> str:
    return os.environ.get("PIPELINE_RUN_GROUP") or os.environ.get("DVC_EXP_NAME") or f"commit-{git_commit()[:12]}"


def metric_name(key: str) -> str:
    """One spelling for a metric everywhere: 'composition/reward mean' -> 'composition.reward_mean'."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(key).replace("/", "."))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rows(metrics: dict[str, float], step: int | None) -> list[list]:
    """MLflow metric rows [name, value, time, step] of the numeric entries of `metrics`."""
    now = _now_ms()
    rows = []
    for key, value in metrics.items():
        if isinstance(value, str):
            continue
        try:
            rows.append([metric_name(key), float(value), now, int(step or 0)])
        except (TypeError, ValueError):
            continue
    return rows


class StageRun:
    """Context manager for one stage's child run. Logging calls never raise: when the tracking
    server cannot be reached they are buffered locally (see the module docstring)."""

    def __init__(self, stage: str, params_dump: dict | None = None, uri: str | None = None):
        self.stage = stage
        self.params_dump = params_dump or {}
        self.uri = uri or calls.default_tracking_uri()
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
        self._catch_sigterm()
        self._http = calls.QuickHttp()
        self._http.__enter__()
        self.start_time = _now_ms()
        self.group = run_group()
        commit = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit()
        experiment = os.environ.get("DVC_EXP_NAME", "")
        base_tags = {"pipeline.group": self.group, "git_commit": commit, "mlflow.source.git.commit": commit,
                     "dvc_experiment": experiment}
        self.parent_tags = base_tags
        self.tags = {**base_tags, "pipeline.role": "stage", "stage": self.stage,
                     "params_hash": params_hash(self.params_dump), **calls.process_tags()}
        self.params = {k[:250]: str(v)[:6000] for k, v in flatten(self.params_dump).items()}
        try:
            calls.probe(self.uri)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.uri)
            try:
                replay_buffer(self.uri, client=client)
            except Exception as exc:
                warnings.warn(f"MLflow: replaying buffered runs failed ({exc})", RuntimeWarning)
            experiment_id = calls.experiment_id(client, self.uri)
            try:  # an earlier launch of this stage that was killed left its run RUNNING
                calls.end_killed_runs(client, experiment_id, self.group, self.stage)
            except Exception as exc:
                warnings.warn(f"MLflow: ending killed runs of stage {self.stage} failed ({exc})", RuntimeWarning)
            self.parent_id = calls.parent_run(client, experiment_id, self.group, self.parent_tags)
            run = client.create_run(experiment_id, start_time=self.start_time, run_name=self.stage,
                                    tags={**self.tags, "mlflow.parentRunId": self.parent_id})
            self.run_id = run.info.run_id
            self._client = client
            calls.log_params(client, self.run_id, self.params)
        except Exception as exc:  # server down, bad URI, locked store
            self._start_buffer(exc)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        killed = exc_type is KeyboardInterrupt or (exc_type is SystemExit and getattr(exc, "code", 0) == SIGTERM_EXIT)
        status = "FINISHED" if exc_type is None else "KILLED" if killed else "FAILED"
        self._restore_sigterm()
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

    def _catch_sigterm(self) -> None:
        """SIGTERM (a cancelled flow, `kill`) ends the stage through __exit__, which marks its run KILLED;
        by default Python would die at once and leave the run RUNNING."""
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            def stop(signum, frame):
                raise SystemExit(SIGTERM_EXIT)

            self._previous_sigterm = signal.signal(signal.SIGTERM, stop)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    # ---- logging ---------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rows = _rows(metrics, step)
        if rows:
            self._call(calls.log_metrics, rows, event={"event": "metrics", "rows": rows})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder under `artifact_path`."""
        path = Path(path)
        if path.exists():
            self._call(calls.log_path, path, artifact_path, event=None)

    def log_model(self, path: str | Path, name: str) -> None:
        """Log a saved model folder as an MLflow logged model named `name` (the Models column)."""
        path = Path(path)
        if path.is_dir():
            self._call(calls.log_model, path, name, event=None)

    def log_outputs(self, *files: str | Path, models: dict[str, str | Path] | None = None) -> None:
        """A stage's outputs: `files` as artifacts, `models` ({name: folder}) as logged models."""
        for path in files:
            self.log_artifact(path)
        for name, path in (models or {}).items():
            self.log_model(path, name)

    def log_summary(self, metrics: dict[str, float], params: dict, note: str | None = None) -> None:
        """The pipeline run's headline on the parent run: metrics and key params, so the runs table
        compares pipeline runs, and `note` (Markdown) as the run's description. A parent that already
        holds other values for these params (one run group, params changed) keeps them, with a warning."""
        rows = _rows(metrics, None)
        if rows:
            self._call(calls.log_metrics, rows, event={"event": "parent_metrics", "rows": rows}, parent=True)
        values = {k[:250]: str(v)[:6000] for k, v in params.items()}
        self._call(calls.log_params, values, event={"event": "parent_params", "params": values}, parent=True)
        if note:
            tags = {"mlflow.note.content": note}
            self._call(calls.set_tags, tags, event={"event": "parent_tags", "tags": tags}, parent=True)

    def _call(self, fn, *args, event: dict | None, parent: bool = False) -> None:
        if self._client is not None:
            try:
                if fn is calls.log_model:  # the model is an output of the pipeline run too
                    fn(self._client, self.run_id, *args, parent_id=self.parent_id)
                else:
                    fn(self._client, self.parent_id if parent else self.run_id, *args)
                return
            except Exception as exc:
                if calls.rejected(exc):
                    warnings.warn(f"MLflow refused a call for stage {self.stage} ({str(exc)[:300]}); skipped",
                                  RuntimeWarning)
                    return
                self._start_buffer(exc)
        if self._buffer is None:
            return
        try:
            if fn in (calls.log_path, calls.log_model):
                self._buffer.artifact(*args, model=fn is calls.log_model)
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
                "uri": self.uri, "experiment": calls.EXPERIMENT, "run_id": self.run_id, "group": self.group,
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
