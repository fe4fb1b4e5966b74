"""The verdict of a pipeline run, computed once from eval.json's flat metrics and rendered by every
place that states it: the end of `make run` (`python -m pipeline.verdict`), the top of the report,
the Prefect flow run's artifact and the MLflow parent run. Also `headline.json`, the dozen numbers
`dvc metrics show` and `dvc exp show` read by default.

The headline: RL against the base and against the compute-matched control by the held-out rater
panel's win rate (0.5 is a tie), the largest regression among RL's paired composition
differences, and the over-optimisation gap (the learned judge's win rate minus the panel's
noise-free one). Every number is eval.json's, rounded to 3 decimals, with its 95% interval.
Plain Python, no project imports: the report may use it (tests/test_architecture.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

DIGITS = 3
# Win rates by the panel, pooled over every eval prompt: (headline name, eval.json key, label).
WIN_RATES = (("rl_vs_base", "win_rate.rl_vs_base.pooled", "the base"),
             ("rl_vs_control", "win_rate.rl_vs_control.pooled", "the compute-matched control"))
GAP = ("overopt_gap", "overopt_gap.rl_vs_base")
# RL's paired differences (same prompt and seed) a regression is looked for in, with their labels.
REGRESSION_KINDS = (("single_exact", "single-object exact accuracy"), ("two_exact", "two-object exact accuracy"),
                    ("single_claim_score", "single-object claim score"), ("two_claim_score", "two-object claim score"))
REGRESSION_OTHERS = (("control", "the control"), ("base", "the base"))


@dataclass(frozen=True)
class Estimate:
    key: str  # eval.json's key
    value: float
    low: float | None
    high: float | None

    def text(self, signed: bool = False) -> str:
        value = f"{self.value:+.{DIGITS}f}" if signed else f"{self.value:.{DIGITS}f}"
        if self.low is None or self.high is None:
            return value
        return f"{value} [{self.low:.{DIGITS}f}, {self.high:.{DIGITS}f}]"

    def side(self, of: float) -> int:
        """+1 when the interval lies above `of`, -1 below, 0 when it holds `of` (or there is none)."""
        if self.low is not None and self.low > of:
            return 1
        if self.high is not None and self.high < of:
            return -1
        return 0


@dataclass(frozen=True)
class Row:
    label: str
    estimate: Estimate
    reading: str


@dataclass(frozen=True)
class Verdict:
    sentence: str
    rows: tuple[Row, ...]
    headline: dict  # headline.json


def _estimate(metrics: dict, key: str) -> Estimate | None:
    if key not in metrics:
        return None

    def rounded(k):
        return round(float(metrics[k]), DIGITS) if k in metrics else None

    return Estimate(key, rounded(key), rounded(f"{key}_ci_low"), rounded(f"{key}_ci_high"))


def largest_regression(metrics: dict) -> tuple[str, Estimate] | None:
    """RL's lowest paired composition difference (all prompts) against the control or the base, as
    (label, estimate): a regression when negative. None when eval.json holds no paired difference."""
    found = []
    for kind, kind_label in REGRESSION_KINDS:
        for other, other_label in REGRESSION_OTHERS:
            estimate = _estimate(metrics, f"composition.rl_minus_{other}.{kind}")
            if estimate is not None:
                found.append((estimate.value, f"{kind_label}, RL minus {other_label}", estimate))
    if not found:
        return None
    _, label, estimate = min(found, key=lambda item: item[0])
    return label, estimate


def _win_phrase(estimate: Estimate, who: str) -> str:
    verb = {1: "beats", -1: "loses to", 0: "is level with"}[estimate.side(0.5)]
    return f"{verb} {who} (panel win rate {estimate.text()})"


def verdict(metrics: dict) -> Verdict:
    """The verdict of eval.json's flat `metrics`."""
    rows, headline, phrases = [], {}, []
    for name, key, who in WIN_RATES:
        estimate = _estimate(metrics, key)
        if estimate is None:
            continue
        headline[name] = {"win_rate": estimate.value, "ci_low": estimate.low, "ci_high": estimate.high}
        reading = {1: "RL better", -1: "RL worse", 0: "no clear difference: the interval holds 0.5"}[estimate.side(0.5)]
        rows.append(Row(f"RL vs {who.split()[-1]}: panel win rate", estimate, reading))
        phrases.append(_win_phrase(estimate, who))
    sentence = ("By the held-out rater panel, RL " + " and ".join(phrases) if phrases
                else "eval.json holds no panel win rate of RL")
    regression = largest_regression(metrics)
    if regression is not None:
        label, estimate = regression
        headline["largest_regression"] = {"value": estimate.value, "ci_low": estimate.low, "ci_high": estimate.high}
        if estimate.value < 0:
            real = estimate.side(0.0) < 0
            rows.append(Row(f"largest regression: {label}", estimate, "RL worse" if real else "within noise: the interval holds 0"))
            sentence += f"; its largest regression is {label}, {estimate.text(signed=True)}"
            sentence += "" if real else " (the interval holds 0)"
        else:
            rows.append(Row(f"smallest paired difference: {label}", estimate, "no regression"))
            sentence += ("; it falls below neither the base nor the control on any paired composition measure "
                         f"(smallest difference: {label}, {estimate.text(signed=True)})")
    gap = _estimate(metrics, GAP[1])
    if gap is not None:
        headline[GAP[0]] = {"value": gap.value, "ci_low": gap.low, "ci_high": gap.high}
        side = gap.side(0.0)
        rows.append(Row("over-optimisation gap, RL vs base (learned judge minus panel)", gap,
                        {1: "reward over-optimised", -1: "learned judge stricter", 0: "no clear gap"}[side]))
        rates = {1: "higher than the panel does", -1: "lower than the panel does", 0: "about as the panel does"}[side]
        sentence += f"; the learned reward model rates RL {rates} (over-optimisation gap {gap.text(signed=True)})"
    return Verdict(sentence + ".", tuple(rows), headline)


