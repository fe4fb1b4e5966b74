"""The output-path guard: a stage refuses, before any work, an output path that would destroy data.

A stage replaces each output whole (`pipeline.io.atomic_path`), so an output path that is, contains
or lies inside one of the stage's inputs, its other outputs, its checkpoint folder, another stage's
declared output (`dvc.yaml`) or the project's own files would replace or delete them. So would a
folder output at an existing file, or at an existing folder the stage did not write (one without
the file every such folder of the stage holds). Each is refused with both paths named.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import PROJECT_ROOT
from pipeline.errors import OutputPathError

PROJECT_FILES = ("dvc.yaml", "dvc.lock", ".dvc", ".git", "pipeline", "stages", "tests")


@dataclass
class Output:
    arg: str  # the command-line option that names it, e.g. "--out"
    path: str | Path
    folder: bool = False  # replaced whole as a folder (else a file)
    marker: str | None = None  # a file every folder of this kind holds, e.g. "model_index.json"


def _dvc_file() -> Path | None:
    """The dvc.yaml the stage runs under: DVC runs a stage in the folder of its dvc.yaml."""
    for folder in (Path.cwd(), PROJECT_ROOT):
        if (folder / "dvc.yaml").is_file():
            return folder / "dvc.yaml"
    return None


def _paths(entries) -> list[str]:
    """The paths of a dvc.yaml `outs`/`metrics`/`plots`/`deps` list (an entry may be {path: options})."""
    return [p for e in entries or [] for p in ([e] if isinstance(e, str) else list(e))]


def declared(stage: str, dvc_file: Path | None = None) -> tuple[list[tuple[str, Path]], list[Path]]:
    """([(other stage, its output)], this stage's deps) from dvc.yaml, as absolute paths."""
    dvc_file = dvc_file or _dvc_file()
    try:
        stages = yaml.safe_load(dvc_file.read_text())["stages"] if dvc_file else {}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return [], []  # no readable pipeline file: only the stage's own arguments are guarded
    root = dvc_file.parent if dvc_file else Path.cwd()
    others = [(name, _absolute(root / path)) for name, spec in stages.items() if name != stage
              for key in ("outs", "metrics", "plots") for path in _paths(spec.get(key))]
    deps = [_absolute(root / path) for path in _paths((stages.get(stage) or {}).get("deps"))]
    return others, deps


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _overlap(output: Path, other: Path) -> str | None:
    if output == other:
        return "is"
    if other.is_relative_to(output):
        return "contains"
    if output.is_relative_to(other):
        return "lies inside"
    return None


def check_outputs(stage: str, outputs: list[Output], inputs: dict[str, str | Path | None],
                  dvc_file: Path | None = None) -> None:
    """Raise OutputPathError unless every output of `stage` is safe to replace (see the module docstring).
    `inputs` maps each input option (e.g. "--base", "--checkpoints") to its path."""
    others, deps = declared(stage, dvc_file)
    root = (dvc_file or _dvc_file() or PROJECT_ROOT / "dvc.yaml").parent
    guarded = [(f"its input {arg} ({path})", _absolute(path)) for arg, path in inputs.items() if path]
    guarded += [(f"the output of stage {name} in dvc.yaml ({path})", path) for name, path in others]
    guarded += [(f"its source or input in dvc.yaml ({path})", path) for path in deps]
    guarded += [(f"the project's {name}", _absolute(root / name)) for name in PROJECT_FILES
                if (root / name).exists()]
    resolved = [(o, _absolute(o.path)) for o in outputs]
    for index, (output, path) in enumerate(resolved):
        mine = [(f"its output {o.arg} ({o.path})", p) for j, (o, p) in enumerate(resolved) if j != index]
        for label, other in guarded + mine:
            relation = _overlap(path, other)
            if relation:
                raise OutputPathError(f"{output.arg} {output.path}: refusing to write there: it {relation} "
                                      f"{label}, which writing it would replace or delete; expected a path of "
                                      f"its own (e.g. the dvc.yaml default)")
        _check_kind(output, path)


def _check_kind(output: Output, path: Path) -> None:
    if output.folder and path.is_file():
        raise OutputPathError(f"{output.arg} {output.path}: is an existing file; expected a folder (new, empty "
                              "or one this stage wrote), which the stage replaces whole")
    if not output.folder and path.is_dir():
        raise OutputPathError(f"{output.arg} {output.path}: is an existing folder; expected a file path")
    if output.folder and output.marker and path.is_dir() and any(path.iterdir()) \
            and not (path / output.marker).is_file():
        raise OutputPathError(f"{output.arg} {output.path}: is a folder this stage did not write (no "
                              f"{output.marker}), and writing would replace it whole; expected a new or empty "
                              "folder, or one this stage wrote")
