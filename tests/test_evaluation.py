"""Evaluation metrics on constructed cases, and the `evaluate` stage end to end on rendered sample sets."""
from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation import judges
from pipeline.evaluation.metrics import (attribute_balance, bootstrap_mean, max_parity, mean_pairwise_distance,
                                         win_outcomes, win_rate)
from tests.conftest import SMOKE_PARAMS

SEEDS = (0, 1)
DIVERSITY_SEEDS = 4


# -- sample sets from world renders (not a diffusion model) ---------------------------------------
def eval_rows(params) -> list[dict]:
    """The stage's eval rows for the smoke corpora, with 2 seeds (4 for diversity prompts)."""
    from pipeline.prompts import build_corpus
    from pipeline.corpora import EVAL_CORPORA
    from pipeline.eval_sets import noise_seed

    rows = []
    for task in EVAL_CORPORA:
        records = build_corpus(task, params.prompts, params.seed).eval
        for index, record in enumerate(records):
            for seed in range(DIVERSITY_SEEDS) if task == "diversity" else SEEDS:
                rows.append({"task": task, "prompt": record["prompt"], "spec": record["spec"],
                             "unseen": record["unseen"], "prompt_index": index, "seed": seed,
                             "noise_seed": noise_seed(record["prompt"], seed)})
    return rows


def renders(rows: list[dict], corrupt: bool = False) -> torch.Tensor:
    """A scene satisfying each row's spec, drawn from its noise seed; `corrupt`: about half of them blank."""
    from pipeline.world import PromptSpec, render, sample_scene
    from pipeline.world.vocab import BACKGROUND

    images = []
    for row in rows:
        scene = sample_scene(np.random.default_rng(row["noise_seed"]), PromptSpec.from_dict(row["spec"]))
        image = render(scene, 24)
        if corrupt and np.random.default_rng([row["noise_seed"], 1]).random() < 0.5:
            image = np.full_like(image, BACKGROUND)
        images.append(image)
    return torch.from_numpy(np.stack(images))


def build_samples(root: Path, params, control: bool = True) -> Path:
    """`root/samples/{base,control,rl}`: RL and control are clean renders (identical), base is corrupted."""
    from pipeline.samples import write_samples

    rows = eval_rows(params)
    clean = renders(rows)
    write_samples(root / "samples" / "base", rows, renders(rows, corrupt=True))
    write_samples(root / "samples" / "rl", rows, clean)
    if control:
        write_samples(root / "samples" / "control", rows, clean)
    return root / "samples"


def build_reward_model(folder: Path) -> Path:
    """A tiny, untrained preference model saved where the stage expects the learned judge."""
    from pipeline.rewards.preference import PreferenceModel

    torch.manual_seed(0)
    PreferenceModel(channels=(4, 8), embed_dim=8, hidden=8).save_pretrained(folder)
    return folder


def run_evaluate(root: Path, samples: Path, reward: Path | str, name: str = "eval") -> dict:
    from stages import evaluate

    metrics = root / f"{name}.json"
    evaluate.main(["--params", str(SMOKE_PARAMS), "--samples", str(samples), "--reward-model", str(reward),
                   "--metrics", str(metrics), "--plots", str(root / f"plots_{name}"), "--no-progress"])
    return json.loads(metrics.read_text())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from pipeline.config import load_params

    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        samples = build_samples(root, load_params(SMOKE_PARAMS))
        metrics = run_evaluate(root, samples, build_reward_model(root / "reward"))
        yield root, samples, metrics


# -- metrics on constructed cases ----------------------------------------------------------------
def test_identical_sample_sets_win_half_by_both_judges():
    from pipeline.config import load_params

    params = load_params(SMOKE_PARAMS)
    rows = eval_rows(params)[:12]
    images = renders(rows).numpy()
    specs = [r["spec"] for r in rows]
    outcomes = judges.panel_outcomes(judges.judge_panel(params), images, images, specs, seed=1)
    assert np.all(outcomes == 0.5)
    assert win_rate(outcomes, resamples=50).value == 0.5
    scores = np.random.default_rng(0).normal(size=12)
    assert win_rate(win_outcomes(scores, scores), resamples=50) == win_rate(np.full(12, 0.5), resamples=50)


