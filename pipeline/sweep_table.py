"""A sweep's results by code (pipeline/sweep.py finds them): the Markdown table, a row per experiment (its swept
params, then the metrics below), and the figure of RL vs the compute-matched control against a swept param.

Pure functions of (params, eval.json metrics) pairs: the experiments' flattened params and their flat eval.json.
A sweep with a joint multi-task run and single-task runs of its tasks (sweeps/table5_ppo.yaml) also gets the
paper's Table 5: each task's gain over the base in the joint model against its gain trained alone.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.report.document import Document, Figure, Heading, Table, Text, to_markdown
from pipeline.report.figures import plt, png_bytes
from pipeline.report.tables import cell, estimates
from pipeline.sweep_cells import CELL_KEY

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


# Each task's held-out measure of its gain over the base, by the task's prompt corpus: (label, how, eval.json key).
# "paired": an RL-minus-base estimate, image by image; "win": the panel's win rate vs base, less 0.5 (a tie);
# "lower": a model's value that the task should lower (gain = base - RL, no interval: the sets are not paired).
TASK_MEASURES = {
    "preference": ("panel win rate vs base - 0.5", "win", "win_rate.rl_vs_base.preference"),
    "composition": ("two-object exact, RL - base", "paired", "composition.rl_minus_base.two_exact"),
    "single": ("single-object exact, RL - base", "paired", "composition.rl_minus_base.single_exact"),
    "diversity": ("statistical parity, base - RL", "lower", "diversity.{m}.parity"),
}
JOINT_SHARE = 0.8  # the share of each task's single-task gain the joint model should keep (the paper's Table 5)


def param_text(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def table_rows(keys: list[str], runs: list[tuple[dict, dict]]) -> list[list[str]]:
    """One row per run: its values of the swept `keys`, then COLUMNS ('value [low, high]'; '—' where absent)."""
    return [[param_text(params.get(key)) for key in keys] + [cell(metrics, key) for _, key in COLUMNS]
            for params, metrics in runs]


def run_tasks(params: dict) -> list[tuple[str, str]]:
    """(name, prompt corpus) of each task in a run's flattened params (rl.tasks.0.name, ...)."""
    found, index = [], 0
    while f"rl.tasks.{index}.name" in params:
        found.append((params[f"rl.tasks.{index}.name"], params.get(f"rl.tasks.{index}.prompts")))
        index += 1
    return found


def task_gain(metrics: dict, corpus: str) -> tuple[float, float | None, float | None] | None:
    """(gain, low, high) of a task by its corpus's held-out measure (TASK_MEASURES); None where not measured."""
    if corpus not in TASK_MEASURES:
        return None
    _, how, key = TASK_MEASURES[corpus]
    if how == "lower":
        base, rl = key.format(m="base"), key.format(m="rl")
        return (metrics[base] - metrics[rl], None, None) if base in metrics and rl in metrics else None
    if key not in metrics:
        return None
    shift = 0.5 if how == "win" else 0.0
    return tuple(metrics.get(k, metrics[key]) - shift for k in (key, f"{key}_ci_low", f"{key}_ci_high"))


def _reward_gain(metrics: dict, task: str) -> tuple[float, float | None, float | None] | None:
    key = f"reward.{task}.rl_minus_base"  # the task's own reward on its held-out eval prompts, paired
    return (metrics[key], metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")) if key in metrics else None


def _gain_text(gain) -> str:
    if gain is None:
        return "—"
    value, low, high = gain
    return f"{value:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else "")


def _share(joint, single) -> str:
    if joint is None or single is None:
        return "—"
    if single[0] <= 0 or (single[1] is not None and single[1] <= 0):  # a share of noise says nothing
        return "— (no single-task gain above zero)"
    share = joint[0] / single[0]
    meets = share >= JOINT_SHARE - 1e-9  # 0.1 / 0.125 is 0.7999... in floating point
    return f"{share:.2f} ({'meets' if meets else 'below'} {JOINT_SHARE:g})"


def _setting(params: dict) -> dict:
    """A run's params apart from its tasks and its cell name: the runs of one Table 5 share them."""
    return {k: v for k, v in params.items() if not k.startswith("rl.tasks") and k != CELL_KEY}


def task_gain_tables(runs: list[tuple[dict, dict]]) -> list[tuple[str, Table]]:
    """The paper's Table 5 for each joint run (more than one task) that has single-task runs of its tasks at the
    same other params: a row per task, its gain over the base alone and in the joint model, and their ratio."""
    tables = []
    for params, metrics in runs:
        tasks = run_tasks(params)
        if len(tasks) < 2:
            continue
        alone = {run_tasks(p)[0][0]: m for p, m in runs
                 if len(run_tasks(p)) == 1 and run_tasks(p)[0] in tasks and _setting(p) == _setting(params)}
        if not alone:
            continue
        rows = []
        for name, corpus in tasks:
            single = alone.get(name)
            measured = [task_gain(m, corpus) if m is not None else None for m in (single, metrics)]
            rewarded = [_reward_gain(m, name) if m is not None else None for m in (single, metrics)]
            rows.append([name, TASK_MEASURES.get(corpus, ("—",))[0], _gain_text(measured[0]), _gain_text(measured[1]),
                         _share(measured[1], measured[0]), _gain_text(rewarded[0]), _gain_text(rewarded[1]),
                         _share(rewarded[1], rewarded[0])])
        label = params.get(CELL_KEY) or " + ".join(name for name, _ in tasks)
        tables.append((label, Table(["task", "held-out measure", "trained alone", "trained jointly", "joint / alone",
                                     "own reward, alone", "own reward, jointly", "joint / alone (reward)"], rows)))
    return tables


def document(prefix: str, keys: list[str], runs: list[tuple[dict, dict]], figure_file: tuple[str, bytes] | None = None,
             x_key: str | None = None) -> Document:
    """The sweep's report: its table, its figure (`figure_file`: the PNG's file name and bytes) and Table 5."""
    doc = Document(f"Sweep {prefix}: {', '.join(keys)}")
    doc.add(Text(f"{len(runs)} DVC experiments, one per cell of the grid (python -m pipeline.sweep). Each metric is "
                 "the experiment's eval.json value with its 95% bootstrap interval over prompts; RL minus base or "
                 "control is paired image by image. A win rate of 0.5 is a tie."),
            Table([*keys, *(header for header, _ in COLUMNS)], table_rows(keys, runs)))
    if figure_file is not None:
        doc.add(Figure(*figure_file, f"The panel's win rate of RL vs the compute-matched control against {x_key}, "
                                     "a line per task, with its 95% interval; 0.5 is a tie."))
    for label, table in task_gain_tables(runs):
        doc.add(Heading(f"Joint vs single-task training: {label} (the paper's Table 5)"),
                Text("Each task's gain over the base on its held-out eval prompts, trained alone and in the joint "
                     "run at the same per-task budget; the joint run should keep at least "
                     f"{JOINT_SHARE:.0%} of each. Then the task's own reward (the training reward on held-out "
                     "prompts, RL minus base, paired). Intervals: 95% bootstrap over prompts."), table)
    return doc


def markdown(prefix: str, keys: list[str], runs: list[tuple[dict, dict]]) -> str:
    return to_markdown(document(prefix, keys, runs))


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
