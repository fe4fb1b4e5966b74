"""Report tables from flat eval.json metrics (`key`, `key_ci_low`, `key_ci_high`)."""
from __future__ import annotations

from pipeline.report.document import Table

MODELS = ("base", "control", "rl")
MISSING = "—"
POOLED = "pooled"  # listed after the per-task rows
JUDGES = {"win_rate": "panel", "win_rate_learned": "learned"}
# (label, key template with {m} for the model) for the base / control / RL summary.
SUMMARY_ROWS = (
    ("panel quality (mean utility)", "quality.{m}"),
    ("composition: exact", "composition.{m}.exact"),
    ("composition: claim score", "composition.{m}.claim_score"),
    ("single-object exact", "composition.{m}.single_exact"),
    ("two-object exact", "composition.{m}.two_exact"),
    ("seen combinations: exact", "composition.{m}.seen.exact"),
    ("unseen combinations: exact", "composition.{m}.unseen.exact"),
    ("diversity: statistical parity (0 = even)", "diversity.{m}.parity"),
    ("diversity: attribute entropy (1 = even)", "diversity.{m}.entropy"),
    ("diversity: mean pairwise distance", "diversity.{m}.pairwise_distance"),
    ("panel win rate vs base (pooled)", "win_rate.{m}_vs_base.pooled"),
    ("learned-judge win rate vs base (pooled)", "win_rate_learned.{m}_vs_base.pooled"),
)
# Columns of the runs table (the paper's Table 5: single-task vs joint training).
RUN_COLUMNS = (
    ("win rate vs base", "win_rate.rl_vs_base.pooled"),
    ("preference win rate", "win_rate.rl_vs_base.preference"),
    ("composition exact", "composition.rl.exact"),
    ("two-object exact", "composition.rl.two_exact"),
    ("unseen exact", "composition.rl.unseen.exact"),
    ("diversity parity", "diversity.rl.parity"),
    ("quality", "quality.rl"),
    ("over-opt. gap", "overopt_gap.rl_vs_base"),
)


# Keys that count things (their last dotted part): shown as whole numbers, not '8.000'.
COUNTS = ("n", "steps", "pairs", "iterations", "dropped", "prompts", "parameters", "votes", "unet_passes", "skipped")


def is_count(key: str, value: float) -> bool:
    last = key.rsplit(".", 1)[-1]
    return float(value).is_integer() and (last in COUNTS or last.endswith(("_pairs", "_steps", "_passes")))


def cell(metrics: dict[str, float], key: str) -> str:
    """'0.612 [0.551, 0.670]', '0.612' without an interval, '1,224' for a count, or '—' when the key is absent."""
    if key not in metrics:
        return MISSING
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None and high is None and is_count(key, metrics[key]):
        return f"{int(metrics[key]):,}"
    text = f"{metrics[key]:.3f}"
    return f"{text} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else text


def estimates(metrics: dict[str, float], prefix: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """{(middle, last): (value, low, high)} for keys `prefix.middle.last` with intervals."""
    found = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if parts[0] != prefix or len(parts) != 3 or key.endswith(("_ci_low", "_ci_high")):
            continue
        found[(parts[1], parts[2])] = (value, metrics.get(f"{key}_ci_low", value), metrics.get(f"{key}_ci_high", value))
    return dict(sorted(found.items(), key=lambda item: (item[0][0], item[0][1] == POOLED)))


def win_rate_estimates(metrics: dict[str, float]) -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """{(judge, comparison, task): (value, low, high)} for the panel and learned judges."""
    return {(judge, c, t): v for prefix, judge in JUDGES.items() for (c, t), v in estimates(metrics, prefix).items()}


def models_present(metrics: dict[str, float]) -> list[str]:
    return [m for m in MODELS if any(k.startswith((f"quality.{m}", f"composition.{m}.")) for k in metrics)]


def summary_table(metrics: dict[str, float]) -> Table:
    models = models_present(metrics)
    rows = [[label] + [cell(metrics, key.format(m=m)) for m in models] for label, key in SUMMARY_ROWS]
    rows = [r for r in rows if any(c != MISSING for c in r[1:])]
    return Table(["metric (95% CI)"] + models, rows)


def win_rate_table(metrics: dict[str, float]) -> Table:
    panel = estimates(metrics, "win_rate")
    rows = [[c.replace("_vs_", " vs "), t, cell(metrics, f"win_rate.{c}.{t}"),
             cell(metrics, f"win_rate_learned.{c}.{t}")] for c, t in panel]
    return Table(["comparison", "task", "panel (held-out raters)", "learned reward model"], rows)


def sampler_check_text(metrics: dict[str, float]) -> str | None:
    """'Sampler check (eta 1): RL vs base 0.55 [...], RL vs control ...' from sampler_check.* (None without it)."""
    if "sampler_check.eta" not in metrics:
        return None
    check = {k.removeprefix("sampler_check."): v for k, v in metrics.items() if k.startswith("sampler_check.")}
    wins = ", ".join(f"{c.replace('rl_vs_', 'RL vs ')} {cell(check, f'win_rate.{c}.{t}')}"
                     for c, t in estimates(check, "win_rate"))
    return (f"Sampler check (eta {check['eta']:g}): {wins or 'no comparison'}. The panel's win "
            "rates on the preference prompts and seeds sampled again with the other sampler (sampling.check_eta): "
            "a win that holds under both samplers is not the deterministic sampler's alone.")


PAIRED_SPLITS = (("all prompts", ""), ("seen combinations", "seen."), ("unseen combinations", "unseen."))
PAIRED_KINDS = (("two-object exact", "two_exact"), ("single-object exact", "single_exact"))


def paired_table(metrics: dict[str, float]) -> Table:
    """RL minus base / control, image by image: RL above the control on two-object accuracy with an
    interval above zero is the composition goal; the seen / unseen rows show where a gain sits."""
    others = [o for o in ("base", "control") if f"composition.rl_minus_{o}.two_exact" in metrics]
    rows = [[label, split_label] + [cell(metrics, f"composition.rl_minus_{o}.{split}{key}") for o in others]
            for label, key in PAIRED_KINDS for split_label, split in PAIRED_SPLITS]
    rows = [r for r in rows if any(c != MISSING for c in r[2:])]
    return Table(["metric", "prompts"] + [f"RL minus {o}" for o in others], rows)


def gap_table(metrics: dict[str, float]) -> Table:
    comparisons = list(dict.fromkeys(c for c, _ in estimates(metrics, "win_rate")))
    rows = [[c.replace("_vs_", " vs "), cell(metrics, f"win_rate.{c}.pooled"),
             cell(metrics, f"win_rate_noise_free.{c}"), cell(metrics, f"win_rate_learned.{c}.pooled"),
             cell(metrics, f"overopt_gap.{c}")] for c in comparisons]
    return Table(["comparison", "panel win rate (one rater)", "panel, noise-free", "learned win rate",
                  "gap (learned - noise-free)"], rows)


def runs_table(runs: list[tuple[str, dict[str, float]]]) -> Table:
    columns = [(label, key) for label, key in RUN_COLUMNS if any(key in m for _, m in runs)]
    return Table(["run"] + [label for label, _ in columns],
                 [[name] + [cell(metrics, key) for _, key in columns] for name, metrics in runs])


def key_value_table(metrics: dict[str, float], limit: int = 40) -> Table:
    """The first `limit` metrics (sorted), intervals folded into their key's cell."""
    keys = sorted(k for k in metrics if not k.endswith(("_ci_low", "_ci_high")))[:limit]
    return Table(["metric", "value"], [[k, cell(metrics, k)] for k in keys])
