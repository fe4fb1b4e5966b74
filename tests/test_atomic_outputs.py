"""Atomic outputs (Reliability, part 5): every file a stage declares is written under a temporary
name beside it and renamed into place, so an interrupted stage never leaves a half-written output.

What an interrupted stage leaves, and what DVC then does:

* no previous output: the declared path does not exist. `dvc status` reports the out as deleted
  (or the stage as never run) and `dvc repro` runs the stage again; nothing half-written can be
  mistaken for a result or cached by `dvc commit`.
* a previous complete output: it is left as it was (the rename never happened), so the out's
  hash is still that of a complete earlier run; since the stage's deps or params changed (that
  is why it was running), `dvc repro` runs it again.
* in both cases the only debris is a hidden sibling `.<name>.<random>/` (the temporary folder of
  `pipeline.io.atomic_path`), which no stage or DVC out refers to.
"""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io import atomic_path, write_json, write_text
from tests.conftest import SMOKE_PARAMS

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE_TRACKING = "http://127.0.0.1:9"  # connection refused at once: the stage buffers its tracking


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# -- (a) atomic_path -------------------------------------------------------------------------------
def test_file_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            assert tmp != target and tmp.name == target.name and tmp.parent.name.startswith(".metrics.json.")
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert _siblings(target) == []

    with atomic_path(target) as tmp:
        tmp.write_text("new\n")
        assert target.read_text() == "old\n"  # not visible before the body ends
    assert target.read_text() == "new\n"
    assert _siblings(target) == []


def test_directory_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"complete")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, directory=True) as tmp:
            assert tmp.is_dir() and not any(tmp.iterdir())
            (tmp / "weights.bin").write_bytes(b"trunc")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"complete"
    assert _siblings(target) == []

    with atomic_path(target, directory=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # replaced, not merged
    assert _siblings(target) == []


def test_failure_without_previous_output_leaves_nothing(tmp_path):
    for directory in (False, True):
        target = tmp_path / f"out-{directory}"
        with pytest.raises(ValueError):
            with atomic_path(target, directory=directory) as tmp:
                (tmp / "part" if directory else tmp).write_text("partial")
                raise ValueError("bad input")
        assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_helpers_are_atomic(tmp_path):
    target = tmp_path / "eval.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json(target, {"a": Unserialisable()})  # fails while serialising: old file intact
    assert json.loads(target.read_text()) == {"a": 1}
    assert _siblings(target) == []


def test_output_may_change_between_file_and_directory(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "index.jsonl").write_text("{}")
    assert (target / "index.jsonl").is_file()
    write_text(target, "a file again")
    assert target.read_text() == "a file again"
    assert _siblings(target) == []


@pytest.mark.parametrize("directory", [False, True], ids=["file", "directory"])
def test_failed_rename_keeps_previous_output(tmp_path, monkeypatch, directory):
    """Even when the final rename itself fails, the previous output is never lost."""
    import pipeline.io

    target = tmp_path / ("model" if directory else "eval.json")
    with atomic_path(target, directory=directory) as tmp:
        (tmp / "weights.bin" if directory else tmp).write_text("complete")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name == target.name and Path(src).parent != target.parent:  # the new output landing
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(pipeline.io.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target, directory=directory) as tmp:
            (tmp / "weights.bin" if directory else tmp).write_text("new")
    assert (target / "weights.bin" if directory else target).read_text() == "complete"
    assert _siblings(target) == []


def test_completed_stages_leave_no_temporary_siblings(smoke_workspace):
    """prompts and pretrain (run for the session's workspace) left only their outputs."""
    hidden = [p for folder in (smoke_workspace, smoke_workspace / "prompts", smoke_workspace / "base")
              for p in folder.iterdir() if p.name.startswith(".")]
    assert hidden == []


# -- (b) a real stage killed with SIGKILL ------------------------------------------------------------
def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": UNREACHABLE_TRACKING,
            "PIPELINE_MLFLOW_BUFFER": str(tmp_path / "buffer"), "PYTHONUNBUFFERED": "1"}


# Runs stages.sample and SIGKILLs itself in the middle of writing the output folder: after the
# third PNG of the sample set has been saved (deterministic, unlike a timer).
KILL_MID_WRITE = """
import os, signal, sys
from PIL import Image
original, saved = Image.Image.save, []
def save(self, *args, **kwargs):
    original(self, *args, **kwargs)
    saved.append(args[0] if args else kwargs)
    if len(saved) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
Image.Image.save = save
from stages.sample import main
main(sys.argv[1:])
"""


def test_sample_killed_mid_write_keeps_previous_output(smoke_workspace, tmp_path):
    out = tmp_path / "samples" / "base"
    out.mkdir(parents=True)
    (out / "index.jsonl").write_text('{"prompt": "previous complete run"}\n')
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    result = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, "--params", str(SMOKE_PARAMS), "--model",
         str(smoke_workspace / "base"), "--prompts", str(smoke_workspace / "prompts"), "--out", str(out),
         "--no-progress"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=240)

    assert result.returncode == -signal.SIGKILL, result.stderr
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before, "the previous complete output was changed by an interrupted run"
    debris = _siblings(out)
    assert debris and all(name.startswith(".base.") for name in debris), debris
    partial = [p for name in debris for p in (out.parent / name).rglob("*.png")]
    assert len(partial) == 3, "the kill should have happened mid-write, inside the temporary folder"


