"""Sweeps as DVC experiments: one experiment per cell of a params grid, then a Markdown table and a PNG figure
built by code from the experiments' stored metrics.

    python -m pipeline.sweep queue --set world.stream.defect_rate=0,0.3 --set rl.lr=5e-5,1e-4 --name gap --run
    python -m pipeline.sweep table --set world.stream.defect_rate=0,0.3 --set rl.lr=5e-5,1e-4 --name gap \\
        --table data/sweeps/gap.md --figure data/sweeps/gap.png

`queue` checks every cell's params.yaml, as DVC's `-S` writes it, against the schema (pipeline/params.py) before it
queues any: one `dvc exp run --queue -S KEY=VALUE ... --name NAME` per cell (`gap-defect_rate=0.3-lr=0.0001`).
`--run` then runs the queue (`dvc exp run --run-all --jobs 1`: every queued experiment, one at a time) and waits.
`table` finds each cell's experiment by name, checks its params, and reads its eval.json from its commit (DVC's cache).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import pipeline  # noqa: F401  (environment defaults: analytics off, MPLCONFIGDIR)
from pipeline.config import parse_params
from pipeline.errors import InputError, ParamsError, SweepError
from pipeline.io import atomic_path, write_text
from pipeline.keys import flatten

PARAMS_FILE = "params.yaml"
EVAL_JSON = "data/metrics/eval.json"
KEY = re.compile(r"[A-Za-z_]\w*(\.\w+)*")
PREFIX = re.compile(r"[A-Za-z0-9][\w-]*")


@dataclass(frozen=True)
class Cell:
    name: str  # the DVC experiment's name
    values: dict[str, str]  # params key -> value as given on the command line (DVC's -S syntax)

    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.values.items())

    def overrides(self, present: set[str]) -> list[str]:
        """DVC's `-S` values: `key=value`, or `++key=value` (Hydra's add-or-set) for a key params.yaml lacks."""
        return [f"{'' if key in present else '++'}{key}={value}" for key, value in self.values.items()]


@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str  # the experiment's commit (the queued stash while it has none)
    state: str  # queued, running, failed or success
    params: dict[str, Any]  # its params.yaml, flattened to dotted keys
    timestamp: str


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
    if not grid:
        raise SweepError("no grid: give at least one --set KEY=V1,V2,...")
    return grid


def _slug(value: str) -> str:
    """A value as a piece of a git ref name (DVC's experiment names are refs)."""
    return re.sub(r"[^\w.+-]+", "_", value).replace("..", "_").strip("._") or "_"


def cells(grid: dict[str, list[str]], prefix: str) -> list[Cell]:
    """Every combination of the grid's values, the last key varying fastest, each named `prefix-leaf=value-...`
    (the key's last part as the leaf, the whole key where two keys share a last part)."""
    if not PREFIX.fullmatch(prefix):
        raise SweepError(f"--name {prefix!r}: expected letters, digits, '_' and '-', starting with a letter or digit")
    leaves = [key.rsplit(".", 1)[-1] for key in grid]
    labels = {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(grid, leaves)}
    found = [Cell("-".join([prefix] + [f"{labels[k]}={_slug(v)}" for k, v in zip(grid, combo)]), dict(zip(grid, combo)))
             for combo in itertools.product(*grid.values())]
    names = [cell.name for cell in found]
    clash = next((cell for cell in found if names.count(cell.name) > 1), None)
    if clash is not None:
        raise SweepError(f"two cells would both be named {clash.name!r} (values that differ only in punctuation); "
                         "write the values alike")
    return found


def _read_params(path: Path) -> dict:
    if not path.is_file():
        raise SweepError(f"{path}: params file not found; run in the DVC project (or give --cwd DIR)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping of params sections")
    return raw


def present_keys(raw: dict) -> set[str]:
    """Every dotted key of a params mapping and each of its leading parts (rl, rl.tasks, rl.tasks.0, ...)."""
    return {".".join(key.split(".")[:n]) for key in flatten(raw) for n in range(1, key.count(".") + 2)}


def validate(root: Path, grid_cells: list[Cell]) -> set[str]:
    """Each cell's params.yaml, written by DVC's own `-S` override, against the schema: the first bad cell
    raises, naming its key. Returns the keys params.yaml already has (Cell.overrides needs them)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    source = root / PARAMS_FILE
    present = present_keys(_read_params(source))
    with tempfile.TemporaryDirectory() as tmp:
        for cell in grid_cells:
            path = Path(tmp) / PARAMS_FILE
            path.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            try:
                apply_overrides(path, cell.overrides(present))
            except InvalidArgumentError as exc:
                raise SweepError(f"{cell.label()}: DVC's -S cannot set it in {PARAMS_FILE} ({exc.__cause__ or exc})") from None
            try:
                parse_params(_read_params(path), f"{PARAMS_FILE} with {cell.label()}")
            except ParamsError as exc:
                raise SweepError(str(exc)) from None
    return present


def _dvc(root: Path, *args: str, capture: bool = True) -> str:
    """`dvc ARGS` in the project (stage commands find this interpreter's `python` first); its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, text=True, capture_output=capture)
    if done.returncode:
        tail = "\n".join(((done.stdout or "") + (done.stderr or "")).strip().splitlines()[-10:])
        raise SweepError(f"`dvc {shlex.join(args)}` failed in {root} (exit {done.returncode})" + (f":\n{tail}" * bool(tail)))
    return done.stdout or ""


def experiments(root: Path) -> dict[str, Experiment]:
    """The DVC experiments by name: those of HEAD (queued, running, failed or done) and the finished ones of every
    other baseline (`dvc exp list --all-commits` names the baselines, much faster than `dvc exp show
    --all-commits`, which reads every commit); of one name on several baselines, the newest."""
    listed = _dvc(root, "exp", "list", "--all-commits").splitlines()
    baselines = [line[:-1] for line in listed if line.endswith(":") and not line[:1].isspace()]
    found: dict[str, Experiment] = {}
    revs = [part for rev in ["HEAD", *baselines] for part in ("--rev", rev)]
    for baseline in json.loads(_dvc(root, "exp", "show", "--json", "--hide-workspace", *revs)) or []:
        for entry in baseline.get("experiments") or []:
            state = (entry.get("executor") or {}).get("state") or "success"
            for rev in entry.get("revs") or []:
                data = rev.get("data") or {}
                params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
                exp = Experiment(rev.get("name") or entry.get("name") or "", rev["rev"], state, flatten(params),
                                 data.get("timestamp") or "")
                if exp.name and (exp.name not in found or exp.timestamp >= found[exp.name].timestamp):
                    found[exp.name] = exp
    return found


def queue(root: Path, grid_cells: list[Cell], stages: list[str], run: bool) -> None:
    present = validate(root, grid_cells)
    taken = sorted({cell.name for cell in grid_cells} & set(experiments(root)))
    if taken:
        raise SweepError(f"experiment names already in use: {', '.join(taken)}; choose another --name, or remove them "
                         "(dvc exp remove NAME, dvc queue remove NAME)")
    for cell in grid_cells:
        args = ["exp", "run", "--queue", "--name", cell.name]
        args += [part for override in cell.overrides(present) for part in ("-S", override)] + stages
        _dvc(root, *args)
        print(f"queued: dvc {shlex.join(args)}")
    if run:
        _dvc(root, "exp", "run", "--run-all", "--jobs", "1", capture=False)
        found = experiments(root)
        failed = [f"{c.name} ({found[c.name].state if c.name in found else 'not found'})" for c in grid_cells
                  if c.name not in found or found[c.name].state != "success"]
        if failed:
            raise SweepError(f"experiments that did not succeed: {', '.join(failed)}; see dvc queue logs NAME")


def collect(root: Path, grid_cells: list[Cell], allow_missing: bool = False) -> list[tuple[dict, dict]]:
    """(the experiment's params, flattened; its eval.json) for each cell, in grid order. A cell without a successful
    experiment fails, naming it, unless `allow_missing` (then it is left out, with a warning)."""
    import dvc.api
    from dvc.exceptions import DvcException

    found = experiments(root)
    runs, missing = [], []
    for cell in grid_cells:
        exp = found.get(cell.name)
        if exp is None or exp.state != "success":
            missing.append(f"{cell.name} ({exp.state if exp else 'no such experiment'})")
            continue
        for key, text in cell.values.items():
            if exp.params.get(key) != parse_value(key, text):
                raise SweepError(f"experiment {exp.name}: {key} is {exp.params.get(key)!r}, not the cell's {text}: it is "
                                 "of another sweep; choose another --name")
        try:
            runs.append((exp.params, json.loads(dvc.api.read(EVAL_JSON, repo=str(root), rev=exp.rev))))
        except (OSError, ValueError, DvcException) as exc:
            raise SweepError(f"experiment {exp.name}: cannot read its {EVAL_JSON} ({exc})") from None
    if missing and (not allow_missing or not runs):
        raise SweepError(f"cells without a successful experiment: {', '.join(missing)}; run them "
                         "(python -m pipeline.sweep queue ... --run) or pass --allow-missing")
    if missing:
        print(f"warning: left out cells without a successful experiment: {', '.join(missing)}", file=sys.stderr)
    return runs


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", "-S", dest="grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a params key and its values in DVC's -S syntax (repeat for a grid)")
    common.add_argument("--name", default="sweep", help="the experiments' name prefix (default: sweep)")
    common.add_argument("--cwd", default=".", help="the DVC project folder (default: .)")
    p = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    what = "queue one DVC experiment per cell of the grid"
    q = sub.add_parser("queue", parents=[common], help=what, description=what)
    q.add_argument("--stages", default="", help="comma-separated target stages (default: all of dvc.yaml)")
    q.add_argument("--run", action="store_true", help="then run the queue, one experiment at a time, and wait")
    what = "write the Markdown table and PNG figure of a sweep's experiments"
    t = sub.add_parser("table", parents=[common], help=what, description=what)
    t.add_argument("--table", required=True, help="Markdown table to write")
    t.add_argument("--figure", required=True, help="PNG figure to write")
    t.add_argument("--x", default=None, help="the swept key on the figure's x axis (default: the first --set key)")
    t.add_argument("--allow-missing", action="store_true", help="leave out cells without a successful experiment")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = Path(args.cwd).resolve()
    try:
        grid = parse_grid(args.grid)
        grid_cells = cells(grid, args.name)
        if args.command == "queue":
            queue(root, grid_cells, [s for s in args.stages.split(",") if s], args.run)
            return 0
        from pipeline.sweep_table import figure, markdown  # matplotlib, for tables only

        keys, x_key = list(grid), args.x or next(iter(grid))
        if x_key not in grid:
            raise SweepError(f"--x {x_key}: not a swept key; expected one of {', '.join(keys)}")
        runs = collect(root, grid_cells, args.allow_missing)
        write_text(args.table, markdown(args.name, keys, runs))
        with atomic_path(args.figure) as tmp:
            tmp.write_bytes(figure(x_key, keys, runs))
        print(f"sweep {args.name}: {len(runs)} experiments -> {args.table}, {args.figure}")
        return 0
    except InputError as exc:
        print(f"error: sweep {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
