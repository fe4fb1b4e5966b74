"""Atomic file outputs and JSONL reading with errors that name the file and line.

Every declared output is written to a temporary name beside it and renamed, so an interrupted
stage never leaves a half-written file that DVC would accept.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.errors import DataFileError


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp / path.name
    try:
        if directory:
            target.mkdir()
        yield target
        if (path.is_dir() and not path.is_symlink()) or (directory and os.path.lexists(path)):
            # a folder cannot be renamed over: move the previous output aside (into tmp, deleted
            # below) and put it back if the rename fails, so it is never lost before the new one lands
            aside = tmp / f"previous-{path.name}"
            os.replace(path, aside)
            try:
                os.replace(target, path)
            except BaseException:
                os.replace(aside, path)
                raise
        else:
            os.replace(target, path)  # atomic, also over an existing file or link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_text(path: str | Path, what: str = "a text file") -> str:
    """A UTF-8 file's text; DataFileError naming the file when it is missing or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (run the stage that writes it first)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text (byte {exc.start}); expected {what}") from None


def read_jsonl(path: str | Path, required: tuple[str, ...] = (),
               check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """The rows of a JSON-lines file; each must be an object with the `required` keys, and `check(row)`,
    when given, returns what is wrong with a row (or None)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(read_text(path, "JSON lines").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{number}: malformed JSON line: {exc.msg}") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise DataFileError(f"{path}:{number}: missing key(s) {missing}")
        problem = check(row) if check else None
        if problem:
            raise DataFileError(f"{path}:{number}: {problem}")
        rows.append(row)
    if not rows:
        raise DataFileError(f"{path}: file is empty; expected at least one JSON line")
    return rows
