"""A sweep's results by code (pipeline/sweep.py finds them): the Markdown table, a row per experiment (its swept
params, then the metrics below), and the figure of RL vs the compute-matched control against a swept param.

Pure functions of (params, eval.json metrics) pairs: the experiments' flattened params and their flat eval.json.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.report.document import Document, Table, Text, to_markdown
from pipeline.report.figures import plt, png_bytes
from pipeline.report.tables import cell, estimates

# The table's metric columns (header, eval.json key): each is eval.json's value with its 95% bootstrap interval
# over prompts; "RL minus" ones are paired image by image (same prompt and seed).
COLUMNS = (("RL vs control: panel win rate", "win_rate.rl_vs_control.pooled"),
           ("RL vs control: panel win rate, preference prompts", "win_rate.rl_vs_control.preference"),
           ("RL vs base: panel win rate", "win_rate.rl_vs_base.pooled"),
           ("RL vs base: panel win rate, preference prompts", "win_rate.rl_vs_base.preference"),
           ("RL minus control: utility", "quality.rl_minus_control"),
           ("RL minus base: utility", "quality.rl_minus_base"),
           ("RL minus control: two-object exact", "composition.rl_minus_control.two_exact"),
           ("RL minus control: two-object exact, seen pairs", "composition.rl_minus_control.seen.two_exact"),
           ("RL minus control: two-object exact, unseen pairs", "composition.rl_minus_control.unseen.two_exact"),
           ("RL minus base: two-object exact", "composition.rl_minus_base.two_exact"),
           ("RL: two-object exact", "composition.rl.two_exact"),
           ("RL minus base: single exact", "composition.rl_minus_base.single_exact"),
           ("base: parity (0 = even)", "diversity.base.parity"),
           ("RL: parity", "diversity.rl.parity"),
           ("control: parity", "diversity.control.parity"))


def param_text(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def table_rows(keys: list[str], runs: list[tuple[dict, dict]]) -> list[list[str]]:
    """One row per run: its values of the swept `keys`, then COLUMNS ('value [low, high]'; '—' where absent)."""
    return [[param_text(params.get(key)) for key in keys] + [cell(metrics, key) for _, key in COLUMNS]
            for params, metrics in runs]


def markdown(prefix: str, keys: list[str], runs: list[tuple[dict, dict]]) -> str:
    doc = Document(f"Sweep {prefix}: {', '.join(keys)}")
    doc.add(Text(f"{len(runs)} DVC experiments, one per cell of the grid (python -m pipeline.sweep). Each metric is "
                 "the experiment's eval.json value with its 95% bootstrap interval over prompts; RL minus base or "
                 "control is paired image by image. A win rate of 0.5 is a tie."),
            Table([*keys, *(header for header, _ in COLUMNS)], table_rows(keys, runs)))
    return to_markdown(doc)


def _position(value: Any) -> tuple:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if number else (1, 0, param_text(value))


def figure(x_key: str, keys: list[str], runs: list[tuple[dict, dict]]) -> bytes:
    """The panel's win rate of RL vs the control against `x_key`: a line per task (and pooled) with its 95% band,
    a panel per combination of the other swept keys' values."""
    others = [key for key in keys if key != x_key]
    panels: dict[tuple, list] = {}
    for params, metrics in runs:
        rates = {task: v for (comparison, task), v in estimates(metrics, "win_rate").items() if comparison == "rl_vs_control"}
        panels.setdefault(tuple(params.get(k) for k in others), []).append((params.get(x_key), rates))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (group, points) in zip(axes[0], panels.items()):
        points.sort(key=lambda point: _position(point[0]))
        xs = [x for x, _ in points]
        at = xs if all(_position(x)[0] == 0 for x in xs) else [param_text(x) for x in xs]  # else categories
        for task in dict.fromkeys(task for _, rates in points for task in rates):
            value, low, high = (np.array(v, dtype=float) for v in zip(*(r.get(task, (np.nan,) * 3) for _, r in points)))
            line, = ax.plot(at, value, marker="o", label=task)
            ax.fill_between(at, low, high, color=line.get_color(), alpha=0.1)
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        ax.set_ylim(0, 1)
        ax.set_xlabel(x_key)
        ax.set_title(", ".join(f"{k}={param_text(v)}" for k, v in zip(others, group)) or "RL vs control", fontsize=10)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(title="task", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    axes[0][0].set_ylabel("panel win rate, RL vs control\n(0.5: a tie; band: 95% interval)")
    return png_bytes(fig)