def headline_metrics(headline: dict) -> dict[str, float]:
    """headline.json flattened to dotted keys (MLflow metric names)."""
    return {f"{group}.{key}": value for group, values in headline.items() for key, value in values.items()
            if value is not None}


HEADERS = ("measure", "value [95% CI]", "reading")


def table_rows(v: Verdict) -> list[list[str]]:
    return [[row.label, row.estimate.text(signed=not row.label.startswith("RL vs")), row.reading] for row in v.rows]


def to_markdown(v: Verdict) -> str:
    lines = [v.sentence, "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(v)]
    return "\n".join(lines) + "\n"


def to_text(v: Verdict, width: int = 100) -> str:
    """The verdict for a terminal: the sentence wrapped, then the table in aligned columns."""
    rows = [list(HEADERS)] + table_rows(v)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    table = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(textwrap.wrap(v.sentence, width) + [""] + table) + "\n"


def read_eval(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected eval.json's JSON object of metrics")
    return data


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.verdict`: print the verdict of an eval.json (the last lines of `make run`)."""
    p = argparse.ArgumentParser(prog="python -m pipeline.verdict", description=main.__doc__)
    p.add_argument("--metrics", default="data/metrics/eval.json", help="the evaluate stage's eval.json")
    p.add_argument("--report", default="data/report/index.html", help="the report to point to")
    args = p.parse_args(argv)
    try:
        v = verdict(read_eval(args.metrics))
    except (OSError, ValueError) as exc:
        print(f"error: verdict: {args.metrics}: {exc}", file=sys.stderr)
        return 2
    print(f"\nVerdict ({args.metrics}; win rate 0.5 is a tie, brackets are 95% intervals):\n")
    print(to_text(v))
    if Path(args.report).is_file():
        print(f"Report: {args.report}   Runs: make mlflow-ui   All metrics: dvc metrics show {args.metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
