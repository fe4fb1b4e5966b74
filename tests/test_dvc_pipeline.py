"""A real `dvc repro` of the pipeline on the smoke profile, in a temporary git repository."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMOKE_PARAMS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(SMOKE_PARAMS, repo / "params.yaml")
    (repo / ".gitignore").write_text("/data/\n/checkpoints/\n/mlflow.db\n/.cache/\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(repo),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    _run(["dvc", "config", "core.site_cache_dir", str(repo / ".cache" / "dvc-site")], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)
    return repo, env


def test_foundation_stages_reproduce(dvc_repo):
    repo, env = dvc_repo
    _run(["dvc", "repro", "sample_base"], repo, env)
    metrics = json.loads((repo / "data/metrics/pretrain.json").read_text())
    assert {"loss", "single_exact", "two_exact", "steps"} <= set(metrics)
    assert 0.0 <= metrics["single_exact"] <= 1.0 and metrics["steps"] == 6
    assert (repo / "data/models/base/unet/config.json").is_file()
    index = [json.loads(line) for line in (repo / "data/samples/base/index.jsonl").read_text().splitlines()]
    assert index and all((repo / "data/samples/base" / row["path"]).is_file() for row in index)
    assert {"prompt", "task", "seed", "path"} <= set(index[0])
    status = _run(["dvc", "status", "sample_base"], repo, env)
    assert "up to date" in status.lower() or status.strip() == ""
