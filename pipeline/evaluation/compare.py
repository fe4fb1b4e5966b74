"""Base vs control vs RL on identical (task, prompt, seed) pairs: the `evaluate` stage's work.

`evaluate_models` returns a flat dict of floats with dotted keys (eval.json) and the rows of the
win-rate and composition plot tables. Every estimate carries a 95% bootstrap interval over
prompts (`<key>_ci_low`, `<key>_ci_high`); bootstrap streams are seeded from `params.seed` and
the key, so a re-run gives the same numbers.

Splits: win rates per prompt task and pooled over all pairs; composition over the fully specified
corpora (`single`, `composition`), all / seen / unseen colour-shape combinations, single- and
two-object; diversity over the `diversity` corpus (several seeds per under-specified prompt).
The sampler check (`sampler_check.*`): RL's panel win rates on the preference prompts sampled with
the other sampler (`sampling.check_eta`), when every model's sample folder holds that set.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.corpora import DIVERSITY, SPECIFIED_CORPORA
from pipeline.evaluation import judges
from pipeline.evaluation.accuracy import ERROR_KINDS, composition_scores
from pipeline.evaluation.metrics import (attribute_balance, bootstrap_mean,
                                         mean_pairwise_distance, stable_seed, win_outcomes, win_rate)
from pipeline.evaluation.task_rewards import add_task_rewards
from pipeline.io import write_json, write_text
from pipeline.samples import Aligned
from pipeline.world.attributes import open_attribute, read_attribute, spec_of
from pipeline.world.vocab import SIZES

COMPARISONS = (("rl", "base"), ("control", "base"), ("rl", "control"))
PLOT_FILES = ("win_rate.csv", "composition.csv")  # written into the --plots folder
WIN_COLUMNS = ("comparison", "task", "win_rate", "ci_low", "ci_high", "judge")
COMPOSITION_COLUMNS = ("model", "split", "exact", "claim_score", "ci_low", "ci_high")
# (key split, object-count prefix) -> composition.csv split name; ci_low/ci_high are exact's interval.
CSV_SPLITS = {("", ""): "all", ("", "single_"): "single", ("", "two_"): "two", ("seen.", ""): "seen",
              ("unseen.", ""): "unseen"}


class Evaluation:
    """Accumulates estimates into the flat metrics dict; bootstrap seeds come from params.seed and the key."""

    def __init__(self, params):
        self.params = params
        self.metrics: dict[str, float] = {}
        self.win_rows: list[dict] = []
        self.composition_rows: list[dict] = []
        self._utility: dict[int, dict[str, np.ndarray]] = {}

    def utility(self, panel, data: Aligned) -> dict[str, np.ndarray]:
        """The panel's mean utility of each model's images in `data`, computed once: the quality measure
        and the noise-free verdict of the over-optimisation gap both read it."""
        if id(data) not in self._utility:
            specs = prompt_specs(data)
            self._utility[id(data)] = {m: judges.panel_utility(panel, im, specs) for m, im in data.images.items()}
        return self._utility[id(data)]

    def estimate(self, key: str, values, clusters, contrast=None):
        est = bootstrap_mean(values, clusters, self.params.evaluate.bootstrap,
                             stable_seed("bootstrap", self.params.seed, key), contrast)
        self.metrics.update(est.flat(key))
        return est

    def win_rates(self, data: Aligned, comparison: str, outcomes: np.ndarray, judge: str, prefix: str,
                  plotted: bool = True) -> None:
        """`prefix.comparison.<task>` per task and `.pooled` (when there is more than one task, or `plotted`);
        `plotted`: also as rows of win_rate.csv."""
        scopes = [(task, np.array([r["task"] == task for r in data.rows])) for task in _tasks(data.rows)]
        if plotted or len(scopes) > 1:
            scopes.append(("pooled", np.ones(len(data.rows), dtype=bool)))
        for scope, mask in scopes:
            key = f"{prefix}.{comparison}.{scope}"
            est = win_rate(outcomes[mask], data.prompts[mask], self.params.evaluate.bootstrap,
                           stable_seed("bootstrap", self.params.seed, key))
            self.metrics.update(est.flat(key))
            if plotted:
                self.win_rows.append({"comparison": comparison, "task": scope, "win_rate": est.value,
                                      "ci_low": est.low, "ci_high": est.high, "judge": judge})


def prompt_specs(data: Aligned) -> list:
    """Each row's prompt spec (PromptSpec)."""
    return [spec_of(r["prompt"], r) for r in data.rows]


def _tasks(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in rows))


