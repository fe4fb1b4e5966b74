"""Out-of-process tools for tests: real MLflow and Prefect servers on free 127.0.0.1 ports, and a
tiny git + DVC project (`tiny_dvc_repo`, `experiments`).

    server = MlflowServer(tmp_path).start()      # ~11-15 s; server.url, server.process
    server.kill()                                # SIGKILL, as a crash would
    server.start()                               # same store, same port
    server.stop()

`mlflow_server(tmp_path) -> (url, process)` is the short form (stop it with `stop_process`).
Each server runs in its own session, so stopping it stops its worker processes too.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float = 90.0, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal the server's whole session (the server and its workers), then wait; SIGKILL if needed."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    else:  # the leader is gone; workers of its session may still live
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class MlflowServer:
    """`mlflow server --workers 1` with job execution off (2 processes, ~0.5 GB) on a SQLite store in `root`."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "MlflowServer":
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", self.backend_uri, "--artifacts-destination", str(self.root / "artifacts")]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        try:
            wait_http(f"{self.url}/health", self.process, timeout, self.log)
        except Exception:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server and its worker, as a crash would."""
        if self.process is not None:
            stop_process(self.process, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def mlflow_server(tmp_path: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """Start an MLflow server with its store in `tmp_path`; returns (url, process). Stop it with
    `stop_process(process)`."""
    server = MlflowServer(tmp_path, port).start()
    return server.url, server.process


class PrefectServer:
    """`prefect server start` with PREFECT_HOME in `root`; `api_url` is what PREFECT_API_URL should be."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """Environment for a client process of this server."""
        return _env(PREFECT_HOME=str(self.root), PREFECT_API_URL=self.api_url)

    def start(self, timeout: float = 120.0) -> "PrefectServer":
        env = self.env()
        env.pop("PREFECT_API_URL")
        cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            wait_http(f"{self.api_url}/health", self.process, timeout, self.log)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


# ---- a tiny DVC project (for the Prefect flow and experiment tests) --------------------------
STEP_PY = '''import json, os, pathlib, sys
import yaml
name, fail = sys.argv[1], sys.argv[2:]
p = yaml.safe_load(open("params.yaml"))["p"]
with open("order.log", "a") as fh:
    fh.write(f"{name} {p} {os.environ.get('PIPELINE_RUN_GROUP', '')}\\n")
if fail:
    sys.exit(int(fail[0]))
pathlib.Path(name + ".txt").write_text(f"{name} {p}\\n")
if name == "a":
    pathlib.Path("m.json").write_text(json.dumps({"score": p * 10}))
'''
# `c` comes first in the file, so file order is not topological order.
DVC_YAML = '''stages:
  c:
    cmd: python step.py c{fail_c}
    deps: [step.py, b.txt]
    outs: [c.txt]
  a:
    cmd: python step.py a{fail_a}
    deps: [step.py]
    params: [p]
    outs: [a.txt]
    metrics:
      - m.json:
          cache: false
  b:
    cmd: python step.py b{fail_b}
    deps: [step.py, a.txt]
    outs: [b.txt]
'''


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for dvc/git subprocesses: this venv's `python` first on PATH, no analytics."""
    return {**_env(**extra), "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=tool_env(), text=True,
                          capture_output=True, check=check)


def tiny_dvc_repo(root: Path, fail: dict[str, int] | None = None) -> Path:
    """A git + DVC project with stages a -> b -> c (python one-liners) and params.yaml {p: 1}, committed.
    `fail={"b": 1}` makes stage b exit with status 1. Each stage appends `name p group` to order.log."""
    root.mkdir(parents=True, exist_ok=True)
    env = tool_env()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "test@example.com"],
                ["git", "config", "user.name", "test"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    with open(root / ".dvc" / "config", "a") as fh:
        # site_cache_dir must be absolute: DVC resolves it against the cwd, and queued experiments run in a copy
        fh.write(f"[core]\n    analytics = false\n    site_cache_dir = {root.resolve() / '.dvc' / 'tmp' / 'site'}\n")
    fail = fail or {}
    (root / "dvc.yaml").write_text(DVC_YAML.format(**{f"fail_{s}": f" {fail[s]}" if s in fail else "" for s in "abc"}))
    (root / "step.py").write_text(STEP_PY)
    (root / "params.yaml").write_text("p: 1\n")
    (root / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "tiny pipeline"], cwd=root, env=env, check=True, capture_output=True)
    return root


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {"params": {...}, "metrics": {...}}}."""
    import json

    found = {}

    def visit(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict) and "params" in node["data"]:
                data = node["data"]
                found[node["name"]] = {
                    "params": {k: v for f in (data.get("params") or {}).values() for k, v in (f.get("data") or {}).items()},
                    "metrics": {k: v for f in (data.get("metrics") or {}).values() for k, v in (f.get("data") or {}).items()},
                }
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(json.loads(dvc(repo, "exp", "show", "--json").stdout))
    return found
