"""Report figures as PNG bytes (matplotlib, Agg backend): win rates, training curves, image grids."""
from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100
# The per-iteration diagnostics of train.csv the report plots, with their axis labels.
DIAGNOSTICS = {"approx_kl": "approximate KL", "clip_fraction": "share of ratios clipped", "ratio_mean": "mean ratio",
               "grad_norm_rl": "RL gradient norm", "grad_norm_pre": "L_pre gradient norm", "loss_pre": "L_pre loss"}
PANELS_PER_ROW = 3


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def win_rate_chart(estimates: dict[tuple[str, str, str], tuple[float, float, float]]) -> bytes:
    """Bars of win rate with 95% CIs; one panel per comparison, bars per task and judge.

    `estimates` maps (judge, comparison, task) to (value, ci_low, ci_high).
    """
    comparisons = list(dict.fromkeys(c for _, c, _ in estimates))
    judges = list(dict.fromkeys(j for j, _, _ in estimates))
    fig, axes = plt.subplots(1, len(comparisons), figsize=(4.5 * len(comparisons), 3.4), squeeze=False)
    width = 0.8 / len(judges)
    for ax, comparison in zip(axes[0], comparisons):
        tasks = list(dict.fromkeys(t for _, c, t in estimates if c == comparison))
        for j, judge in enumerate(judges):
            points = [estimates.get((judge, comparison, t), (np.nan,) * 3) for t in tasks]
            value, low, high = (np.array(v, dtype=float) for v in zip(*points))
            x = np.arange(len(tasks)) + (j - (len(judges) - 1) / 2) * width
            ax.bar(x, value, width, label=judge, yerr=[value - low, high - value], capsize=3)
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(comparison.replace("_vs_", " vs "))
        ax.set_ylabel("win rate")
        ax.legend(fontsize=8)
    return png_bytes(fig)


def _by_task(rows: list[dict]) -> dict[str, list[dict]]:
    tasks: dict[str, list[dict]] = {}
    for row in rows:
        tasks.setdefault(str(row.get("task", "all")), []).append(row)
    return tasks


def _series(rows: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([r.get("iteration", i) for i, r in enumerate(rows)], dtype=float)
    y = np.array([r.get(column, np.nan) for r in rows], dtype=float)
    return x, y


def reward_curves(rows: list[dict]) -> bytes:
    """Mean reward per task over iterations, with a +-1 std band where `reward_std` is given."""
    tasks = _by_task(rows)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.2), squeeze=False)
    for ax, (task, task_rows) in zip(axes[0], tasks.items()):
        x, mean = _series(task_rows, "reward_mean")
        ax.plot(x, mean, marker=".", label="mean")
        _, std = _series(task_rows, "reward_std")
        if np.isfinite(std).any():
            ax.fill_between(x, mean - std, mean + std, alpha=0.25, label="±1 std")
        ax.set_title(f"task: {task}")
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("reward")
        ax.legend(fontsize=8)
    return png_bytes(fig)


def diagnostics(rows: list[dict], columns: dict[str, str] = DIAGNOSTICS) -> bytes | None:
    """Small multiples of the diagnostics present in `rows`, three to a row, a line per task (None if none)."""
    present = [c for c in columns if np.isfinite(_series(rows, c)[1]).any()]
    if not present:
        return None
    tasks = _by_task(rows)
    grid_rows = -(-len(present) // PANELS_PER_ROW)
    fig, axes = plt.subplots(grid_rows, PANELS_PER_ROW, figsize=(11, 3.0 * grid_rows), squeeze=False)
    for ax, column in zip(axes.flat, present):
        for task, task_rows in tasks.items():
            ax.plot(*_series(task_rows, column), marker=".", label=task)
        ax.set_title(columns[column], fontsize=11)
        ax.set_xlabel("iteration", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(column, fontsize=10)
        ax.tick_params(labelsize=9)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=9, title="task", title_fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def image_grid(images: dict[str, np.ndarray], titles: list[str]) -> bytes:
    """Rows: models; columns: the same (prompt, seed) pairs, titled with the prompt."""
    models = list(images)
    columns = len(titles)
    fig, axes = plt.subplots(len(models), columns, figsize=(1.6 * columns, 1.6 * len(models) + 1.1),
                             squeeze=False)
    for r, model in enumerate(models):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(images[model][c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(titles[c], 18)), fontsize=9)
            if c == 0:
                ax.set_ylabel(model, fontsize=11)
    return png_bytes(fig)
