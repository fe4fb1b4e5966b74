"""Test environment: offline hubs, 1 thread, local tracking stores, no analytics."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import pipeline  # noqa: E402,F401

torch.set_num_threads(1)
SMOKE_PARAMS = Path(__file__).parent / "params.smoke.yaml"


# The checkout's own tracking store, runs and buffer: the user's, which the suite must never write to.
CHECKOUT_TRACKING = (pipeline.PROJECT_ROOT / "mlflow.db", pipeline.PROJECT_ROOT / "mlruns",
                     pipeline.PROJECT_ROOT / ".cache" / "mlflow-buffer")


def tracking_fingerprint() -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file of the checkout's tracking store, runs and buffer."""
    files = []
    for root in CHECKOUT_TRACKING:
        found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        files += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in found]
    return files


CHECKOUT_AT_START = tracking_fingerprint()
SESSION_TRACKING: dict[str, str] = {}  # the session store's URI, once _session_tracking has set it


@pytest.fixture(scope="session", autouse=True)
def _session_tracking(tmp_path_factory):
    """Before any other fixture (session-scoped fixtures like smoke_workspace run stages too): tracking
    goes to a store of the session's own, never the checkout's mlflow.db."""
    SESSION_TRACKING["uri"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow-session') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", SESSION_TRACKING["uri"])
        mp.setenv("PIPELINE_MLFLOW_BUFFER", str(tmp_path_factory.mktemp("buffer-session")))
        yield


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path_factory, monkeypatch):
    """Every test logs to its own SQLite MLflow store unless it sets MLFLOW_TRACKING_URI itself."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("PIPELINE_MLFLOW_BUFFER", str(tmp_path_factory.mktemp("buffer")))


def pytest_sessionfinish(session, exitstatus):
    """The suite as a whole leaves the checkout's tracking store alone (tests/test_tracking.py checks it
    within the session too): a change fails the run."""
    if tracking_fingerprint() != CHECKOUT_AT_START:
        print("\nerror: the checkout's MLflow store (mlflow.db, mlruns/ or .cache/mlflow-buffer) changed during the "
              "test suite: a test wrote to it (or another process did meanwhile)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def task_trainer(model, params, reward: str | None = None):
    """An RLTrainer on params.rl.tasks[0] (its reward, or `reward`) over its corpus's train prompts,
    built in memory: no prompt files, no stage."""
    from pipeline.prompts import build_corpus
    from pipeline.rewards.registry import build_reward
    from pipeline.rl.run import build_trainer
    from pipeline.rl.trainer import TaskRuntime

    task = params.rl.tasks[0]
    records = build_corpus(task.prompts, params.prompts, params.seed).train
    runtime = TaskRuntime(task, build_reward(reward or task.reward), records)
    return build_trainer(model, params, [runtime])


def checkpoint_stamp(folder, name: str | None = None) -> tuple[str, int, int]:
    """(name, inode, mtime) of checkpoint `name` (default: the newest) under `folder`. A run that
    resumes leaves the newest one in place; a run that ignored its checkpoints and started over
    would have rewritten it. (Training is deterministic, so equal final weights alone cannot tell
    the two apart.)"""
    found = sorted(Path(folder).rglob("step-*.pt" if name is None else name), key=lambda p: p.name)
    stat = found[-1].stat()
    return found[-1].name, stat.st_ino, stat.st_mtime_ns


@pytest.fixture
def smoke_params():
    from pipeline.config import load_params

    return load_params(SMOKE_PARAMS)


@pytest.fixture(scope="session")
def tiny_model_factory():
    def make(resolution: int = 24, prediction_type: str = "v_prediction", seed: int = 0):
        from pipeline.models.tiny import TinyText2Image
        from pipeline.world.vocab import vocabulary

        torch.manual_seed(seed)
        return TinyText2Image.from_config(words=vocabulary(), resolution=resolution, channels=(8, 16, 16),
                                          text_dim=16, text_layers=1, heads=2, prediction_type=prediction_type).eval()

    return make


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory):
    """Prompts and a smoke-pretrained base model, built once per session by the real stages."""
    from stages import pretrain as pretrain_stage
    from stages import prompts as prompts_stage

    root = tmp_path_factory.mktemp("smoke")
    prompts_stage.main(["--params", str(SMOKE_PARAMS), "--out", str(root / "prompts")])
    pretrain_stage.main(["--params", str(SMOKE_PARAMS), "--prompts", str(root / "prompts"), "--out",
                         str(root / "base"), "--metrics", str(root / "pretrain.json"), "--checkpoints",
                         str(root / "checkpoints"), "--no-progress"])
    return root
