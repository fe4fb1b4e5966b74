"""Sweeps (pipeline/sweep.py, pipeline/sweep_table.py): the grid and its cells, errors that name the key, table
rows from given metrics, and a real two-cell sweep of DVC experiments on the smoke profile."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import SweepError
from pipeline.sweep import experiments, main, validate
from pipeline.sweep_cells import cells, hydra_text, parse_grid, parse_value, read_cells
from pipeline.sweep_table import COLUMNS, figure, markdown, table_rows, task_gain_tables
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
])
def test_a_malformed_grid_fails_naming_the_key(items, message):
    with pytest.raises(SweepError) as caught:
        parse_grid(items)
    assert message in str(caught.value)


def test_no_grid_and_no_cells_is_an_error():
    with pytest.raises(SweepError, match="no grid: give at least one --set KEY=V1,V2,... or --cells FILE"):
        cells(parse_grid([]), "s")


@pytest.mark.parametrize("value", [None, True, False, 0, 2, 0.3, 5e-05, float("inf"), "red", "null", "true", "1.5",
                                   "it's a circle", "a b", [], [1, 2], {"a": None},
                                   [{"name": "single", "reward_options": {"count": True}, "weight": 0.5}]])
def test_a_yaml_value_written_for_dvc_reads_back_equal(value):
    assert parse_value("rl.tasks", hydra_text(value)) == value


def test_a_backslash_is_refused_rather_than_misread():
    with pytest.raises(SweepError, match="backslash"):
        hydra_text("a\\b")


def test_named_cells_from_a_file_with_common_settings_and_a_grid(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text(textwrap.dedent("""\
        common: {rl.algorithm: ppo, rl.eta: 1.0}
        cells:
          alone:
            rl.tasks: [&a {name: preference, reward: preference, prompts: preference}]
          joint:
            rl.eta: 0.5
            rl.tasks: [*a, {name: diversity, reward: diversity, prompts: diversity, advantage: batch}]
        """))
    named = read_cells(path)
    assert named["alone"] == {"rl.algorithm": "ppo", "rl.eta": "1.0",
                              "rl.tasks": "[{name:preference,reward:preference,prompts:preference}]"}
    assert named["joint"]["rl.eta"] == "0.5"  # a cell's own value wins over common
    found = cells(parse_grid(["rl.lr=0.1,0.2"]), "t5", named)
    assert [c.name for c in found] == ["t5-alone-lr=0.1", "t5-alone-lr=0.2", "t5-joint-lr=0.1", "t5-joint-lr=0.2"]
    assert found[3].variant == "joint" and found[3].values["rl.lr"] == "0.2"
    assert found[3].label().startswith("cell joint, rl.algorithm=ppo")
    assert parse_value("rl.tasks", found[2].values["rl.tasks"])[1] == {
        "name": "diversity", "reward": "diversity", "prompts": "diversity", "advantage": "batch"}


@pytest.mark.parametrize("text, message", [
    ("cells: []\n", "expected the keys 'cells'"),
    ("cells: {a: {}}\nshared: {}\n", "unknown: shared"),
    ("cells: {a: {rl lr: 1}}\n", "cell a: expected a mapping of dotted params keys"),
    ("cells: {'bad name': {}}\n", "cell name 'bad name'"),
    ("common: [1]\ncells: {a: {}}\n", "common: expected a mapping"),
    ("cells: {a: {rl.lr: [1\n", "not valid YAML"),
])
def test_a_malformed_cells_file_fails_naming_the_file_and_the_fault(tmp_path, text, message):
    path = tmp_path / "cells.yaml"
    path.write_text(text)
    with pytest.raises(SweepError) as caught:
        read_cells(path)
    assert str(path) in str(caught.value) and message in str(caught.value)
    with pytest.raises(SweepError, match="file not found"):
        read_cells(tmp_path / "missing.yaml")


def test_the_project_sweep_files_are_valid_cells():
    """Each cell of sweeps/*.yaml, written into the project's params.yaml by DVC's own -S, passes the schema."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        validate(root, cells({}, path.stem, read_cells(path)))  # raises naming the cell and key if out of schema


def test_table5_sets_each_task_gain_alone_beside_its_gain_jointly():
    def estimate(key, value, low, high):
        return {key: value, f"{key}_ci_low": low, f"{key}_ci_high": high}

    def tasks(*names):
        return {f"rl.tasks.{i}.{field}": name for i, name in enumerate(names) for field in ("name", "prompts")}

    joint = ({**tasks("preference", "composition", "diversity"), "rl.lr": 1e-4, "cell": "joint"},
             {**estimate("win_rate.rl_vs_base.preference", 0.60, 0.55, 0.65),
              **estimate("composition.rl_minus_base.two_exact", 0.02, -0.01, 0.05),
              "diversity.base.parity": 0.40, "diversity.rl.parity": 0.25,
              **estimate("reward.preference.rl_minus_base", 0.2, 0.1, 0.3)})
    alone = [({**tasks("preference"), "rl.lr": 1e-4, "cell": "preference"},
              {**estimate("win_rate.rl_vs_base.preference", 0.625, 0.55, 0.70),
               **estimate("reward.preference.rl_minus_base", 0.4, 0.2, 0.6)}),
             ({**tasks("composition"), "rl.lr": 1e-4}, estimate("composition.rl_minus_base.two_exact", -0.01, -0.04, 0.02)),
             ({**tasks("diversity"), "rl.lr": 1e-4}, {"diversity.base.parity": 0.40, "diversity.rl.parity": 0.20}),
             ({**tasks("diversity"), "rl.lr": 5e-5}, {"diversity.base.parity": 0.4, "diversity.rl.parity": 0.0})]
    (label, table), = task_gain_tables([*alone, joint])  # the lr 5e-5 run is of another setting: not compared
    assert label == "joint" and [row[0] for row in table.rows] == ["preference", "composition", "diversity"]
    preference, composition, diversity = table.rows
    assert preference[2:5] == ["+0.125 [+0.050, +0.200]", "+0.100 [+0.050, +0.150]", "0.80 (meets 0.8)"]
    assert preference[5:] == ["+0.400 [+0.200, +0.600]", "+0.200 [+0.100, +0.300]", "0.50 (below 0.8)"]
    # a single-task gain whose interval reaches zero gives no share
    alone[0][1]["reward.preference.rl_minus_base_ci_low"] = -0.01
    assert task_gain_tables([*alone, joint])[0][1].rows[0][7] == "— (no single-task gain above zero)"
    assert composition[4] == "— (no single-task gain above zero)"
    assert diversity[2:5] == ["+0.200", "+0.150", "0.75 (below 0.8)"]
    assert task_gain_tables(alone) == []  # no joint run: no Table 5
    assert "Joint vs single-task training: joint (the paper's Table 5)" in markdown("t5", ["cell"], [*alone, joint])


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


@pytest.mark.slow
def test_named_cells_run_as_dvc_experiments_and_give_table5(dvc_repo, tmp_path):  # noqa: F811
    """A --cells file (a single-task and a joint cell), run to the evaluate stage as DVC experiments: the table has a row per cell and the Table 5 section sets the task's gain alone beside jointly,
    each equal to its experiment's eval.json."""
    import json

    import dvc.api

    repo, _ = dvc_repo
    for key, value in (("user.name", "sweep test"), ("user.email", "sweep@example.com")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    task = "{name: composition, reward: composition, prompts: composition, samples_per_prompt: 2, " \
           "prompts_per_iteration: 2, advantage: group}"
    (tmp_path / "t5.yaml").write_text(f"cells:\n  alone: {{rl.tasks: [{task}]}}\n  joint: {{rl.tasks: [{task}, "
                                      "{name: diversity, reward: diversity, prompts: diversity, "
                                      "samples_per_prompt: 2, prompts_per_iteration: 2, advantage: batch}]}\n")
    args = ["--cells", str(tmp_path / "t5.yaml"), "--name", "t5", "--cwd", str(repo)]
    assert main(["queue", *args, "--stages", "evaluate", "--run"]) == 0
    table = (tmp_path / "t5" / "table").with_suffix(".md")
    page = (tmp_path / "t5" / "report").with_suffix(".html")
    assert main(["table", *args, "--table", str(table), "--figure", str(tmp_path / "t5" / "t5.png"),
                 "--html", str(page)]) == 0
    text = table.read_text()
    assert "](t5.png)" in text  # the figure beside the table, by file name
    html = page.read_text()
    assert "data:image/png;base64," in html and "(the paper&#x27;s Table 5)" in html and "<td>joint</td>" in html
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith(("| alone", "| joint"))] == [
        "| alone", "| joint"]
    found = experiments(repo)
    evals = {cell: json.loads(dvc.api.read("data/metrics/eval.json", repo=str(repo), rev=found[f"t5-{cell}"].rev))
             for cell in ("alone", "joint")}
    assert "reward.diversity.rl_minus_base" in evals["joint"] and "reward.diversity.rl_minus_base" not in evals["alone"]
    section = text.split("(the paper's Table 5)")[1]
    composition = next(line for line in section.splitlines() if line.startswith("| composition"))
    gains = [evals[cell]["composition.rl_minus_base.two_exact"] for cell in ("alone", "joint")]
    assert composition.split(" | ")[2].split(" ")[0] == f"{gains[0]:+.3f}"
    assert composition.split(" | ")[3].split(" ")[0] == f"{gains[1]:+.3f}"
    diversity = next(line for line in section.splitlines() if line.startswith("| diversity"))
    assert diversity.split(" | ")[2] == "—"  # no single-task diversity cell in this sweep
