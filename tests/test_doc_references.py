"""Every reference a reader may follow leads somewhere inside the repository.

Docstrings, comments and docs cite files (`docs/method.md`, `bench/RESULTS.md`,
`pipeline/world/panel.py`) and Markdown links point at files and headings. This test reads every
text file git knows (tracked, or new and not ignored) and fails on:
- a path under one of the repository's folders that does not exist;
- a Markdown file named without a folder (`experiments.md`) that no Markdown file of the
  repository is called, unless it is a file the pipeline writes (GENERATED);
- a Markdown link or link definition to a local file that does not exist, or to a heading
  (`#anchor`) the file does not have;
- outside the research log, a citation of an issue tracker the reader cannot see.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("docs", "bench", "pipeline", "stages", "tests", "scripts", "experiments")
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt")
TEXT_NAMES = ("Makefile",)
SKIPPED = ("dvc.lock",)
GENERATED = {"report.md"}  # data/report/report.md, written by the report stage
HISTORY = {"docs/experiments.md"}  # the research log keeps its own wording; its links are still checked

FOLDER_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*\w)" % "|".join(FOLDERS))
BARE_MARKDOWN = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
INLINE_LINK = re.compile(r"\]\(([^)\s]+)\)")
LINK_DEFINITION = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
TRACKER = re.compile(r"\bthe\s+issue\b|\bissue's\b|\bissue\s+#\d", re.IGNORECASE)


def _text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in sorted(set(listed)) if (ROOT / name).is_file()
            and (name.endswith(TEXT_SUFFIXES) or Path(name).name in TEXT_NAMES) and name not in SKIPPED]


FILES = _text_files()
MARKDOWN_NAMES = {p.name for p in FILES if p.suffix == ".md"}


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def broken_references(path: Path) -> list[str]:
    text = path.read_text(errors="replace")
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in FOLDER_PATH.finditer(line):
            target = match.group(1).rstrip(".")
            if not (ROOT / target).exists():
                found.append(f"{_rel(path)}:{number}: {target} does not exist")
        for match in BARE_MARKDOWN.finditer(line):
            name = match.group(1)
            if name not in MARKDOWN_NAMES and name not in GENERATED:
                found.append(f"{_rel(path)}:{number}: no {name} in the repository")
        if _rel(path) not in HISTORY and TRACKER.search(line):
            found.append(f"{_rel(path)}:{number}: cites an issue the reader cannot see: {line.strip()!r}")
    if path.suffix == ".md":
        targets = INLINE_LINK.findall(text) + LINK_DEFINITION.findall(text)
        for target in targets:
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                found.append(f"{_rel(path)}: link to {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                found.append(f"{_rel(path)}: link to {target}: no such heading")
    return found


def test_the_checker_sees_what_it_must(tmp_path):
    assert heading_anchors("## E16 — Larger steps (2026-11-26)\n### Clip range 1e-2, not 1e-4") == {
        "e16--larger-steps-2026-11-26", "clip-range-1e-2-not-1e-4"}
    # the samples are split so that this file does not itself hold the references they stand for
    assert FOLDER_PATH.findall("see docs" "/nothing.md and dvc/repo/tests" "/x.py.") == ["docs" "/nothing.md"]
    assert BARE_MARKDOWN.findall("(DESIGN" ".md), data/report/report.md, method.md") == ["DESIGN" ".md", "method.md"]
    assert TRACKER.search("what the " "issue asks") and not TRACKER.search("an issue tracker")
    assert len(FILES) > 50 and any(p.name == "design.md" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_every_reference_leads_inside_the_repository(path):
    broken = broken_references(path)
    assert not broken, "\n".join(broken)
