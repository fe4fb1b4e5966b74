"""The `report` stage end to end on rendered sample sets, and the page checked in headless Chromium."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.io import write_json, write_text
from tests.browser import open_page, require_chromium
from tests.conftest import SMOKE_PARAMS
from tests.test_evaluation import build_reward_model, build_samples, run_evaluate

TRAIN_CSV = """iteration,task,reward_mean,reward_std,approx_kl,clip_fraction,grad_norm_rl,loss_pre
0,composition,0.40,0.20,0.0001,0.0,0.5,0.03
1,composition,0.45,0.18,0.0002,0.1,0.6,0.03
2,composition,0.52,0.15,,0.2,0.4,0.02
0,diversity,-0.30,0.10,0.0001,0.0,0.3,0.03
1,diversity,-0.20,0.10,0.0003,0.0,0.2,0.03
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Samples -> evaluate -> report, with training curves, metrics and two runs for the runs table."""
    from pipeline.config import load_params
    from stages import report as report_stage

    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_RUN_IDS", "abc123,def456")
        samples = build_samples(root, load_params(SMOKE_PARAMS))
        metrics = run_evaluate(root, samples, build_reward_model(root / "reward"))
        (root / "metrics").mkdir()
        write_json(root / "metrics" / "eval.json", metrics)
        write_json(root / "metrics" / "train.json", {"reward_mean": 0.52, "iterations": 3, "task": "composition"})
        write_json(root / "metrics" / "pretrain.json", {"single_exact": 0.6, "two_exact": 0.1})
        write_text(root / "plots" / "train.csv", TRAIN_CSV)
        joint = {k: v * 0.9 for k, v in metrics.items()}
        write_json(root / "joint.json", joint)
        report_stage.main(["--params", str(SMOKE_PARAMS), "--metrics", str(root / "metrics"), "--plots",
                           str(root / "plots"), "--samples", str(samples), "--out", str(root / "out"),
                           "--runs", f"single-task={root / 'metrics' / 'eval.json'}", f"joint={root / 'joint.json'}",
                           "--no-progress"])
    return root / "out", metrics


def test_report_files_and_content(report):
    out, metrics = report
    html, md = (out / "index.html").read_text(), (out / "report.md").read_text()
    for section in ("Summary", "Paired differences", "Win rates", "Reward over-optimisation", "Training", "Samples",
                    "Runs compared", "Provenance", "Parameters"):
        assert section in html and f"## {section}" in md, section
    paired = md.split("## Paired differences")[1].split("## ")[0]
    for split, prefix in (("all prompts", ""), ("seen combinations", "seen."), ("unseen combinations", "unseen.")):
        key = f"composition.rl_minus_control.{prefix}two_exact"
        row = next(line for line in paired.splitlines() if line.startswith(f"| two-object exact | {split} |"))
        assert f"{metrics[key]:.3f} [{metrics[key + '_ci_low']:.3f}, {metrics[key + '_ci_high']:.3f}]" in row
    assert f"{metrics['win_rate.rl_vs_base.pooled']:.3f}" in md
    assert "single-task" in md and "joint" in md  # the runs table
    assert "abc123, def456" in md  # MLflow run ids from the environment
    assert "resolution: 24" in md  # the params file
    assert "| git commit |" not in md and "MLflow report run" not in md  # volatile: on the MLflow runs, not here
    assert md.index("## Verdict") < md.index("## Summary")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["win_rate.png", "reward_curves.png", "diagnostics.png", "samples_single.png",
                           "samples_composition.png", "samples_diversity.png", "samples_preference.png"])
    for name in pngs:
        assert f"]({name})" in md  # Markdown references the PNG beside it


def test_report_html_is_self_contained(report):
    out, _ = report
    html = (out / "index.html").read_text()
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", html), "no external URL of any kind"
    assert not re.search(r"<(script|link)\b", html)
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 7 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_report_without_optional_inputs(tmp_path):
    """Only eval.json: the page still builds and says what is missing."""
    from pipeline.report import build_document, load_inputs, write_report

    (tmp_path / "metrics").mkdir()
    write_json(tmp_path / "metrics" / "eval.json", {"quality.base": 3.0, "quality.rl": 4.0,
                                                    "win_rate.rl_vs_base.pooled": 0.6})
    inputs = load_inputs(tmp_path / "metrics", tmp_path / "plots", tmp_path / "samples")
    write_report(build_document(inputs), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No training curves" in md and "No sample folders" in md and "not available" in md
    assert "0.600" in md and "4.000" in md  # the values that were given are shown


def test_report_stage_fails_cleanly_without_eval_metrics(tmp_path, capsys):
    from stages import report as report_stage

    with pytest.raises(SystemExit) as exit_info:
        report_stage.main(["--params", str(SMOKE_PARAMS), "--metrics", str(tmp_path / "in"), "--samples",
                           str(tmp_path / "in"), "--out", str(tmp_path / "o")])  # not inside an input: refused
    assert exit_info.value.code == 2
    assert "eval.json" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(report, tmp_path):
    require_chromium()
    out, _ = report
    screenshot = tmp_path / "report.png"
    errors, images, text = open_page(out / "index.html", screenshot=screenshot)
    assert errors == []
    assert len(images) == 7
    assert all(i["complete"] and i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in images), images
    assert "Summary" in text and "Provenance" in text
    assert screenshot.stat().st_size > 10_000


def test_the_reports_first_screen_states_the_verdict(report, tmp_path):
    """Unscrolled, at 1280x900, the page shows the verdict's sentence and table with eval.json's numbers."""
    from pipeline.verdict import table_rows, verdict
    from tests.browser import first_screen

    require_chromium()
    out, metrics = report
    screenshot = tmp_path / "first-screen.png"
    text = first_screen(out / "index.html", screenshot=screenshot)
    result = verdict(metrics)
    assert result.sentence in text
    for label, value, reading in table_rows(result):
        assert label in text and value in text and reading in text
    assert f"{round(metrics['win_rate.rl_vs_control.pooled'], 3):.3f}" in text
    assert screenshot.stat().st_size > 10_000


def test_counts_print_as_whole_numbers():
    from pipeline.report.tables import cell

    metrics = {"iterations": 8.0, "composition.rl.n": 144.0, "unet_passes": 1234567.0, "pretrain.loss": 8.0,
               "quality.rl": 1.0, "quality.rl_ci_low": 0.5, "quality.rl_ci_high": 1.5}
    assert [cell(metrics, k) for k in metrics if "_ci_" not in k] == ["8", "144", "1,234,567", "8.000",
                                                                       "1.000 [0.500, 1.500]"]


def test_runs_from_eval_files_and_dvc_exp_show(tmp_path):
    from pipeline.report.inputs import read_runs
    from pipeline.report.tables import runs_table

    def rev(name, value):
        return {"rev": name[:3], "name": name, "experiments": None, "data": {
            "params": {"params.yaml": {"data": {"seed": 0}}},
            "metrics": {"data/metrics/train.json": {"data": {"reward_mean": 1.0}},
                        "data/metrics/eval.json": {"data": {"win_rate.rl_vs_base.pooled": value}}}}}

    shown = [rev("workspace", 0.6), {**rev("main", 0.55),
                                     "experiments": [{"name": "exp-joint", "revs": [rev("exp-joint", 0.7)]}]}]
    write_json(tmp_path / "exps.json", shown)
    (tmp_path / "single").mkdir()
    write_json(tmp_path / "single" / "eval.json", {"win_rate.rl_vs_base.pooled": 0.65, "quality.rl": 5.0})
    runs = read_runs([str(tmp_path / "exps.json"), str(tmp_path / "single" / "eval.json")])
    assert [(name, m["win_rate.rl_vs_base.pooled"]) for name, m in runs] == [
        ("workspace", 0.6), ("main", 0.55), ("exp-joint", 0.7), ("single", 0.65)]
    assert "reward_mean" not in runs[0][1]  # eval.json's metrics only, when present
    table = runs_table(runs)
    assert table.headers == ["run", "win rate vs base", "quality"] and table.rows[0][2] == "—"


def test_browser_check_catches_broken_images_and_script_errors(tmp_path):
    """The check itself can fail: a missing image and a script error are both reported."""
    require_chromium()
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><p>hello</p><img src="missing.png">'
                    "<script>undefinedFunction();</script></body></html>")
    errors, images, text = open_page(page)
    assert text == "hello"
    assert images[0]["naturalWidth"] == 0
    assert any("missing.png" in e for e in errors) and any("undefinedFunction" in e for e in errors)


def test_markdown_shows_names_from_files_literally():
    """report.md: a task or run name can open no link, image or HTML, and break no table row (the HTML
    page escapes them too; task names are also validated where they are read)."""
    from pipeline.report.document import Code, Document, Heading, Table, Text, to_markdown

    doc = Document("t")
    doc.add(Heading("Task: <img src=x onerror=alert(1)>"), Text("![pixel](http://example.com/p.png)"),
            Table(["run"], [["[x](http://example.com) | y\nz"], ["0.5 [0.4, 0.6]"]]), Code("a: ```\nb"))
    md = to_markdown(doc)
    assert "## Task: \\<img src=x onerror=alert(1)\\>" in md and "](http" not in md
    assert "| [x]\\(http://example.com) \\| y z |" in md and "| 0.5 [0.4, 0.6] |" in md
    assert "````\na: ```\nb\n````" in md
