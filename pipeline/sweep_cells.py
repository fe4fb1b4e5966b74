"""A sweep's cells: a grid of params values (`--set KEY=V1,V2`) or named cells from a YAML file (`--cells`),
each cell a set of params overrides in DVC's `-S` syntax (Hydra's override grammar) and an experiment name."""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import SweepError

KEY = re.compile(r"[A-Za-z_]\w*(\.\w+)*")
PREFIX = re.compile(r"[A-Za-z0-9][\w-]*")
CELL_KEY = "cell"  # the table's column (and figure's axis) of a named cell


@dataclass(frozen=True)
class Cell:
    name: str  # the DVC experiment's name
    values: dict[str, str]  # params key -> value as given on the command line (DVC's -S syntax)
    variant: str | None = None  # its name in a --cells file

    def label(self) -> str:
        return ", ".join([f"cell {self.variant}"] * bool(self.variant) + [f"{k}={v}" for k, v in self.values.items()])

    def overrides(self, present: set[str]) -> list[str]:
        """DVC's `-S` values: `key=value`, or `++key=value` (Hydra's add-or-set) for a key params.yaml lacks."""
        return [f"{'' if key in present else '++'}{key}={value}" for key, value in self.values.items()]


def _override(key: str, text: str):
    """`key=text` parsed as DVC's `-S` parses it (Hydra's override grammar)."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import HydraException

    try:
        return to_hydra_overrides([f"{key}={text}"])[0]
    except HydraException as exc:
        raise SweepError(f"--set {key}: DVC's -S cannot read {text!r} ({str(exc).splitlines()[0]})") from None


def parse_value(key: str, text: str) -> Any:
    """One value as DVC writes it to params.yaml: '0.3' a float, 'null' None, 'red' a string, '[1,2]' a list."""
    return _override(key, text).value()


def hydra_text(value: Any) -> str:
    """A YAML value written in DVC's -S syntax (Hydra's override grammar), so that parse_value gives it back."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_][\w-]*", value) and value.lower() not in ("null", "true", "false", "nan", "inf")
        if "\\" in value:
            raise SweepError(f"cannot write {value!r} as a params value: a backslash (DVC's -S would misread it)")
        return value if plain else "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_text(item)}" for key, item in value.items()) + "}"
    raise SweepError(f"cannot write {value!r} ({type(value).__name__}) as a params value")


def _cell_values(where: str, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(key, str) and KEY.fullmatch(key) for key in raw):
        raise SweepError(f"{where}: expected a mapping of dotted params keys (such as rl.lr) to values, got {raw!r}")
    return {key: hydra_text(value) for key, value in raw.items()}


def read_cells(path: str | Path) -> dict[str, dict[str, str]]:
    """A --cells file -> {cell name: {key: value in DVC's -S syntax}}, `common` merged into every cell."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"--cells {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SweepError(f"--cells {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(raw) - {"common", "cells"}) if isinstance(raw, dict) else []
    if not isinstance(raw, dict) or unknown or not isinstance(raw.get("cells"), dict) or not raw["cells"]:
        raise SweepError(f"--cells {path}: expected the keys 'cells' (a mapping of cell names to params) and "
                         f"optionally 'common'" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    common = _cell_values(f"--cells {path}: common", raw.get("common"))
    found = {}
    for name, values in raw["cells"].items():
        if not isinstance(name, str) or not PREFIX.fullmatch(name):
            raise SweepError(f"--cells {path}: cell name {name!r}: expected letters, digits, '_' and '-'")
        found[name] = {**common, **_cell_values(f"--cells {path}: cell {name}", values)}
    return found


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['a.b=1,2', 'c=x'] -> {'a.b': ['1', '2'], 'c': ['x']}. Values are a Hydra choice list as DVC's -S reads
    it: a comma inside [...] or quotes stays in its value, and range(0,10,2) is 0, 2, 4, 6, 8."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not KEY.fullmatch(key):
            raise SweepError(f"--set {item!r}: expected KEY=V1,V2,... with KEY a dotted params key such as rl.lr")
        if key in grid:
            raise SweepError(f"--set {key}: the key is given twice; list all its values in one --set")
        override = _override(key, text)
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [text.strip()]
        if "" in values or len(set(values)) != len(values):
            raise SweepError(f"--set {key}: expected distinct, non-empty values separated by commas, got {text!r}")
        grid[key] = values
    return grid


def _slug(value: str) -> str:
    """A value as a piece of a git ref name (DVC's experiment names are refs)."""
    return re.sub(r"[^\w.+-]+", "_", value).replace("..", "_").strip("._") or "_"


def cells(grid: dict[str, list[str]], prefix: str, named: dict[str, dict[str, str]] | None = None) -> list[Cell]:
    """Every combination of the grid's values, the last key varying fastest, each named `prefix-leaf=value-...`
    (the key's last part as the leaf, the whole key where two keys share a last part); with `named` cells, each
    of them with each combination, named `prefix-cellname-leaf=value-...` (a grid key overrides a cell's)."""
    if not PREFIX.fullmatch(prefix):
        raise SweepError(f"--name {prefix!r}: expected letters, digits, '_' and '-', starting with a letter or digit")
    if not grid and not named:
        raise SweepError("no grid: give at least one --set KEY=V1,V2,... or --cells FILE")
    leaves = [key.rsplit(".", 1)[-1] for key in grid]
    labels = {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(grid, leaves)}
    found = [Cell("-".join([prefix] + [variant] * bool(variant) + [f"{labels[k]}={_slug(v)}" for k, v in zip(grid, combo)]),
                  {**values, **dict(zip(grid, combo))}, variant)
             for variant, values in (named or {None: {}}).items() for combo in itertools.product(*grid.values())]
    names = [cell.name for cell in found]
    clash = next((cell for cell in found if names.count(cell.name) > 1), None)
    if clash is not None:
        raise SweepError(f"two cells would both be named {clash.name!r} (values that differ only in punctuation); "
                         "write the values alike")
    return found
