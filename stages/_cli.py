"""Shared stage plumbing: argument parsing, params loading, one-line errors, tracking."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

import pipeline  # noqa: F401  (sets OMP_WAIT_POLICY and analytics defaults before torch loads)
from pipeline.config import load_params
from pipeline.errors import InputError, ParamsError
from pipeline.params import Params

USER_ERROR_STATUS = 2  # a user's mistake; any other exception is a bug: a traceback and status 1


class _Parser(argparse.ArgumentParser):
    """An argument error is one line with the stage's name, like every other user error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: stage {self.prog.rsplit('.', 1)[-1]}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS)


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"python -m stages.{stage}", description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: a timestamped progress line about every 10%% instead (as in a log)")
    return p


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def load(args: argparse.Namespace, stage: str = "") -> Params:
    params = load_params(args.params)  # validate before torch is even imported
    from pipeline.progress import set_bars
    from pipeline.runtime import configure, device_problem

    set_bars(not getattr(args, "no_progress", False), stage)  # progress lines stay on (pipeline/progress.py)

    problem = device_problem(params.device)
    if problem:
        raise ParamsError(f"{args.params}: {problem}")
    configure(params.seed, params.threads)
    return params


def machine(params: Params) -> str:
    """'2 threads, bf16 autocast' (the resolved `threads` and `model.mixed_precision`) for result lines."""
    precision = ", bf16 autocast" if params.model.mixed_precision == "bf16" else ""
    return f"{params.threads} thread{'s' * (params.threads != 1)}{precision}"


def run_main(stage: str, args: argparse.Namespace, body: Callable[[Params], None]) -> None:
    """Validate params (before any heavy import), then run the stage body.

    Only the project's own input errors (`pipeline.errors.InputError`) are the user's: one line on
    stderr and exit status 2. Anything else is a bug and keeps its traceback (exit status 1).
    """
    try:
        body(load(args, getattr(args, "name", None) or stage))
    except InputError as exc:
        print(f"error: stage {stage}: {exc}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS) from None
