"""The compute-matched control stage in both budget modes, and the budget file finetune hands it."""
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMOKE_PARAMS


def _params(tmp_path: Path, budget: str) -> Path:
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["control"]["budget"] = budget
    path = tmp_path / f"params.{budget}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_control(ws: Path, tmp_path: Path, budget_mode: str, budget: dict) -> dict:
    from stages import control

    (tmp_path / "budget.json").write_text(json.dumps(budget))
    control.main(["--params", str(_params(tmp_path, budget_mode)), "--base", str(ws / "base"), "--budget",
                  str(tmp_path / "budget.json"), "--out", str(tmp_path / budget_mode), "--metrics",
                  str(tmp_path / f"{budget_mode}.json"), "--checkpoints", str(tmp_path / "ck"), "--no-progress"])
    assert (tmp_path / budget_mode / "unet" / "config.json").is_file()
    return json.loads((tmp_path / f"{budget_mode}.json").read_text())


def test_unet_pass_budget_becomes_pretraining_steps(smoke_workspace, tmp_path):
    from pipeline.config import load_params
    from stages.control import control_steps

    batch = load_params(SMOKE_PARAMS).pretrain.batch_size
    budget = {"unet_passes": 3 * batch * 2 + 1, "iterations": 2, "stopped_by": "iterations"}  # no seconds needed
    metrics = _run_control(smoke_workspace, tmp_path, "unet_passes", budget)
    assert metrics["steps"] == control_steps(budget, batch) == 3
    assert metrics["unet_passes"] >= budget["unet_passes"] and metrics["budget"] == "unet_passes"


def test_wall_time_budget_stops_on_the_clock(smoke_workspace, tmp_path):
    from pipeline.config import load_params
    from stages.control import control_steps

    batch = load_params(SMOKE_PARAMS).pretrain.batch_size
    budget = {"unet_passes": 10**9, "seconds": 0.5, "iterations": 1, "stopped_by": "iterations"}
    metrics = _run_control(smoke_workspace, tmp_path, "wall_time", budget)
    assert 1 <= metrics["steps"] < control_steps(budget, batch)
    assert metrics["budget"] == "wall_time"


def test_wall_time_budget_without_seconds_names_the_key(tmp_path):
    from pipeline.errors import DataFileError
    from stages.control import read_budget

    path = tmp_path / "budget.json"
    path.write_text(json.dumps({"unet_passes": 12}))
    assert read_budget(path)["unet_passes"] == 12
    with pytest.raises(DataFileError, match=r"'seconds'.*control.budget is wall_time"):
        read_budget(path, wall_time=True)


def test_finetune_writes_the_seconds_only_for_a_wall_time_control():
    """The seconds differ on every run; in the pass-matched default they would re-run the control
    after every finetune even when its budget is unchanged."""
    from pipeline.rl.trainer import TrainerState
    from stages.finetune import budget_record

    state = TrainerState(iteration=3, unet_passes=900, seconds=12.5)
    timing = {"seconds": 12.5, "stopped_by": "iterations"}
    assert budget_record(state, timing, "unet_passes") == {"unet_passes": 900, "iterations": 3,
                                                           "stopped_by": "iterations"}
    assert budget_record(state, timing, "wall_time")["seconds"] == 12.5
