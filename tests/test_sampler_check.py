"""The sampler check: `sampling.check_eta` validated, the sample stage's `check/` set (the preference eval
prompts and seeds under the other sampler), its panel win rates in eval.json and its line in the report."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from pipeline.config import load_params
from pipeline.errors import DataFileError
from pipeline.samples import CHECK, load_check, read_samples, write_samples
from tests.conftest import SMOKE_PARAMS
from tests.test_config import _error, _write
from tests.test_evaluation import eval_rows, renders, run_evaluate

MODELS = ("base", "control", "rl")


# -- params ----------------------------------------------------------------------------------------
def test_check_eta_defaults_to_one_and_null_turns_it_off(tmp_path):
    assert load_params(SMOKE_PARAMS).sampling.check_eta == 1.0
    off = _write(tmp_path, lambda raw: raw["sampling"].update(check_eta=None))
    assert load_params(off).sampling.check_eta is None


@pytest.mark.parametrize("value, expected", [(1.5, "less than or equal to 1"), (-0.1, "greater than or equal to 0"),
                                             ("stochastic", "valid number"), (True, "got a boolean")])
def test_check_eta_outside_zero_to_one_or_not_a_number_is_refused(tmp_path, value, expected):
    message = _error(tmp_path, lambda raw: raw["sampling"].update(check_eta=value))
    assert "'sampling.check_eta'" in message and expected in message


def test_check_eta_equal_to_the_evaluations_eta_is_refused_naming_the_key(tmp_path):
    message = _error(tmp_path, lambda raw: raw["sampling"].update(eta=0.5, check_eta=0.5))
    assert "'sampling.check_eta' is 0.5," in message and "'sampling.eta'" in message and "null" in message
    message = _error(tmp_path, lambda raw: raw["sampling"].update(eta=1.0))  # beside the default check_eta
    assert "'sampling.check_eta' is 1.0 (the default)" in message


# -- the sample stage ------------------------------------------------------------------------------
def _sample(workspace, out, params=SMOKE_PARAMS) -> None:
    from stages import sample

    sample.main(["--params", str(params), "--model", str(workspace / "base"), "--prompts",
                 str(workspace / "prompts"), "--out", str(out), "--no-progress"])


def test_sample_stage_writes_the_preference_prompts_and_seeds_again_under_the_other_sampler(smoke_workspace,
                                                                                              tmp_path):
    out = tmp_path / "on" / "base"
    _sample(smoke_workspace, out)
    rows, images = read_samples(out)
    check_rows, check_images = read_samples(out / CHECK)
    preference = [i for i, row in enumerate(rows) if row["task"] == "preference"]
    same = ("task", "prompt", "spec", "prompt_index", "seed", "noise_seed")
    assert preference and [{k: r[k] for k in same} for r in check_rows] == [{k: rows[i][k] for k in same}
                                                                           for i in preference]
    assert {row["eta"] for row in check_rows} == {1.0} and all(row["path"].startswith("preference/")
                                                                for row in check_rows)
    assert check_images.shape == images[preference].shape
    assert all((a != b).any() for a, b in zip(check_images, images[preference]))  # eta 1 is another sampler

    off = tmp_path / "off" / "base"
    _sample(smoke_workspace, off, _write(tmp_path, lambda raw: raw["sampling"].update(check_eta=None)))
    assert not (off / CHECK).exists()
    off_rows, off_images = read_samples(off)
    assert off_rows == rows and np.array_equal(off_images, images)  # the main set is the same either way


# -- evaluation and the report ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """Rendered sample sets (base half blank, RL and control clean and identical) with check/ sets of the
    preference rows, evaluated with and without those sets (no learned judge: it plays no part here)."""
    root = tmp_path_factory.mktemp("sampler_check")
    rows = eval_rows(load_params(SMOKE_PARAMS))
    check = [{**row, "eta": 1.0} for row in rows if row["task"] == "preference"]
    for model in MODELS:
        corrupt = model == "base"
        write_samples(root / "samples" / model, rows, renders(rows, corrupt), (check, renders(check, corrupt)))
    shutil.copytree(root / "samples", root / "unchecked", ignore=shutil.ignore_patterns(CHECK))
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no reward model: learned-judge keys omitted
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        metrics = run_evaluate(root, root / "samples", "", name="checked")
        unchecked = run_evaluate(root, root / "unchecked", "", name="unchecked")
    return root, metrics, unchecked


def test_evaluate_writes_rls_panel_win_rates_on_the_check_samples(checked):
    root, m, _ = checked
    assert m["sampler_check.eta"] == 1.0
    keys = sorted(k for k in m if k.startswith("sampler_check.win_rate."))
    assert keys == sorted(f"sampler_check.win_rate.{c}.preference{end}" for c in ("rl_vs_base", "rl_vs_control")
                          for end in ("", "_ci_low", "_ci_high"))
    for comparison in ("rl_vs_base", "rl_vs_control"):
        key = f"sampler_check.win_rate.{comparison}.preference"
        assert 0.0 <= m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"] <= 1.0, key
    assert m["sampler_check.win_rate.rl_vs_control.preference"] == 0.5  # identical sets tie
    assert m["sampler_check.win_rate.rl_vs_base.preference"] > 0.5  # beside a half-blank base
    plotted = [(root / f"plots_{name}" / "win_rate.csv").read_text() for name in ("checked", "unchecked")]
    assert plotted[0] == plotted[1]  # the plot table stays the main evaluation's


def test_evaluate_omits_the_check_without_its_folders_and_changes_nothing_else(checked):
    _, m, unchecked = checked
    assert not [k for k in unchecked if k.startswith("sampler_check")]
    assert unchecked == {k: v for k, v in m.items() if not k.startswith("sampler_check.")}


def test_a_check_set_some_models_lack_or_of_another_eta_is_not_compared(checked, tmp_path):
    root, _, _ = checked
    shutil.copytree(root / "samples", tmp_path / "samples")
    rows, images = read_samples(tmp_path / "samples" / "rl" / CHECK)
    write_samples(tmp_path / "samples" / "rl" / CHECK, [{**row, "eta": 0.5} for row in rows], torch.from_numpy(images))
    with pytest.raises(DataFileError, match="expected one eta"):
        load_check(tmp_path / "samples", MODELS)
    shutil.rmtree(tmp_path / "samples" / "control" / CHECK)
    with pytest.warns(RuntimeWarning, match="sampler check"):
        assert load_check(tmp_path / "samples", MODELS) is None


def test_the_report_states_the_sampler_check_beside_the_win_rates(checked):
    from pipeline.report import ReportInputs, build_document
    from pipeline.report.document import to_markdown

    _, m, unchecked = checked
    wins = to_markdown(build_document(ReportInputs(eval_metrics=m))).split("## Win rates")[1].split("\n## ")[0]
    key = "sampler_check.win_rate.rl_vs_base.preference"
    assert (f"Sampler check (eta 1): RL vs base {m[key]:.3f} [{m[key + '_ci_low']:.3f}, {m[key + '_ci_high']:.3f}], "
            "RL vs control 0.500") in wins
    assert "Sampler check" not in to_markdown(build_document(ReportInputs(eval_metrics=unchecked)))