def test_a_learned_judge_equal_to_the_panels_utility_shows_no_over_optimisation():
    """The gap compares the learned verdict with the panel's noise-free one. Against a noisy rater's
    choice (the old definition) this perfect judge showed a gap, since rater noise pulls that win
    rate towards 0.5."""
    from pipeline.config import load_params
    from pipeline.evaluation.compare import Evaluation, add_win_rates
    from pipeline.samples import Aligned
    from pipeline.world.attributes import spec_of

    params = load_params(SMOKE_PARAMS)
    noisy = params.reward_model.model_copy(update={"rater_noise": 10.0})  # raters who often choose at random
    params = params.model_copy(update={"reward_model": noisy})
    rows = eval_rows(params)[:24]
    clean, corrupt = renders(rows).numpy(), renders(rows, corrupt=True).numpy()
    panel = judges.judge_panel(params)

    def utility_judge(images, prompts, metadata):
        return panel.utility(images, [spec_of(p, r) for p, r in zip(prompts, metadata)])

    ev = Evaluation(params)
    add_win_rates(ev, Aligned(rows, {"base": corrupt, "rl": clean}), panel, utility_judge)
    m = ev.metrics
    assert m["overopt_gap.rl_vs_base"] == 0.0 and m["overopt_gap.rl_vs_base_ci_high"] == 0.0
    assert m["win_rate_noise_free.rl_vs_base"] == m["win_rate_learned.rl_vs_base.pooled"] > 0.5
    assert m["win_rate.rl_vs_base.pooled"] < m["win_rate_learned.rl_vs_base.pooled"]  # the rater's noise


