"""Sweeps as DVC experiments: one experiment per cell of a params grid, then a Markdown table and a PNG figure
built by code from the experiments' stored metrics.

    python -m pipeline.sweep queue --set world.stream.defect_rate=0,0.3 --set rl.lr=5e-5,1e-4 --name gap --run
    python -m pipeline.sweep table --set world.stream.defect_rate=0,0.3 --set rl.lr=5e-5,1e-4 --name gap \\
        --table data/sweeps/gap.md --figure data/sweeps/gap.png
    python -m pipeline.sweep queue --cells sweeps/table5_ppo.yaml --name table5ppo --run

`--cells FILE` names the cells instead (settings that go together, or a list such as rl.tasks, which a grid
cannot spell): a YAML file of `cells: {NAME: {KEY: VALUE, ...}, ...}` and optional `common: {KEY: VALUE}` set in
every cell; with `--set` too, every named cell meets every combination of the grid.

`queue` checks every cell's params.yaml, as DVC's `-S` writes it, against the schema (pipeline/params.py) before it
queues any: one `dvc exp run --queue -S KEY=VALUE ... --name NAME` per cell (`gap-defect_rate=0.3-lr=0.0001`).
`--run` then runs the queue (`dvc exp run --run-all --jobs 1`: every queued experiment, one at a time) and waits.
`table` finds each cell's experiment by name, checks its params, and reads its eval.json from its commit (DVC's cache).
"""
from __future__ import annotations

import argparse
import json
import os
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
from pipeline.sweep_cells import CELL_KEY, Cell, cells, parse_grid, parse_value, read_cells

PARAMS_FILE = "params.yaml"
EVAL_JSON = "data/metrics/eval.json"
@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str  # the experiment's commit (the queued stash while it has none)
    state: str  # queued, running, failed or success
    params: dict[str, Any]  # its params.yaml, flattened to dotted keys
    timestamp: str


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


def _subtree(flat: dict[str, Any], key: str) -> dict[str, Any]:
    """The flattened params at `key` and under it (a list such as rl.tasks is flattened to rl.tasks.0.name, ...)."""
    return {k: v for k, v in flat.items() if k == key or k.startswith(f"{key}.")}


def _shown(flat: dict[str, Any], key: str) -> str:
    found = _subtree(flat, key)
    return repr(found.get(key)) if list(found) in ([], [key]) else repr(found)


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
            if _subtree(exp.params, key) != flatten({key: parse_value(key, text)}):
                raise SweepError(f"experiment {exp.name}: {key} is {_shown(exp.params, key)}, not the cell's {text}: "
                                 "it is of another sweep; choose another --name")
        params = {**exp.params, CELL_KEY: cell.variant} if cell.variant else exp.params
        try:
            runs.append((params, json.loads(dvc.api.read(EVAL_JSON, repo=str(root), rev=exp.rev))))
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
    common.add_argument("--cells", metavar="FILE", help="named cells, a YAML file (sweeps/*.yaml); with --set, "
                        "each cell with each combination of the grid")
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
    t.add_argument("--html", help="the sweep's report, a self-contained HTML page (table, figure, Table 5)")
    t.add_argument("--x", default=None, help="the swept key on the figure's x axis (default: the first --set key, "
                   f"or '{CELL_KEY}' with --cells and no --set)")
    t.add_argument("--allow-missing", action="store_true", help="leave out cells without a successful experiment")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = Path(args.cwd).resolve()
    try:
        grid = parse_grid(args.grid)
        named = read_cells(args.cells) if args.cells else None
        grid_cells = cells(grid, args.name, named)
        if args.command == "queue":
            queue(root, grid_cells, [s for s in args.stages.split(",") if s], args.run)
            return 0
        from pipeline.report.document import to_html, to_markdown
        from pipeline.sweep_table import document, figure  # matplotlib, for tables only

        keys = [CELL_KEY] * bool(named) + list(grid)
        x_key = args.x or (list(grid) or keys)[0]
        if x_key not in keys:
            raise SweepError(f"--x {x_key}: not a swept key; expected one of {', '.join(keys)}")
        runs = collect(root, grid_cells, args.allow_missing)
        png = figure(x_key, keys, runs)
        doc = document(args.name, keys, runs, (Path(args.figure).name, png), x_key)
        write_text(args.table, to_markdown(doc))  # its figure by file name: keep the two side by side
        with atomic_path(args.figure) as tmp:
            tmp.write_bytes(png)
        if args.html:
            write_text(args.html, to_html(doc))
        print(f"sweep {args.name}: {len(runs)} experiments -> " + ", ".join(filter(None, (args.table, args.figure, args.html))))
        return 0
    except InputError as exc:
        print(f"error: sweep {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
