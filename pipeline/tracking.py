"""MLflow tracking: one parent run per pipeline run, one child run per stage.

The parent is found (or made) by its run-group tag: `PIPELINE_RUN_GROUP` if set (the Prefect
flow sets it), else the DVC experiment name (`DVC_EXP_NAME`, which `dvc exp run` sets for every
stage: dvc/repo/experiments/queue/base.py), else the git commit. The default store is
`mlflow.db` (SQLite, git-ignored) in the project; `MLFLOW_TRACKING_URI` overrides it.

Tracking never breaks or stalls a stage. HTTP calls get a short timeout and one retry, and an
`http(s)` server is probed on `/health` first. If the server is down at the start, or dies
mid-run, every call from then on (params, metrics with their step and time, artifacts, the end
status) is appended to a JSONL file under `.cache/mlflow-buffer/`; the next StageRun that reaches
the same server replays it, or `python -m pipeline.tracking sync` does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from pipeline import PROJECT_ROOT

EXPERIMENT = "rl-diffusion"
BUFFER_ENV = "PIPELINE_MLFLOW_BUFFER"  # overrides the buffer folder
# Quick failure instead of MLflow's defaults (7 retries with exponential backoff, 120 s timeout);
# a value the user set is kept.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_TIMEOUT_S = 3.0
UPLOAD_TIMEOUT_S = 600
COPY_LIMIT_BYTES = 512 * 2**20  # buffered artifacts up to this size are copied, larger ones referenced


def project_root() -> Path:
    """The repository stages run for: `DVC_ROOT` (set by DVC; for queued experiments it names
    the main repository, not the temporary copy) or this package's checkout."""
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def buffer_dir() -> Path:
    return Path(os.environ.get(BUFFER_ENV) or project_root() / ".cache" / "mlflow-buffer")


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
        self.buffer_path: Path | None = None  # set once this run is being buffered
        self._client = None
        self._artifacts = 0

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
            if self.buffer_path is not None:
                self._write({"event": "end", "status": status, "end_time": end})
                closed = self.buffer_path.with_name(self.buffer_path.name.replace(".open.jsonl", ".jsonl"))
                self.buffer_path.rename(closed)
                self.buffer_path = closed
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
        if self.buffer_path is None:
            return
        try:
            if fn is _log_path:
                event = self._buffer_artifact(*args)
            self._write(event)
        except Exception as exc:
            warnings.warn(f"MLflow: buffering failed for stage {self.stage} ({exc})", RuntimeWarning)

    # ---- buffer ----------------------------------------------------------------------------
    def _start_buffer(self, reason: Exception) -> None:
        self._client = None
        if self.buffer_path is not None:
            return
        try:
            folder = buffer_dir()
            folder.mkdir(parents=True, exist_ok=True)
            stage = re.sub(r"[^A-Za-z0-9_-]", "_", self.stage)
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{stage}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.buffer_path = folder / f"{name}.open.jsonl"
            self._write({"event": "start", "uri": self.uri, "experiment": EXPERIMENT, "run_id": self.run_id,
                         "group": self.group, "stage": self.stage, "tags": self.tags,
                         "parent_tags": self.parent_tags, "params": self.params, "start_time": self.start_time,
                         "pid": os.getpid(), "reason": f"{type(reason).__name__}: {reason}"[:500]})
            warnings.warn(f"MLflow tracking at {self.uri} is unavailable ({type(reason).__name__}: "
                          f"{str(reason)[:200]}); buffering stage {self.stage}'s tracking in {self.buffer_path}",
                          RuntimeWarning, stacklevel=3)
        except Exception as exc:
            self.buffer_path = None
            warnings.warn(f"MLflow: tracking unavailable ({reason}) and buffer not writable ({exc}); stage "
                          f"{self.stage} is not tracked", RuntimeWarning)

    def _write(self, event: dict) -> None:
        with open(self.buffer_path, "a", encoding="utf8") as fh:
            fh.write(json.dumps(event) + "\n")

    def _buffer_artifact(self, path: Path, artifact_path: str | None) -> dict:
        """Copy the artifact next to the buffer file (it may change before the replay)."""
        self._artifacts += 1
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        if size > COPY_LIMIT_BYTES:
            return {"event": "artifact", "path": str(path.resolve()), "artifact_path": artifact_path, "copied": False}
        target = self.buffer_path.parent / (self.buffer_path.name.split(".")[0] + ".files") / str(self._artifacts)
        target.mkdir(parents=True, exist_ok=True)
        target = target / path.name
        shutil.copytree(path, target) if path.is_dir() else shutil.copy2(path, target)
        return {"event": "artifact", "path": str(target), "artifact_path": artifact_path, "copied": True}


