"""Reading the report's inputs: metrics JSON, the training curves CSV and other runs' metrics.

Every input but eval.json is optional: a missing one is reported in the page, not a crash.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from pipeline.errors import DataFileError
from pipeline.io import read_text
from pipeline.keys import flatten

EVAL_FILE = "eval.json"


def read_metrics(path: str | Path, required: bool = False) -> dict[str, float] | None:
    """A metrics JSON flattened to dotted keys with numeric values; None if missing and not required."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise DataFileError(f"{path}: metrics file not found (run `dvc repro evaluate` first)")
        return None
    return numeric(flatten(read_json_object(path, "a metrics JSON object")))


def read_json_object(path: Path, what: str, lists: bool = False) -> dict | list:
    """A JSON file holding an object (or, with `lists`, a list); DataFileError naming the file otherwise."""
    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); expected {what}") from None
    if not isinstance(data, (dict, list) if lists else dict):
        raise DataFileError(f"{path}: holds a JSON {type(data).__name__}; expected {what}")
    return data


def numeric(flat: dict) -> dict[str, float]:
    """The entries of a flat dict whose values are numbers (bools excluded)."""
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _number(text: str) -> float | str:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def read_curves(path: str | Path) -> list[dict]:
    """Rows of a CSV (train.csv) with numbers parsed and blank cells NaN; [] if the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = list(csv.DictReader(io.StringIO(read_text(path, "finetune's train.csv"), newline="")))
    return [{k: (math.nan if v in ("", None) else _number(v)) if k != "task" else v for k, v in row.items()}
            for row in rows]


def _dvc_exp_runs(node, found: list[tuple[str, dict]]) -> None:
    """Walk `dvc exp show --json` output: every revision with metrics becomes a run."""
    if isinstance(node, list):
        for item in node:
            _dvc_exp_runs(item, found)
        return
    if not isinstance(node, dict):
        return
    data = node.get("data")
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        files = data["metrics"]
        chosen = [v for k, v in files.items() if k.endswith(EVAL_FILE)] or list(files.values())
        metrics: dict[str, float] = {}
        for entry in chosen:
            metrics.update(numeric(flatten((entry or {}).get("data", {}))))
        if metrics:
            found.append((str(node.get("name") or data.get("name") or node.get("rev") or data.get("rev")), metrics))
    for value in node.values():
        if isinstance(value, (list, dict)) and value is not data:
            _dvc_exp_runs(value, found)


def read_runs(specs: list[str]) -> list[tuple[str, dict[str, float]]]:
    """Runs from `NAME=PATH` or `PATH` specs: eval.json files (name: the path's stem, or its folder's
    name for eval.json) or `dvc exp show --json` output (one run per experiment with metrics)."""
    runs: list[tuple[str, dict[str, float]]] = []
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        if not path.is_file():
            raise DataFileError(f"{path}: runs file not found")
        data = read_json_object(path, "an eval.json or `dvc exp show --json` output", lists=True)
        if isinstance(data, list):
            found: list[tuple[str, dict]] = []
            _dvc_exp_runs(data, found)
            runs += [(f"{name}:{n}" if name else n, m) for n, m in found]
        else:
            default = path.parent.name if path.name == EVAL_FILE and path.parent.name else path.stem
            runs.append((name or default, numeric(flatten(data))))
    return runs
