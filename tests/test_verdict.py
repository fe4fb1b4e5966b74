"""The verdict (pipeline/verdict.py): its numbers are eval.json's, its words follow the intervals, and
every place that states it (the end of `make run`, headline.json, the report, MLflow, Prefect)
renders the one computation."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.verdict import headline_metrics, main, table_rows, to_markdown, to_text, verdict


def estimate(key: str, value: float, low: float, high: float) -> dict[str, float]:
    return {key: value, f"{key}_ci_low": low, f"{key}_ci_high": high}


EVAL = {**estimate("win_rate.rl_vs_base.pooled", 0.6123456, 0.5512345, 0.6701234),
        **estimate("win_rate.rl_vs_control.pooled", 0.4812345, 0.4198765, 0.5402345),
        **estimate("composition.rl_minus_control.single_exact", -0.1523456, -0.2204567, -0.0809876),
        **estimate("composition.rl_minus_base.single_exact", -0.02, -0.09, 0.05),
        **estimate("composition.rl_minus_control.two_exact", 0.01, -0.03, 0.05),
        **estimate("overopt_gap.rl_vs_base", 0.2812345, 0.2034567, 0.3543210),
        "quality.rl": 4.2, "pairs": 1152.0}


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"[-+]?\d+\.\d{3}\b", text)]


def test_the_verdicts_numbers_are_eval_jsons():
    v = verdict(EVAL)
    flat = headline_metrics(v.headline)
    sources = {"rl_vs_base": "win_rate.rl_vs_base.pooled", "rl_vs_control": "win_rate.rl_vs_control.pooled",
               "largest_regression": "composition.rl_minus_control.single_exact",
               "overopt_gap": "overopt_gap.rl_vs_base"}
    assert len(flat) == 12
    for name, value in flat.items():
        group, part = name.split(".")
        key = sources[group] + {"ci_low": "_ci_low", "ci_high": "_ci_high"}.get(part, "")
        assert value == round(EVAL[key], 3), name
    shown = numbers(v.sentence)
    assert shown == numbers(to_text(v).split("\n\n")[0]) and sorted(shown) == sorted(flat.values())
    for row in table_rows(v):  # the table states the same numbers
        assert all(n in flat.values() for n in numbers(row[1]))


def test_the_words_follow_the_intervals():
    v = verdict(EVAL)
    assert "RL beats the base (panel win rate 0.612 [0.551, 0.670])" in v.sentence
    assert "is level with the compute-matched control (panel win rate 0.481 [0.420, 0.540])" in v.sentence
    assert "largest regression is single-object exact accuracy, RL minus the control, -0.152 [-0.220, -0.081]" \
        in v.sentence
    assert "rates RL higher than the panel does (over-optimisation gap +0.281 [0.203, 0.354])" in v.sentence
    assert [row[2] for row in table_rows(v)] == ["RL better", "no clear difference: the interval holds 0.5",
                                                 "RL worse", "reward over-optimised"]

    worse = verdict({**EVAL, **estimate("win_rate.rl_vs_base.pooled", 0.4, 0.3, 0.45)})
    assert "RL loses to the base" in worse.sentence
    no_regression = verdict({k: v for k, v in EVAL.items() if "single_exact" not in k})
    assert "falls below neither the base nor the control" in no_regression.sentence
    assert no_regression.headline["largest_regression"]["value"] == 0.01  # the smallest difference, positive


def test_missing_measures_are_left_out_not_invented():
    v = verdict(estimate("win_rate.rl_vs_base.pooled", 0.6, 0.5, 0.7))  # no control, no learned judge
    assert set(v.headline) == {"rl_vs_base"} and len(v.rows) == 1
    assert "control" not in v.sentence and "over-optimisation" not in v.sentence


def test_renderings_and_the_command(tmp_path, capsys):
    v = verdict(EVAL)
    markdown = to_markdown(v)
    assert markdown.startswith(v.sentence) and "| RL vs control: panel win rate | 0.481 [0.420, 0.540] |" in markdown
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(EVAL))
    assert main(["--metrics", str(path), "--report", str(tmp_path / "none.html")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(to_text(v).rstrip())  # the verdict is the last thing printed
    assert main(["--metrics", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize("side,word", [(0.9, "beats"), (0.1, "loses to"), (0.5, "is level with")])
def test_a_win_rate_interval_on_one_side_of_a_tie_decides(side, word):
    metrics = estimate("win_rate.rl_vs_base.pooled", side, side - 0.05, side + 0.05)
    assert f"RL {word} the base" in verdict(metrics).sentence
