"""Shared stage plumbing: argument parsing, params loading, one-line errors, tracking."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import pipeline  # noqa: F401  (sets OMP_WAIT_POLICY and analytics defaults before torch loads)
from pipeline.config import load_params
from pipeline.errors import InputError
from pipeline.params import Params

# The project's own input errors, and what the libraries raise for a missing file or a bad value.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, FileNotFoundError, ValueError, KeyError)


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def load(args: argparse.Namespace) -> Params:
    params = load_params(args.params)  # validate before torch is even imported
    from pipeline.runtime import configure

    configure(params.seed, params.threads)
    return params


def run_main(stage: str, args: argparse.Namespace, body: Callable[[Params], None]) -> None:
    """Validate params (before any heavy import), then run the stage body.

    A user error becomes one line on stderr and exit code 2.
    """
    try:
        body(load(args))
    except USER_ERRORS as exc:
        print(f"error: stage {stage}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
