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
from typing import Any, Iterator

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


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (run the stage that writes it first)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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
        rows.append(row)
    if not rows:
        raise DataFileError(f"{path}: file is empty; expected at least one JSON line")
    return rows
