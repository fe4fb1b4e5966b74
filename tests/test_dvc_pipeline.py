"""A real `dvc repro` of the pipeline on the smoke profile, in a temporary git repository."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMOKE_PARAMS, checkpoint_stamp

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(SMOKE_PARAMS, repo / "params.yaml")
    (repo / ".gitignore").write_text("/data/\n/checkpoints/\n/mlflow.db\n/mlruns/\n/.cache/\n__pycache__/\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(repo),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # the project's: bytecode caches are no code dependency
    _run(["dvc", "config", "core.site_cache_dir", str(repo / ".cache" / "dvc-site")], repo, env)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # the plot templates and offline page
    _run(["dvc", "config", "plots.html_template", "plots/offline.html"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)
    return repo, env


def test_foundation_stages_reproduce(dvc_repo):
    repo, env = dvc_repo
    _run(["dvc", "repro", "sample_base"], repo, env)
    metrics = json.loads((repo / "data/metrics/pretrain.json").read_text())
    assert {"loss", "single_exact", "two_exact", "steps"} <= set(metrics)
    assert 0.0 <= metrics["single_exact"] <= 1.0 and metrics["steps"] == 6
    assert (repo / "data/models/base/unet/config.json").is_file()
    index = [json.loads(line) for line in (repo / "data/samples/base/index.jsonl").read_text().splitlines()]
    assert index and all((repo / "data/samples/base" / row["path"]).is_file() for row in index)
    assert {"prompt", "task", "seed", "path"} <= set(index[0])
    status = _run(["dvc", "status", "sample_base"], repo, env)
    assert "up to date" in status.lower() or status.strip() == ""


def test_whole_pipeline_reproduces_and_reports(dvc_repo):
    repo, env = dvc_repo
    _run(["dvc", "repro"], repo, env)
    evaluation = json.loads((repo / "data/metrics/eval.json").read_text())
    assert "win_rate.rl_vs_base.pooled" in evaluation and "composition.control.exact" in evaluation
    assert (repo / "data/report/index.html").is_file() and (repo / "data/report/report.md").is_file()
    shown = next(iter(json.loads(_run(["dvc", "metrics", "show", "--json"], repo, env)).values()))["data"]
    assert list(shown) == ["data/metrics/headline.json"]  # the default view is the headline alone
    headline = shown["data/metrics/headline.json"]["data"]
    assert headline["rl_vs_control"]["win_rate"] == round(evaluation["win_rate.rl_vs_control.pooled"], 3)
    assert 9 <= sum(len(group) for group in headline.values()) <= 15
    everything = _run(["dvc", "metrics", "show", "--json", "data/metrics/eval.json"], repo, env)
    assert "win_rate.rl_vs_base.pooled" in everything  # the rest, on request
    assert "up to date" in _run(["dvc", "status"], repo, env).lower()


def test_a_second_dvc_repro_from_a_fresh_clone_leaves_dvc_lock_unchanged(dvc_repo, tmp_path):
    """Commit the run, clone it elsewhere (no DVC cache: every stage runs again, from other absolute
    paths) and `dvc repro`: the same params give the same bytes, so dvc.lock and `git status` stay clean.
    Wall-clock timings live in MLflow, models name no source folder, the report no run ids or commit."""
    repo, env = dvc_repo
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "first run"], repo, env)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    clone_env = {**env, "PYTHONPATH": str(clone), "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlflow.db'}"}
    _run(["dvc", "config", "--local", "core.site_cache_dir", str(clone / ".cache" / "dvc-site")], clone, clone_env)
    log = _run(["dvc", "repro"], clone, clone_env)
    assert log.count("Running stage") == 10  # everything ran again
    assert _run(["git", "status", "--porcelain"], clone, clone_env) == "", _run(["git", "diff"], clone, clone_env)


def test_dvc_plots_show_draws_every_plot(dvc_repo, tmp_path):
    """Each plot of `dvc plots show` draws data marks in headless Chromium, with titled axes: the
    categorical CSVs on bar templates, train.csv one line per task (.dvc/plots/*.json)."""
    from tests.browser import dvc_plot_specs, require_chromium, vega_mark_counts

    require_chromium()
    repo, env = dvc_repo
    _run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo, env)
    page = tmp_path / "plots" / "index.html"
    specs = dvc_plot_specs(page.read_text())
    assert set(specs) == {"data_plots_train_csv", "data_plots_win_rate_csv", "data_plots_composition_csv"}
    broken = {"mark": "line", "data": {"values": [{"task": "a", "v": "1"}, {"task": "b", "v": "2"}]},
              "encoding": {"x": {"field": "task", "type": "quantitative"}, "y": {"field": "v", "type": "quantitative"}}}
    counts = vega_mark_counts(page, [*specs.values(), broken])
    assert counts[-1] == 0, "the check must see an empty plot (a text x axis on a quantitative scale)"
    assert all(isinstance(n, int) and n > 0 for n in counts[:-1]), dict(zip(specs, counts))
    for name, spec in specs.items():
        text = json.dumps(spec)
        assert '"title": "<DVC' not in text and "DVC_METRIC" not in text, name  # every anchor filled
    train = json.dumps(specs["data_plots_train_csv"])
    assert '"field": "task"' in train and '"title": "RL iteration"' in train


def test_killed_finetune_resumes_on_next_dvc_repro(dvc_repo):
    """SIGKILL `dvc repro finetune` after a checkpoint; the next `dvc repro` resumes and matches a clean run."""
    import signal
    import time

    repo, env = dvc_repo
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  iterations: 2\n", "  iterations: 5\n"))
    proc = subprocess.Popen(["dvc", "repro", "finetune"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((repo / "checkpoints").glob("finetune-*/step-000003.pt")) and time.time() < deadline:
        assert proc.poll() is None, "dvc repro finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = next((repo / "checkpoints").glob("finetune-*"))
    stamp = checkpoint_stamp(folder)
    _run(["dvc", "repro", "finetune"], repo, env)
    assert checkpoint_stamp(folder, stamp[0]) == stamp, "dvc repro started finetune over"
    resumed = (repo / "data/models/rl/unet/diffusion_pytorch_model.safetensors").read_bytes()
    resumed_metrics = (repo / "data/metrics/train.json").read_text()
    shutil.rmtree(repo / "checkpoints")
    _run(["dvc", "repro", "-f", "finetune"], repo, env)
    assert resumed == (repo / "data/models/rl/unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert resumed_metrics == (repo / "data/metrics/train.json").read_text()


def test_metrics_diff_between_experiments(dvc_repo):
    repo, env = dvc_repo
    _run(["dvc", "repro"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline"], repo, env)
    _run(["dvc", "exp", "run", "-n", "faster-lr", "-S", "rl.warmup_iterations=2"], repo, env)
    diff = json.loads(_run(["dvc", "metrics", "diff", "HEAD", "faster-lr", "--all", "--json"], repo, env))
    assert set(diff) == {"data/metrics/headline.json"}
    assert diff["data/metrics/headline.json"]["rl_vs_base.win_rate"]["old"] is not None
    files = ["data/metrics/eval.json", "data/metrics/train.json"]  # the other metrics, named (README)
    diff = json.loads(_run(["dvc", "metrics", "diff", "HEAD", "faster-lr", "--all", "--json", "--targets", *files],
                           repo, env))
    evaluation = diff["data/metrics/eval.json"]
    assert {"old", "new"} <= set(evaluation["win_rate.rl_vs_base.pooled"])
    assert evaluation["win_rate.rl_vs_base.pooled"]["old"] is not None
    assert diff["data/metrics/train.json"]["unet_passes"]["new"] is not None
    assert any(v["old"] != v["new"] for v in diff["data/metrics/train.json"].values())  # the change shows
    shown = _run(["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", "Experiment|rl_vs_.*|rl.warmup_iterations"],
                 repo, env)  # the README's recipe
    header = shown.splitlines()[0].split(",")
    assert {"Experiment", "rl_vs_base.win_rate", "rl_vs_control.win_rate", "rl.warmup_iterations"} <= set(header)
    assert len(header) <= 10 and "faster-lr" in shown


# Modules that only move bytes, log, report progress or errors, guard output paths or validate params: editing
# them cannot change a stage's outputs. (The registry is imported by pipeline.config to name known rewards; stages that
# score images list all of pipeline/rewards.)
_NOT_OUTPUT_RELEVANT = {"pipeline/__init__.py", "pipeline/errors.py", "pipeline/io.py", "pipeline/tracking.py",
                        "pipeline/tracking_buffer.py", "pipeline/tracking_client.py", "pipeline/checkpoints.py",
                        "pipeline/rewards/registry.py", "pipeline/outputs.py", "pipeline/progress.py",
                        "stages/_cli.py"}
# Tracking's own imports run only on tracking's behalf (its params hash, its buffer).
_NOT_FOLLOWED = {"pipeline/tracking.py", "pipeline/tracking_buffer.py", "pipeline/tracking_client.py"}


def _module_file(module: str) -> Path | None:
    path = ROOT / module.replace(".", "/")
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_project_files(path: Path) -> set[Path]:
    """Project modules `path` imports anywhere (top level or inside functions), statically."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    found = (_module_file(n) for n in names if n.split(".")[0] in ("pipeline", "stages"))
    return {f for f in found if f is not None}


def _import_closure(*starts: Path) -> set[str]:
    """Project files the `starts` run, through imports; tracking's own imports are not followed
    (_NOT_FOLLOWED): they cannot reach a stage's outputs."""
    seen: set[Path] = set()
    todo = list(starts)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            if path.relative_to(ROOT).as_posix() not in _NOT_FOLLOWED:
                todo.extend(_imported_project_files(path))
    return {p.relative_to(ROOT).as_posix() for p in seen}


def _registered_reward_files() -> list[Path]:
    """The modules `build_reward` imports by name: a static walk of the imports cannot see them."""
    from pipeline.rewards.registry import _REWARDS

    return sorted({_module_file(path.split(":")[0]) for path, _ in _REWARDS.values()})


def test_every_stage_lists_the_pipeline_modules_it_imports_in_its_deps():
    """A change to any module a stage runs (the detector, the model, a config default) must make
    DVC re-run that stage; before this test, evaluate did not depend on the detector. A stage that
    builds rewards by name lists pipeline/rewards, and then what those reward modules import too."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        deps = [d.rstrip("/") for d in stage["deps"] if not d.startswith("data/")]
        script = next(d for d in deps if d.startswith("stages/"))
        covered = lambda f: any(f == d or f.startswith(d + "/") for d in deps)  # noqa: E731
        starts = [ROOT / script] + (_registered_reward_files() if "pipeline/rewards" in deps else [])
        uncovered = sorted(f for f in _import_closure(*starts) - _NOT_OUTPUT_RELEVANT if not covered(f))
        if uncovered:
            missing[name] = uncovered
    assert not missing, f"dvc.yaml deps lack modules their stages import: {missing}"
    assert "pipeline/world" in stages["evaluate"]["deps"] and "pipeline/models" in stages["sample_rl"]["deps"]
