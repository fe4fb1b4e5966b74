"""Sweeps (pipeline/sweep.py, pipeline/sweep_table.py): the grid and its cells, errors that name the key, table
rows from given metrics, and a real two-cell sweep of DVC experiments on the smoke profile."""
from __future__ import annotations

import subprocess

import pytest

from pipeline.errors import SweepError
from pipeline.sweep import cells, experiments, main, parse_grid
from pipeline.sweep_table import COLUMNS, figure, markdown, table_rows
from tests.servers import experiments as shown_experiments
from tests.test_dvc_pipeline import dvc_repo  # noqa: F401  (a fixture: the smoke pipeline in a git + DVC repo)


def test_the_grid_expands_to_one_cell_per_combination_named_after_it():
    grid = parse_grid(["world.stream.defect_rate=0,0.3", "model.channels=[8,16,16],[16,32,32]", "rl.lr=0.0001"])
    assert grid == {"world.stream.defect_rate": ["0", "0.3"], "model.channels": ["[8,16,16]", "[16,32,32]"],
                    "rl.lr": ["0.0001"]}
    found = cells(grid, "gap")
    assert [c.name for c in found] == ["gap-defect_rate=0-channels=8_16_16-lr=0.0001",
                                       "gap-defect_rate=0-channels=16_32_32-lr=0.0001",
                                       "gap-defect_rate=0.3-channels=8_16_16-lr=0.0001",
                                       "gap-defect_rate=0.3-channels=16_32_32-lr=0.0001"]
    assert found[1].values == {"world.stream.defect_rate": "0", "model.channels": "[16,32,32]", "rl.lr": "0.0001"}
    # DVC's -S sets keys params.yaml has; Hydra's ++ adds the others
    assert found[0].overrides({"rl", "rl.lr"}) == ["++world.stream.defect_rate=0", "++model.channels=[8,16,16]",
                                                   "rl.lr=0.0001"]
    # two keys with one last part: the names spell both keys out
    assert [c.name for c in cells(parse_grid(["rl.lr=0.1", "control.lr=0.2,0.3"]), "s")] == [
        "s-rl.lr=0.1-control.lr=0.2", "s-rl.lr=0.1-control.lr=0.3"]


@pytest.mark.parametrize("items, message", [
    (["world.stream.defect_rate"], "--set 'world.stream.defect_rate': expected KEY=V1,V2"),
    (["rl.lr=1", "rl.lr=2"], "--set rl.lr: the key is given twice"),
    (["rl.lr=1,1"], "--set rl.lr: expected distinct"),
    (["rl.lr=[1,"], "--set rl.lr: DVC's -S cannot read"),
    ([], "no grid"),
])
def test_a_malformed_grid_fails_naming_the_key(items, message):
    with pytest.raises(SweepError) as caught:
        parse_grid(items)
    assert message in str(caught.value)


def test_a_bad_key_or_value_fails_naming_the_key_and_queues_nothing(dvc_repo, capsys):  # noqa: F811
    repo, _ = dvc_repo
    for grid, message in ((["world.stream.defect_rate=0,1.5"], "'world.stream.defect_rate': Input should be less than "
                                                                "or equal to 1 (got 1.5)"),
                          (["world.stream.defect_rat=0,0.3"], "unknown key 'world.stream.defect_rat'; did you mean "
                                                               "'world.stream.defect_rate'?"),
                          (["rl.lr=0.1", "rl.iterations=1,two"], "'rl.iterations': Input should be a valid integer")):
        assert main(["queue", "--cwd", str(repo), "--name", "bad", *(f"--set={item}" for item in grid)]) == 2
        assert message in capsys.readouterr().err
    assert experiments(repo) == {}  # the first cells were good: still nothing was queued


def test_table_rows_hold_the_given_numbers():
    def estimate(key, value, low, high):
        return {key: value, f"{key}_ci_low": low, f"{key}_ci_high": high}

    first = {**estimate("win_rate.rl_vs_control.pooled", 0.6124, 0.5511, 0.6703),
             **estimate("quality.rl_minus_base", -0.25, -0.5, 0.0), "diversity.rl.parity": 0.125}
    second = estimate("composition.rl_minus_control.two_exact", 0.0625, -0.0312, 0.1562)
    runs = [({"world.stream.defect_rate": 0, "rl.lr": 0.1}, first), ({"world.stream.defect_rate": 0.3}, second)]
    rows = table_rows(["world.stream.defect_rate", "rl.lr"], runs)
    column = {key: 2 + index for index, (_, key) in enumerate(COLUMNS)}
    assert rows[0][:2] == ["0", "0.1"] and rows[1][:2] == ["0.3", "null"]
    assert rows[0][column["win_rate.rl_vs_control.pooled"]] == "0.612 [0.551, 0.670]"
    assert rows[0][column["quality.rl_minus_base"]] == "-0.250 [-0.500, 0.000]"
    assert rows[0][column["diversity.rl.parity"]] == "0.125"  # no interval given: none shown
    assert rows[1][column["composition.rl_minus_control.two_exact"]] == "0.062 [-0.031, 0.156]"
    assert rows[1][column["win_rate.rl_vs_control.pooled"]] == "—"
    text = markdown("gap", ["world.stream.defect_rate", "rl.lr"], runs)
    assert "| 0 | 0.1 | 0.612 [0.551, 0.670] |" in text and text.count("\n| 0") == 2
    # the figure: numbers or categories on x, a panel per value of the other swept key
    for keys in (["world.stream.defect_rate", "rl.lr"], ["world.stream.bias_colour"]):
        png = figure(keys[0], keys, [({"world.stream.bias_colour": "red", **params}, metrics) for params, metrics in runs])
        assert png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_two_cell_sweep_of_dvc_experiments_and_its_table(dvc_repo, tmp_path):  # noqa: F811
    """Queue and run two cells of the smoke pipeline (to the evaluate stage) as DVC experiments, then build the
    table and figure from them: one row per cell, with the experiment's params and its numbers."""
    repo, _ = dvc_repo
    for key, value in (("user.name", "sweep test"), ("user.email", "sweep@example.com")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    params_before = (repo / "params.yaml").read_text()
    grid = ["--set", "world.stream.defect_rate=0,0.3", "--name", "gap", "--cwd", str(repo)]
    assert main(["queue", *grid, "--stages", "evaluate", "--run"]) == 0
    assert (repo / "params.yaml").read_text() == params_before  # the experiments ran outside the workspace

    table, png = (tmp_path / "out" / "gap").with_suffix(".md"), tmp_path / "out" / "gap.png"
    assert main(["table", *grid, "--table", str(table), "--figure", str(png)]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 0.3"]
    shown = shown_experiments(repo)  # dvc exp show: params.yaml and headline.json of each experiment
    for row, name, rate in zip(rows, ("gap-defect_rate=0", "gap-defect_rate=0.3"), (0, 0.3)):
        assert shown[name]["params"]["world"]["stream"]["defect_rate"] == rate
        headline = shown[name]["metrics"]["rl_vs_control"]
        assert row.split(" | ")[1] == f"{headline['win_rate']:.3f} [{headline['ci_low']:.3f}, {headline['ci_high']:.3f}]"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert main(["queue", *grid]) == 2  # the names are taken now