def _pretrain_params(tmp_path: Path) -> Path:
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["pretrain"].update(steps=100_000, checkpoint_every=2, log_every=1000)
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pretrain_killed_mid_run_leaves_no_output(smoke_workspace, tmp_path):
    from pipeline.checkpoints import list_checkpoints, resume

    params = _pretrain_params(tmp_path)
    outputs = tmp_path / "data"
    out, metrics, checkpoints = outputs / "models" / "base", outputs / "metrics" / "pretrain.json", tmp_path / "ckpt"
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.pretrain", "--params", str(params), "--prompts",
         str(smoke_workspace / "prompts"), "--out", str(out), "--metrics", str(metrics), "--checkpoints",
         str(checkpoints), "--no-progress"], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(len(list_checkpoints(d)) >= 2 for d in checkpoints.glob("pretrain-*")):
            assert process.poll() is None, f"pretrain ended early: {process.stderr.read()}"
            assert time.monotonic() < deadline, "pretrain wrote no checkpoints in 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # mid-run: training, possibly mid-checkpoint
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()

    assert not out.exists() and not metrics.exists()
    leftovers = [p for p in outputs.rglob("*") if p.is_file()] if outputs.exists() else []
    assert leftovers == [], leftovers
    # Checkpoints are atomic too: whatever was interrupted is a hidden temporary, and the newest
    # visible one loads, so a re-run resumes from it.
    (folder,) = checkpoints.glob("pretrain-*")
    assert all(p.name.startswith(("step-", ".step-")) for p in folder.iterdir())
    states = []
    step = resume(folder, "pretrain", states.append)
    assert step >= 2 and states[0]["model"]


# -- (c) guard: stage code writes declared outputs only through atomic helpers ---------------------
WRITER_MODULES = sorted((ROOT / "stages").glob("*.py")) + [
    ROOT / "pipeline" / name for name in ("io.py", "samples.py", "checkpoints.py", "report/build.py",
                                          "evaluation/compare.py")]
WRITE_METHODS = {"write_text", "write_bytes", "to_csv", "savefig", "save_pretrained", "save", "to_json",
                 "to_parquet", "dump"}


def _is_atomic_with(node: ast.With) -> bool:
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
            func = call.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name == "atomic_path":
                return True
    return False


def _write_mode(node: ast.Call, position: int) -> bool:
    mode = node.args[position] if len(node.args) > position else next(
        (k.value for k in node.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")


def _is_write(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name) and func.id == "open":
        return _write_mode(node, 1)
    if isinstance(func, ast.Attribute):
        if func.attr == "open":
            return _write_mode(node, 0)
        if func.attr == "to_csv":  # without a path it returns the text (handed to write_text)
            return bool(node.args) or any(k.arg == "path_or_buf" for k in node.keywords)
        if func.attr in ("dump", "save", "to_json"):
            return bool(node.args)
        return func.attr in WRITE_METHODS
    return False


def _names_tmp(node: ast.Call) -> bool:
    """The call's receiver or arguments mention a variable named tmp* (a path atomic_path yielded)."""
    parts = [node.func.value] if isinstance(node.func, ast.Attribute) else []
    parts += node.args + [k.value for k in node.keywords]
    return any(isinstance(n, ast.Name) and n.id.startswith("tmp") for part in parts for n in ast.walk(part))


def non_atomic_writes(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: call` for each write call that is neither inside `with atomic_path(...)` nor on a tmp path."""
    offenders: list[str] = []

    def visit(node: ast.AST, atomic: bool) -> None:
        if isinstance(node, ast.With) and _is_atomic_with(node):
            atomic = True
        if isinstance(node, ast.Call) and _is_write(node) and not atomic and not _names_tmp(node):
            offenders.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:100]}")
        for child in ast.iter_child_nodes(node):
            visit(child, atomic)

    visit(ast.parse(source), False)
    return offenders


def test_stages_write_outputs_only_through_atomic_helpers():
    offenders = []
    for path in WRITER_MODULES:
        offenders += non_atomic_writes(path.read_text(), str(path.relative_to(ROOT)))
    assert offenders == [], "writes outside atomic_path / write_* helpers:\n" + "\n".join(offenders)


def test_guard_flags_direct_writes():
    flagged = non_atomic_writes(
        "Path(args.metrics).write_text(text)\n"
        "open(args.out, 'w').write('x')\n"
        "with open(args.out, mode='wb') as handle: pass\n"
        "frame.to_csv(args.plots, index=False)\n"
        "fig.savefig(args.out)\n"
        "model.save_pretrained(args.out)\n"
        "torch.save(state, path)\n"
        "Path(p).open('a')\n"
    )
    assert len(flagged) == 8, flagged
    allowed = non_atomic_writes(
        "with atomic_path(args.out, directory=True) as folder:\n"
        "    model.save_pretrained(folder)\n"
        "    (folder / 'a.json').write_text('{}')\n"
        "with pipeline.io.atomic_path(args.metrics) as out:\n"
        "    out.write_text(text)\n"
        "tmp.write_text(text)\n"
        "(tmp / name).write_bytes(data)\n"
        "torch.save(state, tmp)\n"
        "text = frame.to_csv(index=False)\n"
        "lines = open(args.params).read()\n"
        "write_json(args.metrics, metrics)\n"
    )
    assert allowed == []
