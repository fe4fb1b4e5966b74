"""Checkpoints load no code, fall back to an older usable one, keep the newest `checkpoint_keep`, clean up
after interrupted writes, and survive a SIGKILL inside a checkpoint write."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.checkpoints import list_checkpoints, resume, save_checkpoint
from pipeline.errors import CheckpointError
from tests.conftest import SMOKE_PARAMS

ROOT = Path(__file__).resolve().parent.parent


class Planted:
    """Unpickled, this runs a shell command that writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo planted > '{self.marker}'",)


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"checkpoint": {"kind": "pretrain", "step": 4, "format": 2}, "model": Planted(marker)}, path)


def test_a_planted_pickle_runs_no_code_and_the_run_falls_back_or_names_it(tmp_path):
    marker, folder = tmp_path / "code-ran", tmp_path / "ck"
    _plant(folder / "step-000004.pt", marker)
    torch.load(folder / "step-000004.pt", weights_only=False)  # what the old loader did: the plant is real
    assert marker.read_text() == "planted\n"
    marker.unlink()

    with pytest.raises(CheckpointError, match=r"step-000004\.pt: corrupt checkpoint \(UnpicklingError"):
        resume(folder, "pretrain", lambda state: None)
    assert not marker.exists()

    save_checkpoint(folder, 2, {"weights": torch.ones(3)}, kind="pretrain", keep=5)  # an older, valid one
    restored = []
    with pytest.warns(RuntimeWarning, match=r"step-000004\.pt: corrupt checkpoint.*resumed from the older"):
        assert resume(folder, "pretrain", restored.append) == 2
    assert torch.equal(restored[0]["weights"], torch.ones(3)) and not marker.exists()


@pytest.mark.parametrize("spoil", ["truncated", "renamed", "other-kind", "rejected"])
def test_an_unusable_newest_checkpoint_falls_back_to_the_older_one(tmp_path, spoil):
    folder = tmp_path / "ck"
    for step in (2, 4):
        save_checkpoint(folder, step, {"weights": torch.full((2,), float(step))}, kind="finetune", keep=5)
    newest = folder / "step-000004.pt"
    if spoil == "truncated":
        newest.write_bytes(newest.read_bytes()[:100])
    elif spoil == "renamed":  # a step-2 checkpoint under the name of step 4
        newest.write_bytes((folder / "step-000002.pt").read_bytes())
    elif spoil == "other-kind":
        save_checkpoint(folder, 4, {"weights": torch.zeros(2)}, kind="pretrain", keep=5)

    def restore(state):
        if spoil == "rejected" and state["weights"][0] == 4:
            raise RuntimeError("size mismatch for weights")
        restored.append(state["weights"][0].item())

    restored = []
    with pytest.warns(RuntimeWarning, match=r"step-000004\.pt: .*resumed from the older .*step-000002\.pt"):
        assert resume(folder, "finetune", restore) == 2
    assert restored == [2.0]
    assert newest.exists()  # never deleted: the user decides


def test_each_run_keeps_its_newest_checkpoints_and_stale_temporaries_go(tmp_path):
    folder = tmp_path / "ck"
    for step in range(1, 6):
        save_checkpoint(folder, step, {"step": step}, kind="pretrain", keep=3)
    assert [step for step, _ in list_checkpoints(folder)] == [3, 4, 5]
    stale = folder / ".step-000006.pt.k1ll3d"
    stale.mkdir()
    (stale / "step-000006.pt").write_bytes(b"half a checkpoint")
    (folder / ".keep-me").write_text("not a checkpoint temporary")
    assert resume(folder, "pretrain", lambda state: None) == 5
    assert sorted(p.name for p in folder.iterdir()) == [".keep-me", "step-000003.pt", "step-000004.pt",
                                                        "step-000005.pt"]


def test_pretraining_resumes_from_the_older_checkpoint_when_the_newest_is_corrupt(tiny_model_factory, tmp_path):
    from pipeline.pretraining import pretrain
    from pipeline.world.stream import SceneStream

    def run(checkpoints):
        torch.manual_seed(0)
        return pretrain(tiny_model_factory(seed=0).train(), SceneStream(3), steps=6, batch_size=4, lr=1e-3,
                        warmup_steps=1, weight_decay=0.0, ema_decay=0.0, caption_dropout=0.1, seed=0,
                        checkpoint_dir=checkpoints, checkpoint_every=2, log_every=3, progress=False)

    straight = run(None)
    run(tmp_path / "ck")  # leaves checkpoints at steps 2 and 4
    newest = tmp_path / "ck" / "step-000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match=r"step-000004\.pt: corrupt checkpoint.*resumed from the older"):
        resumed = run(tmp_path / "ck")
    assert resumed.losses == straight.losses
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# Runs stages.pretrain and SIGKILLs itself half-way through writing the step-6 checkpoint: after half
# of its bytes reached the temporary file (deterministic, unlike a timer).
KILL_IN_CHECKPOINT_WRITE = """
import io, os, signal, sys
import torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("checkpoint", {}).get("step") == 6:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        with open(f, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from stages.pretrain import main
main(sys.argv[1:])
"""


def test_pretrain_killed_inside_a_checkpoint_write_resumes_to_the_same_model(smoke_workspace, tmp_path):
    from stages import pretrain as pretrain_stage

    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["pretrain"].update(steps=9, checkpoint_every=3)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    def argv(name: str) -> list[str]:
        return ["--params", str(params), "--prompts", str(smoke_workspace / "prompts"), "--out",
                str(tmp_path / name / "base"), "--metrics", str(tmp_path / name / "pretrain.json"),
                "--checkpoints", str(tmp_path / name / "checkpoints"), "--no-progress"]

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "PIPELINE_MLFLOW_BUFFER": str(tmp_path / "buf")}
    killed = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT_WRITE, *argv("killed")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (folder,) = (tmp_path / "killed" / "checkpoints").glob("pretrain-*")
    names = sorted(p.name for p in folder.iterdir())
    assert names[0].startswith(".step-000006.pt.") and names[1:] == ["step-000003.pt"], names
    assert not (tmp_path / "killed" / "base").exists()

    pretrain_stage.main(argv("killed"))  # resumes from step 3; the half-written temporary is removed
    assert not any(p.name.startswith(".") for p in folder.iterdir())
    assert [step for step, _ in list_checkpoints(folder)] == [3, 6]
    pretrain_stage.main(argv("straight"))
    for part in ("unet", "text_encoder"):
        (weights,) = (tmp_path / "straight" / "base" / part).glob("*.safetensors")
        a, b = load_file(weights), load_file(tmp_path / "killed" / "base" / part / weights.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_hold_only_what_weights_only_loading_reads(tmp_path):
    """The global RNG states are stored as tensors and plain containers, and restore exactly."""
    import random

    import numpy as np

    from pipeline.checkpoints import restore_rng_state, rng_state

    np.random.seed(5)
    random.seed(5)
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = (np.random.rand(), random.random(), torch.rand(1))
    buffer.seek(0)
    restore_rng_state(torch.load(buffer, weights_only=True))
    assert (np.random.rand(), random.random(), torch.rand(1)) == expected