def test_a_set_that_always_wins_has_win_rate_one():
    est = win_rate(win_outcomes([3.0, 2.0, 5.0, 1.0], [1.0, 0.0, 4.0, 0.5]), resamples=100)
    assert (est.value, est.low, est.high) == (1.0, 1.0, 1.0)
    assert win_rate(win_outcomes([0.0, 1.0], [1.0, 1.0]), resamples=10).value == 0.25  # a loss and a tie
    with pytest.raises(ValueError, match="1 non-finite score"):  # not silently a tie
        win_outcomes([0.0, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError):
        win_rate([1.5])


def test_parity_is_zero_for_uniform_and_maximal_for_a_collapsed_attribute():
    colours = ["red", "green", "blue", "yellow"]
    parity, entropy = attribute_balance(colours * 3, "colour")
    assert parity == pytest.approx(0.0) and entropy == pytest.approx(1.0)
    parity, entropy = attribute_balance(["red"] * 12, "colour")
    assert parity == pytest.approx(max_parity(4)) == pytest.approx(0.75) and entropy == 0.0
    assert attribute_balance(["circle", "square"] * 2, "shape")[0] > 0  # triangles missing


def test_bootstrap_interval_covers_the_truth_on_simulated_bernoulli_data():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        est = win_rate(rng.random(100) < 0.7, resamples=200, seed=trial)
        covered += est.low <= 0.7 <= est.high
        assert est.low <= est.value <= est.high
    assert covered >= 90


def test_cluster_bootstrap_resamples_prompts_not_samples():
    # Two prompts, 50 identical outcomes each: the prompt is the unit, so the interval spans both extremes.
    values = np.r_[np.zeros(50), np.ones(50)]
    clustered = bootstrap_mean(values, ["a"] * 50 + ["b"] * 50, resamples=200, seed=0)
    independent = bootstrap_mean(values, None, resamples=200, seed=0)
    assert clustered.value == independent.value == 0.5
    assert clustered.high - clustered.low > 2 * (independent.high - independent.low)
    gap = bootstrap_mean(np.stack([values, values], 1), None, resamples=50, contrast=(1.0, -1.0))
    assert (gap.value, gap.low, gap.high) == (0.0, 0.0, 0.0)


def test_pairwise_distance_and_judge_seed():
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    assert mean_pairwise_distance(np.concatenate([black, black])) == 0.0
    assert mean_pairwise_distance(np.concatenate([black, white, white])) == pytest.approx(2 / 3)
    from pipeline.world.panel import PANEL_SEED, label_seed

    for seed in (0, 1, PANEL_SEED - judges.JUDGE_SEED_OFFSET):
        assert judges.judge_seed(seed) not in (PANEL_SEED, label_seed(seed))


def test_attribute_errors_name_what_a_hacked_image_gets_wrong():
    from pipeline.evaluation.accuracy import attribute_errors
    from pipeline.world import PromptSpec
    from pipeline.world.detect import DetectedObject

    def drawn(colour, shape, size):
        return DetectedObject(colour, shape, size, (0, 0, 8, 8), 4.0, 4.0, 64)

    small_red_circle = PromptSpec.from_dict({"objects": [{"colour": "red", "shape": "circle", "size": "small"}],
                                             "relation": None})
    red_shape = PromptSpec.from_dict({"objects": [{"colour": "red", "shape": None, "size": None}], "relation": None})
    assert attribute_errors([drawn("red", "circle", "small")], small_red_circle) == {
        "extra_objects": 0.0, "wrong_colour": 0.0, "wrong_shape": 0.0, "wrong_size": 0.0}
    assert attribute_errors([drawn("red", "square", "large")], small_red_circle) == {
        "extra_objects": 0.0, "wrong_colour": 0.0, "wrong_shape": 1.0, "wrong_size": 1.0}
    assert attribute_errors([drawn("blue", "square", "large")], red_shape) == {  # unstated: never wrong
        "extra_objects": 0.0, "wrong_colour": 1.0, "wrong_shape": 0.0, "wrong_size": 0.0}
    two = [drawn("red", "circle", "small"), drawn("blue", "square", "large")]
    assert attribute_errors(two, small_red_circle) == {  # which one was meant is ambiguous: count only
        "extra_objects": 1.0, "wrong_colour": 0.0, "wrong_shape": 0.0, "wrong_size": 0.0}


# -- the stage end to end --------------------------------------------------------------------------
def test_evaluate_writes_flat_metrics_in_range(evaluated):
    _, _, m = evaluated
    assert all(isinstance(v, float) for v in m.values()) and not any(isinstance(v, dict) for v in m.values())
    for key in ("win_rate.rl_vs_base.pooled", "win_rate.rl_vs_base.pooled_ci_low", "win_rate.control_vs_base.single",
                "win_rate_learned.rl_vs_base.pooled", "overopt_gap.rl_vs_base", "composition.rl.two_exact",
                "composition.rl.unseen.exact", "composition.base.seen.single_exact", "diversity.rl.parity",
                "diversity.rl.entropy", "diversity.rl.pairwise_distance", "quality.rl", "quality.control_ci_high"):
        assert key in m, key
    for key, value in m.items():
        if key.startswith(("win_rate", "composition", "diversity.")) and not key.endswith((".n", ".prompts")):
            assert (-1.0 if ".rl_minus_" in key else 0.0) <= value <= 1.0, key
        if key + "_ci_low" in m:
            assert m[key + "_ci_low"] <= value + 1e-9 <= m[key + "_ci_high"] + 2e-9, key


def test_evaluate_ranks_the_corrupted_model_last(evaluated):
    _, _, m = evaluated
    # RL and control are identical: exact ties for both judges, zero gap.
    assert m["win_rate.rl_vs_control.pooled"] == m["win_rate_learned.rl_vs_control.pooled"] == 0.5
    assert m["overopt_gap.rl_vs_control"] == 0.0
    # About half of base's images are blank: it loses, scores lower, and the clean renders are near-perfect.
    assert m["win_rate.rl_vs_base.pooled"] > 0.6 and m["win_rate.rl_vs_base.pooled_ci_low"] > 0.5
    assert m["win_rate.rl_vs_base.pooled_ci_high"] > m["win_rate.rl_vs_base.pooled_ci_low"]
    assert m["quality.rl"] > m["quality.base"]
    assert m["composition.rl.exact"] >= 0.9 > 0.8 > m["composition.base.exact"]
    assert m["composition.rl.claim_score"] > m["composition.base.claim_score"]
    # clean renders: right on every stated attribute, whatever the size word; blank images draw nothing
    for model in ("rl", "base"):
        assert [m[f"composition.{model}.single_{kind}"] for kind in
                ("extra_objects", "wrong_colour", "wrong_shape", "wrong_size")] == [0.0] * 4
    assert m["composition.rl.single_small_exact"] == m["composition.rl.single_large_exact"] == 1.0
    assert m["composition.base.single_small_exact"] < 1.0
    # paired differences in exact accuracy: identical sets differ by exactly 0, clean minus corrupted is positive
    assert m["composition.rl_minus_control.two_exact"] == m["composition.rl_minus_control.single_exact_ci_high"] == 0.0
    assert m["composition.rl_minus_base.two_exact"] == pytest.approx(
        m["composition.rl.two_exact"] - m["composition.base.two_exact"])
    for kind in ("single", "two"):
        key = f"composition.rl_minus_base.{kind}_exact"
        assert m[key + "_ci_low"] <= m[key] <= m[key + "_ci_high"] and m[key] > 0
        # per split and score: the paired difference equals the difference of the two models' means
        for split in ("", "seen.", "unseen."):
            for score in ("exact", "claim_score"):
                key = f"{split}{kind}_{score}"
                assert m[f"composition.rl_minus_base.{key}"] == pytest.approx(
                    m[f"composition.rl.{key}"] - m[f"composition.base.{key}"]), key
                assert m[f"composition.rl_minus_control.{key}"] == 0.0, key
    assert m["diversity.rl.pairwise_distance"] > 0
    # the training reward (smoke profile: composition) on held-out samples, with the paired gain
    assert m["reward.composition.rl"] > m["reward.composition.base"]
    assert m["reward.composition.rl_minus_base_ci_low"] > 0
    assert m["reward.composition.rl_minus_control"] == 0.0
    assert m["reward.composition.rl_gain_in_base_std"] == pytest.approx(
        m["reward.composition.rl_minus_base"] / m["reward.composition.base_std"])


def test_paired_utility_differences(evaluated):
    """RL minus base / control in the panel's utility, image by image: the paired mean is the difference of
    the two models' means; identical sets (RL and control here) differ by exactly 0."""
    _, _, m = evaluated
    assert m["quality.rl_minus_base"] == pytest.approx(m["quality.rl"] - m["quality.base"], abs=2e-6)
    assert m["quality.rl_minus_base_ci_low"] > 0  # the clean renders beside the half-blank base
    assert m["quality.rl_minus_control"] == m["quality.rl_minus_control_ci_low"] == m["quality.rl_minus_control_ci_high"] == 0.0


def test_evaluate_plot_tables(evaluated):
    root, _, m = evaluated
    with open(root / "plots_eval" / "win_rate.csv") as handle:
        wins = list(csv.DictReader(handle))
    assert list(wins[0]) == ["comparison", "task", "win_rate", "ci_low", "ci_high", "judge"]
    pooled = [r for r in wins if r["comparison"] == "rl_vs_base" and r["task"] == "pooled" and r["judge"] == "panel"]
    assert float(pooled[0]["win_rate"]) == pytest.approx(m["win_rate.rl_vs_base.pooled"], abs=1e-5)
    assert {r["judge"] for r in wins} == {"panel", "learned"}
    with open(root / "plots_eval" / "composition.csv") as handle:
        comp = list(csv.DictReader(handle))
    assert list(comp[0]) == ["model", "split", "exact", "claim_score", "ci_low", "ci_high"]
    assert {(r["model"], r["split"]) for r in comp} >= {("rl", s) for s in ("all", "single", "two", "seen", "unseen")}


def test_evaluate_without_reward_model_or_control_omits_those_keys(evaluated):
    root, samples, _ = evaluated
    partial = root / "partial"
    for name in ("base", "rl"):
        shutil.copytree(samples / name, partial / name)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        m = run_evaluate(root, partial, "", name="partial")  # --reward-model '': no learned judge (a missing folder fails)
    messages = " ".join(str(w.message) for w in caught)
    assert "no reward model" in messages and "control" in messages
    assert "win_rate.rl_vs_base.pooled" in m and "quality.base" in m
    assert not [k for k in m if "learned" in k or "overopt" in k or "control" in k]


def test_task_rewards_are_measured_with_the_task_reward_options(evaluated):
    from pipeline.config import load_params
    from pipeline.evaluation.compare import Evaluation
    from pipeline.samples import load_models
    from pipeline.evaluation.task_rewards import add_task_rewards

    _, samples, m = evaluated
    params = load_params(SMOKE_PARAMS)
    task = params.rl.tasks[0].model_copy(update={"reward_options": {"count": "yes"}})
    ev = Evaluation(params.model_copy(update={"rl": params.rl.model_copy(update={"tasks": [task]})}))
    with pytest.warns(RuntimeWarning, match="option 'count' of reward 'composition' must be true or false"):
        add_task_rewards(ev, load_models(samples), None)
    assert not any(k.startswith("reward.composition") for k in ev.metrics)
    assert m["reward.composition.rl"] > 0  # without options the same samples are scored


def test_evaluate_rejects_unpaired_sample_sets():
    from pipeline.samples import align

    rows = [{"task": "single", "prompt": "a red circle", "seed": 0}]
    other = [{"task": "single", "prompt": "a red circle", "seed": 1}]
    image = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="share no"):
        align({"base": (rows, image), "rl": (other, image)})
