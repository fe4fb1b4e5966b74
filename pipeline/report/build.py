"""Assemble the report (base vs control vs RL) and write `index.html`, `report.md` and its PNGs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.corpora import DIVERSITY
from pipeline.io import atomic_path
from pipeline.report import figures, tables
from pipeline.report.document import Code, Document, Figure, Heading, Table, Text, to_html, to_markdown
from pipeline.report.inputs import read_curves, read_metrics
from pipeline.verdict import HEADERS as VERDICT_HEADERS
from pipeline.verdict import table_rows, verdict

GRID_COLUMNS = 8
REPORT_HTML = "index.html"  # every report folder holds it (the output guard's mark of one)
SEEDS_PER_PROMPT = {DIVERSITY: 4}  # grids show 4 seeds of an under-specified prompt, 2 of the others


@dataclass
class ReportInputs:
    """Everything the report shows; all but `eval_metrics` may be empty."""

    eval_metrics: dict[str, float]
    train_metrics: dict[str, float] | None = None
    pretrain_metrics: dict[str, float] | None = None
    curves: list[dict] = field(default_factory=list)
    samples: object | None = None  # pipeline.samples.Aligned
    runs: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    params_text: str = ""
    provenance: dict[str, str] = field(default_factory=dict)


def load_inputs(metrics_dir: str | Path, plots_dir: str | Path, samples_dir: str | Path | None) -> ReportInputs:
    """eval.json (required), train.json, pretrain.json, train.csv and the aligned sample sets."""
    metrics_dir = Path(metrics_dir)
    eval_metrics = read_metrics(metrics_dir / "eval.json", required=True)
    samples = None
    if samples_dir is not None and (Path(samples_dir) / "base").is_dir():
        from pipeline.samples import load_models

        samples = load_models(samples_dir)
    return ReportInputs(eval_metrics=eval_metrics,
                        train_metrics=read_metrics(metrics_dir / "train.json"),
                        pretrain_metrics=read_metrics(metrics_dir / "pretrain.json"),
                        curves=read_curves(Path(plots_dir) / "train.csv"), samples=samples)


def grid_columns(rows: list[dict], task: str, columns: int = GRID_COLUMNS) -> list[int]:
    """Row indices of one task for an image grid: the first prompts, SEEDS_PER_PROMPT seeds each."""
    per_prompt = SEEDS_PER_PROMPT.get(task, 2)
    taken: dict[str, int] = {}
    chosen = []
    for i, row in enumerate(rows):
        if row["task"] != task or taken.get(row["prompt"], 0) >= per_prompt:
            continue
        taken[row["prompt"]] = taken.get(row["prompt"], 0) + 1
        chosen.append(i)
        if len(chosen) == columns:
            break
    return chosen


def sample_blocks(samples) -> list:
    if samples is None:
        return [Text("No sample folders were given.")]
    blocks = [Text(f"Models: {', '.join(samples.images)}. Each column is one (prompt, seed) pair; every model "
                   "started from the same noise for it.")]
    for task in dict.fromkeys(r["task"] for r in samples.rows):
        picked = grid_columns(samples.rows, task)
        titles = [f"{samples.rows[i]['prompt']} · seed {samples.rows[i]['seed']}" for i in picked]
        png = figures.image_grid({m: im[picked] for m, im in samples.images.items()}, titles)
        blocks += [Heading(f"Task: {task}", 3), Figure(f"samples_{task}.png", png, f"{task}: base / control / RL")]
    return blocks


def training_blocks(inputs: ReportInputs) -> list:
    blocks: list = []
    if inputs.curves:
        blocks.append(Figure("reward_curves.png", figures.reward_curves(inputs.curves),
                             "Mean reward per task over RL iterations (band: ±1 std across samples)"))
        diag = figures.diagnostics(inputs.curves)
        if diag is not None:
            blocks.append(Figure("diagnostics.png", diag, "PPO and pretraining-loss diagnostics per iteration"))
    else:
        blocks.append(Text("No training curves (train.csv) were found."))
    for title, metrics in (("RL fine-tuning metrics (train.json)", inputs.train_metrics),
                           ("Base model metrics (pretrain.json)", inputs.pretrain_metrics)):
        if metrics:
            blocks += [Heading(title, 3), tables.key_value_table(metrics)]
    return blocks


def gap_blocks(metrics: dict[str, float]) -> list:
    if not any(k.startswith("overopt_gap.") for k in metrics):
        return [Text("No learned reward model was evaluated, so the over-optimisation gap is not available.")]
    return [Text("The learned reward model's win rate minus the held-out panel's noise-free win rate (its mean "
                 "utility decides each pair; both verdicts are deterministic). A positive gap means the fine-tuned "
                 "model pleases the reward it optimised more than it pleases the raters: reward over-optimisation "
                 "made visible. The panel's own win rate (one noisy rater per pair) is shown for reference."),
            tables.gap_table(metrics)]


def verdict_blocks(metrics: dict[str, float]) -> list:
    """The run's verdict (pipeline/verdict.py), the report's first screen."""
    result = verdict(metrics)
    return [Heading("Verdict"), Text(result.sentence), Table(list(VERDICT_HEADERS), table_rows(result))]


def build_document(inputs: ReportInputs) -> Document:
    m = inputs.eval_metrics
    doc = Document("RL fine-tuning of a text-to-image diffusion model: evaluation report")
    doc.add(*verdict_blocks(m),
            Text("Base model vs the compute-matched control (the base pretrained on for the same budget) vs the "
                 "RL fine-tuned model, every model sampled on the same evaluation prompts and seeds. The eval prompts "
                 "of a corpus large enough to split are kept apart from its training prompts; a smaller corpus's "
                 "may be training prompts too (`disjoint` in data/prompts/manifest.json), and held-out "
                 "colour-shape pairs (the unseen rows) are in no training prompt. Win rates are judged by a "
                 "held-out simulated rater panel (0.5 is a tie); brackets are 95% bootstrap intervals over "
                 "prompts."),
            Heading("Summary"), tables.summary_table(m))
    if any(key.startswith("composition.rl_minus_") for key in m):
        doc.add(Heading("Paired differences"),
                Text("RL minus base and RL minus control on the same prompts and seeds, image by image. "
                     "Seen combinations are colour-shape pairs that RL's training prompts contain; unseen "
                     "ones are held out of every training corpus."), tables.paired_table(m))
    doc.add(Heading("Win rates"))
    wins = tables.win_rate_estimates(m)
    if wins:
        doc.add(Figure("win_rate.png", figures.win_rate_chart(wins), "Win rate per task (dashed: 0.5, a tie)"))
    doc.add(tables.win_rate_table(m))
    check = tables.sampler_check_text(m)
    if check:  # the win rates again under the other sampler (eval.json's sampler_check.*)
        doc.add(Text(check))
    doc.add(Heading("Reward over-optimisation"), *gap_blocks(m),
            Heading("Training"), *training_blocks(inputs), Heading("Samples"), *sample_blocks(inputs.samples))
    if inputs.runs:
        doc.add(Heading("Runs compared"), Text("Single-task vs joint training (as the paper's Table 5)."),
                tables.runs_table(inputs.runs))
    doc.add(Heading("Provenance"), Table(["item", "value"], [[k, v] for k, v in inputs.provenance.items()]))
    if inputs.params_text:
        doc.add(Heading("Parameters", 3), Code(inputs.params_text))
    return doc


def write_report(doc: Document, out: str | Path) -> None:
    """index.html (self-contained), report.md and the figures' PNGs, written as one folder atomically."""
    with atomic_path(Path(out), directory=True) as tmp:
        for figure in doc.figures:
            (tmp / figure.name).write_bytes(figure.png)
        (tmp / REPORT_HTML).write_text(to_html(doc))
        (tmp / "report.md").write_text(to_markdown(doc))