def _comparisons(data: Aligned) -> list[tuple[str, str, str]]:
    return [(a, b, f"{a}_vs_{b}") for a, b in COMPARISONS if a in data.images and b in data.images]


def add_quality(ev: Evaluation, data: Aligned, panel) -> None:
    """The panel's mean utility of each model, and RL minus base / control in it, paired image by image."""
    utility = ev.utility(panel, data)
    for model, values in utility.items():
        ev.estimate(f"quality.{model}", values, data.prompts)
    for other in ("base", "control"):
        if "rl" in utility and other in utility:
            ev.estimate(f"quality.rl_minus_{other}", np.stack([utility["rl"], utility[other]], 1), data.prompts,
                        (1.0, -1.0))


def panel_comparisons(ev: Evaluation, data: Aligned, panel, first: tuple[str, ...] | None = None):
    """(a, b, name, outcomes) for each comparison of `data`'s models (those whose first model is in `first`):
    one random rater of the panel per pair, the draws seeded by the judge seed and the comparison's index."""
    specs = prompt_specs(data)
    for index, (a, b, name) in enumerate(_comparisons(data)):
        if first is None or a in first:
            seed = judges.judge_seed(ev.params.seed) + index
            yield a, b, name, judges.panel_outcomes(panel, data.images[a], data.images[b], specs, seed)


def add_sampler_check(ev: Evaluation, check: Aligned | None, panel) -> None:
    """RL's panel win rates (vs base, vs control) on the sampler check's samples: the preference eval prompts
    and seeds sampled with the other sampler (sampling.check_eta), and that eta. Omitted without a check."""
    if check is None:
        return
    ev.metrics["sampler_check.eta"] = float(check.rows[0]["eta"])
    for _, _, name, won in panel_comparisons(ev, check, panel, first=("rl",)):
        ev.win_rates(check, name, won, "panel", "sampler_check.win_rate", plotted=False)


def add_win_rates(ev: Evaluation, data: Aligned, panel, learned) -> None:
    """Panel win rates (one random rater's choice per pair, as a human evaluation); with a learned judge,
    its win rates and the over-optimisation gap.

    The gap compares like with like: the learned judge's verdict (a score comparison) against the
    panel's noise-free verdict (its mean utility), both deterministic. Against the noisy rater's
    choice, which rater noise pulls towards 0.5, even a perfect reward model would show a gap."""
    scores = {m: judges.learned_scores(learned, im, data.rows) for m, im in data.images.items()} if learned else {}
    utility = ev.utility(panel, data) if learned else {}
    for a, b, name, panel_won in panel_comparisons(ev, data, panel):
        ev.win_rates(data, name, panel_won, "panel", "win_rate")
        if learned:
            learned_won = win_outcomes(scores[a], scores[b])
            ev.win_rates(data, name, learned_won, "learned", "win_rate_learned")
            noise_free_won = win_outcomes(utility[a], utility[b])
            ev.estimate(f"win_rate_noise_free.{name}", noise_free_won, data.prompts)
            ev.estimate(f"overopt_gap.{name}", np.stack([learned_won, noise_free_won], 1), data.prompts, (1.0, -1.0))


def add_composition(ev: Evaluation, data: Aligned) -> None:
    """Exact accuracy and claim score per model, overall / seen / unseen, single- and two-object."""
    data = data.where_task(*SPECIFIED_CORPORA)
    if not data.rows:
        return
    specs = prompt_specs(data)
    two = np.array([len(s.objects) == 2 for s in specs])
    unseen = np.array([bool(r.get("unseen", False)) for r in data.rows])
    splits = {"": np.ones(len(two), dtype=bool), "seen.": ~unseen, "unseen.": unseen}
    by_model = {model: composition_scores(images, specs) for model, images in data.images.items()}
    for model, scores in by_model.items():
        for split, mask in splits.items():
            if not mask.any():
                continue
            prefix = f"composition.{model}.{split}"
            ev.metrics[f"{prefix}n"] = float(mask.sum())
            for kind, part in (("", mask), ("single_", mask & ~two), ("two_", mask & two)):
                if not part.any():
                    continue
                exact = ev.estimate(f"{prefix}{kind}exact", scores["exact"][part], data.prompts[part])
                claim = ev.estimate(f"{prefix}{kind}claim_score", scores["claim_score"][part], data.prompts[part])
                label = CSV_SPLITS.get((split, kind))
                if label:
                    ev.composition_rows.append({"model": model, "split": label, "exact": exact.value,
                                                "claim_score": claim.value, "ci_low": exact.low, "ci_high": exact.high})
            if not split and (~two).any():
                add_single_object_diagnosis(ev, f"{prefix}single_", scores, data, specs, ~two)
            both = mask & two & (scores["objects"] > 0)
            if (mask & two).any():
                ev.metrics[f"{prefix}two_objects_right"] = float(scores["objects"][mask & two].mean())
                if both.any():  # undefined when no image has both objects right (not "always wrong")
                    ev.metrics[f"{prefix}two_relation_given_objects"] = float(scores["relation"][both].mean())
    add_paired_differences(ev, by_model, data, two, splits)


