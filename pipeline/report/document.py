"""A tiny document model (headings, text, tables, figures, code) rendered to HTML and Markdown.

The HTML is self-contained: inline CSS, figures embedded as PNG data URIs, no external URL. The
Markdown references the same figures as PNG files beside it.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
pre { background: #f7f7f7; padding: 0.75rem; overflow-x: auto; font-size: 0.8rem; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str  # file name, e.g. "win_rate.png"
    png: bytes
    caption: str = ""


@dataclass
class Code:
    text: str


Block = Heading | Text | Table | Figure | Code


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    @property
    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


def _html_block(block: Block) -> str:
    e = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}>{e(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.caption or block.name)}">'
                f"<figcaption>{e(block.caption)}</figcaption></figure>")
    if isinstance(block, Code):
        return f"<pre>{e(block.text)}</pre>"
    raise TypeError(f"unknown block {block!r}")


def to_html(doc: Document) -> str:
    body = "\n".join(_html_block(b) for b in doc.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n"
            f"<body><h1>{html.escape(doc.title)}</h1>\n{body}\n</body></html>\n")


def _md_text(value: object) -> str:
    """Text as Markdown shows it literally: names from files (tasks, runs, prompts) can neither open a
    link or an image, nor raw HTML, nor break a table row or a line. Brackets alone stay as they are."""
    text = re.sub(r"([\\`<>|])", r"\\\1", " ".join(str(value).splitlines()))
    return text.replace("](", "]\\(")


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_md_text(block.text)}"
    if isinstance(block, Text):
        return _md_text(block.text)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(map(_md_text, block.headers)) + " |", "|" + "---|" * len(block.headers)]
        lines += ["| " + " | ".join(map(_md_text, row)) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"![{_md_text(block.caption or block.name)}]({block.name})"
    if isinstance(block, Code):  # a fence longer than any run of backticks inside
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", block.text)), default=0))
        return f"{fence}\n{block.text.rstrip()}\n{fence}"
    raise TypeError(f"unknown block {block!r}")


def to_markdown(doc: Document) -> str:
    return f"# {doc.title}\n\n" + "\n\n".join(_md_block(b) for b in doc.blocks) + "\n"
