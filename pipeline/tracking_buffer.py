"""Local buffer for MLflow tracking while the server is unreachable, its replay, and the CLI.

A stage that cannot reach its tracking server writes every call (params, metrics with their step
and time, artifacts, the end status) as one JSON line to `<time>-<stage>-<pid>-<id>.open.jsonl`
under `.cache/mlflow-buffer/` (`PIPELINE_MLFLOW_BUFFER` overrides the folder); the file loses its
`.open` when the stage ends. `replay_buffer` sends buffered runs to a tracking URI, which the next
StageRun that reaches the server does, as does `python -m pipeline.tracking sync`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path

from pipeline import tracking_client as calls

BUFFER_ENV = "PIPELINE_MLFLOW_BUFFER"  # overrides the buffer folder
COPY_LIMIT_BYTES = 512 * 2**20  # buffered artifacts up to this size are copied, larger ones referenced


def buffer_dir() -> Path:
    return Path(os.environ.get(BUFFER_ENV) or calls.project_root() / ".cache" / "mlflow-buffer")


class RunBuffer:
    """The buffer file of one stage run, opened with its start event."""

    def __init__(self, stage: str, start: dict):
        folder = buffer_dir()
        folder.mkdir(parents=True, exist_ok=True)
        safe_stage = re.sub(r"[^A-Za-z0-9_-]", "_", stage)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{safe_stage}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = folder / f"{name}.open.jsonl"
        self._artifacts = 0
        self.write({"event": "start", **start, "pid": os.getpid()})

    def write(self, event: dict) -> None:
        with open(self.path, "a", encoding="utf8") as fh:
            fh.write(json.dumps(event) + "\n")

    def artifact(self, path: Path, artifact_path: str | None, model: bool = False) -> None:
        """Copy the artifact (a logged model's folder with `model`; `artifact_path` is then its name) next
        to the buffer file: it may change before the replay."""
        self._artifacts += 1
        event = "model" if model else "artifact"
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        if size > COPY_LIMIT_BYTES:
            self.write({"event": event, "path": str(path.resolve()), "artifact_path": artifact_path, "copied": False})
            return
        target = _files_dir(self.path) / str(self._artifacts)
        target.mkdir(parents=True, exist_ok=True)
        target = target / path.name
        shutil.copytree(path, target) if path.is_dir() else shutil.copy2(path, target)
        self.write({"event": event, "path": str(target), "artifact_path": artifact_path, "copied": True})

    def close(self, status: str, end_time: int) -> Path:
        """Write the end event and drop `.open` from the name: the file is ready for replay."""
        self.write({"event": "end", "status": status, "end_time": end_time})
        closed = self.path.with_name(self.path.name.replace(".open.jsonl", ".jsonl"))
        self.path.rename(closed)
        self.path = closed
        return closed


def _files_dir(path: Path) -> Path:
    """The folder of artifacts copied for the buffer file `path`."""
    return path.parent / (path.name.split(".")[0] + ".files")


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
        if path.name.endswith(".open.jsonl") and calls.pid_alive(int(events[0].get("pid") or -1)):
            continue
        if uri is None or events[0].get("uri") == uri:
            found.append(path)
    return found


def _replay_run(client, uri: str, events: list[dict]) -> str:
    from mlflow.exceptions import MlflowException

    start = events[0]
    experiment_id = calls.experiment_id(client, uri)
    run_id = start.get("run_id")
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:  # the server came back with another store
            run_id = None
    parent_id = calls.parent_run(client, experiment_id, start["group"], start["parent_tags"])
    if not run_id:
        run_id = client.create_run(experiment_id, start_time=start["start_time"], run_name=start["stage"],
                                   tags={**start["tags"], "mlflow.parentRunId": parent_id,
                                         "pipeline.replayed": "true"}).info.run_id
    calls.log_params(client, run_id, start["params"])
    rows = [row for e in events if e["event"] == "metrics" for row in e["rows"]]
    calls.log_metrics(client, run_id, rows)
    for event in events:
        if event["event"] == "artifact" and Path(event["path"]).exists():
            calls.log_path(client, run_id, Path(event["path"]), event["artifact_path"])
        elif event["event"] == "model" and Path(event["path"]).exists():
            calls.log_model(client, run_id, Path(event["path"]), event["artifact_path"], parent_id=parent_id)
    _replay_parent(client, parent_id, events)
    end = next((e for e in events if e["event"] == "end"), {"status": "KILLED", "end_time": None})
    client.set_terminated(run_id, end["status"], end["end_time"])
    client.set_terminated(parent_id, end["status"], end["end_time"])
    return run_id


def _replay_parent(client, parent_id: str, events: list[dict]) -> None:
    """What a stage logged on the parent run (StageRun.log_summary); params the parent already holds
    with other values are refused by the server and skipped, not a reason to set the run aside."""
    for event in events:
        kind = event["event"]
        try:
            if kind == "parent_metrics":
                calls.log_metrics(client, parent_id, event["rows"])
            elif kind == "parent_params":
                calls.log_params(client, parent_id, event["params"])
            elif kind == "parent_tags":
                calls.set_tags(client, parent_id, event["tags"])
        except Exception as exc:
            if not calls.rejected(exc):
                raise
            warnings.warn(f"MLflow refused the parent run's {kind[7:]} ({str(exc)[:300]}); skipped", RuntimeWarning)


def replay_buffer(uri: str | None = None, client=None, any_uri: bool = False) -> list[str]:
    """Send buffered runs recorded for `uri` (all of them with `any_uri`) to `uri`; return their run ids.
    A file is claimed by renaming, so concurrent stages never replay it twice; on failure it is put back."""
    uri = uri or calls.default_tracking_uri()
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
            if calls.rejected(exc):  # would fail every time: set aside, do not block the others
                claimed.rename(claimed.with_name(claimed.name.replace(".replaying", ".rejected")))
                warnings.warn(f"MLflow refused buffered run {path.name} ({str(exc)[:300]}); set aside as "
                              f"*.rejected in {path.parent}", RuntimeWarning)
                continue
            claimed.rename(path)
            warnings.warn(f"MLflow: replaying {path.name} to {uri} failed ({exc}); kept for later", RuntimeWarning)
            break
        claimed.unlink()
        shutil.rmtree(_files_dir(claimed), ignore_errors=True)
    return replayed


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.tracking list|sync`."""
    p = argparse.ArgumentParser(prog="python -m pipeline.tracking",
                                description="Inspect or send MLflow runs buffered while the tracking server was down.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("list", "list buffered runs"), ("sync", "send buffered runs to the tracking server")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or the project's mlflow.db)")
        s.add_argument("--any", action="store_true", help="also runs buffered for another URI")
    args = p.parse_args(argv)
    uri = args.uri or calls.default_tracking_uri()
    if args.command == "list":
        for path in pending(None if args.any else uri):
            print(path)
        return
    with calls.QuickHttp():
        calls.probe(uri)
        ids = replay_buffer(uri, any_uri=args.any)
    print(f"sent {len(ids)} buffered run(s) to {uri}; {len(pending(None if args.any else uri))} left in {buffer_dir()}")