def add_paired_differences(ev: Evaluation, by_model: dict, data: Aligned, two: np.ndarray, splits: dict) -> None:
    """RL minus base and RL minus control in exact accuracy and claim score, paired image by image
    (same prompt and seed), overall / seen / unseen, with the prompt-level bootstrap: the interval
    that says whether RL is above the compute-matched control. RL's composition gain can sit on the
    seen colour-shape pairs alone (docs/experiments.md E18), hence the splits."""
    for other in ("base", "control"):
        if "rl" not in by_model or other not in by_model:
            continue
        for split, mask in splits.items():
            for kind, part in (("single_", mask & ~two), ("two_", mask & two)):
                if not part.any():
                    continue
                for score in ("exact", "claim_score"):
                    pairs = np.stack([by_model["rl"][score][part], by_model[other][score][part]], 1)
                    ev.estimate(f"composition.rl_minus_{other}.{split}{kind}{score}", pairs, data.prompts[part],
                                (1.0, -1.0))


def add_single_object_diagnosis(ev: Evaluation, prefix: str, scores: dict, data: Aligned, specs: list,
                                single: np.ndarray) -> None:
    """Single-object prompts: exact accuracy by the prompt's size word (`small`, `large`, `nosize`)
    and the share of images with extra objects or a wrong colour/shape/size: a reward that pays
    for size contradicts "small" prompts and can turn shapes into squares (docs/experiments.md E7)."""
    sizes = np.array([spec.objects[0].size or "nosize" if len(spec.objects) == 1 else "" for spec in specs])
    for size in (*SIZES, "nosize"):
        part = single & (sizes == size)
        if part.any():
            ev.estimate(f"{prefix}{size}_exact", scores["exact"][part], data.prompts[part])
    for kind in ERROR_KINDS:
        ev.estimate(f"{prefix}{kind}", scores[kind][single], data.prompts[single])


def add_diversity(ev: Evaluation, data: Aligned) -> None:
    """Per under-specified prompt: parity and entropy of the detected attribute, pairwise image distance."""
    data = data.where_task(DIVERSITY)
    if not data.rows:
        return
    preferred = ev.params.evaluate.diversity_attribute
    specs = prompt_specs(data)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(data.prompts):
        groups.setdefault(prompt, []).append(i)
    for model, images in data.images.items():
        per_prompt = []
        for indices in groups.values():
            attribute = open_attribute(specs[indices[0]], preferred)
            values = [read_attribute(images[i], attribute) for i in indices]
            per_prompt.append((*attribute_balance(values, attribute), mean_pairwise_distance(images[indices])))
        table = np.asarray(per_prompt)
        ev.metrics[f"diversity.{model}.prompts"] = float(len(groups))
        for column, name in enumerate(("parity", "entropy", "pairwise_distance")):
            ev.estimate(f"diversity.{model}.{name}", table[:, column], None)


def evaluate_models(data: Aligned, params, reward_model_dir: str | Path | None = None,
                    check: Aligned | None = None) -> Evaluation:
    """Every metric of the `evaluate` stage on aligned sample sets (and the sampler check's, if given)."""
    ev = Evaluation(params)
    panel = judges.judge_panel(params)
    learned = judges.load_learned_judge(reward_model_dir)
    add_win_rates(ev, data, panel, learned)
    add_sampler_check(ev, check, panel)
    add_composition(ev, data)
    add_diversity(ev, data)
    add_quality(ev, data, panel)
    add_task_rewards(ev, data, reward_model_dir)
    ev.metrics["pairs"] = float(len(data.rows))
    return ev


def csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """CSV with a header; floats written with 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def write_evaluation(ev: Evaluation, metrics_path: str | Path, plots_dir: str | Path) -> None:
    """eval.json (flat, sorted keys) and `<plots_dir>/{win_rate,composition}.csv`, each written atomically."""
    write_json(metrics_path, {k: round(float(v), 6) for k, v in sorted(ev.metrics.items())})
    win_rate, composition = PLOT_FILES
    write_text(Path(plots_dir) / win_rate, csv_text(ev.win_rows, WIN_COLUMNS))
    write_text(Path(plots_dir) / composition, csv_text(ev.composition_rows, COMPOSITION_COLUMNS))