# ---- replay ------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return True


def _read_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text(encoding="utf8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return events


def pending(uri: str | None = None) -> list[Path]:
    """Buffered runs waiting to be sent (to `uri` if given); runs still being written are left out."""
    found = []
    for path in sorted(buffer_dir().glob("*.jsonl")):
        try:
            events = _read_events(path)
        except FileNotFoundError:
            continue
        if not events or events[0].get("event") != "start":
            continue
        if path.name.endswith(".open.jsonl") and _pid_alive(int(events[0].get("pid") or -1)):
            continue
        if uri is None or events[0].get("uri") == uri:
            found.append(path)
    return found


def _replay_run(client, uri: str, events: list[dict]) -> str:
    from mlflow.exceptions import MlflowException

    start = events[0]
    experiment_id = _experiment_id(client, uri)
    run_id = start.get("run_id")
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:  # the server came back with another store
            run_id = None
    parent_id = _parent_run(client, experiment_id, start["group"], start["parent_tags"])
    if not run_id:
        run_id = client.create_run(experiment_id, start_time=start["start_time"], run_name=start["stage"],
                                   tags={**start["tags"], "mlflow.parentRunId": parent_id,
                                         "pipeline.replayed": "true"}).info.run_id
    _log_params(client, run_id, start["params"])
    rows = [row for e in events if e["event"] == "metrics" for row in e["rows"]]
    _log_metrics(client, run_id, rows)
    for event in events:
        if event["event"] == "artifact" and Path(event["path"]).exists():
            _log_path(client, run_id, Path(event["path"]), event["artifact_path"])
    end = next((e for e in events if e["event"] == "end"), {"status": "KILLED", "end_time": None})
    client.set_terminated(run_id, end["status"], end["end_time"])
    client.set_terminated(parent_id, end["status"], end["end_time"])
    return run_id


def replay_buffer(uri: str | None = None, client=None, any_uri: bool = False) -> list[str]:
    """Send buffered runs recorded for `uri` (all of them with `any_uri`) to `uri`; return their run ids.
    A file is claimed by renaming, so concurrent stages never replay it twice; on failure it is put back."""
    uri = uri or default_tracking_uri()
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
    replayed = []
    for path in pending(None if any_uri else uri):
        claimed = path.with_name(path.name.replace(".open.jsonl", ".jsonl") + ".replaying")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            continue
        try:
            replayed.append(_replay_run(client, uri, _read_events(claimed)))
        except Exception as exc:
            if _rejected(exc):  # would fail every time: set aside, do not block the others
                claimed.rename(claimed.with_name(claimed.name.replace(".replaying", ".rejected")))
                warnings.warn(f"MLflow refused buffered run {path.name} ({str(exc)[:300]}); set aside as "
                              f"*.rejected in {path.parent}", RuntimeWarning)
                continue
            claimed.rename(path)
            warnings.warn(f"MLflow: replaying {path.name} to {uri} failed ({exc}); kept for later", RuntimeWarning)
            break
        claimed.unlink()
        shutil.rmtree(claimed.parent / (claimed.name.split(".")[0] + ".files"), ignore_errors=True)
    return replayed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.tracking",
                                description="Inspect or send MLflow runs buffered while the tracking server was down.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("list", "list buffered runs"), ("sync", "send buffered runs to the tracking server")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or the project's mlflow.db)")
        s.add_argument("--any", action="store_true", help="also runs buffered for another URI")
    args = p.parse_args(argv)
    uri = args.uri or default_tracking_uri()
    if args.command == "list":
        for path in pending(None if args.any else uri):
            print(path)
        return
    with _QuickHttp():
        _probe(uri)
        ids = replay_buffer(uri, any_uri=args.any)
    print(f"sent {len(ids)} buffered run(s) to {uri}; {len(pending(None if args.any else uri))} left in {buffer_dir()}")


if __name__ == "__main__":
    main()
