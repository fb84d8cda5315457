"""The report as a list of blocks, rendered once to HTML and once to Markdown.

Both files are made from the same blocks, so they hold the same content. All text is
escaped on the way out: HTML with :func:`html.escape`, Markdown table cells with their
pipes and line breaks escaped.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Block",
    "Callout",
    "Code",
    "Figure",
    "GENERATOR",
    "Heading",
    "MARKDOWN_MARK",
    "Paragraph",
    "Table",
    "render_html",
    "render_markdown",
]

#: Marks a report.html as written by :func:`bioreason.report.write_report`.
GENERATOR = '<meta name="generator" content="bioreason write_report">'
#: The first line of a report.md written by :func:`bioreason.report.write_report`.
MARKDOWN_MARK = "<!-- generator: bioreason write_report -->"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2
    anchor: str = ""


@dataclass(frozen=True)
class Paragraph:
    text: str
    muted: bool = False


@dataclass(frozen=True)
class Callout:
    """A box: ``"ok"`` (green), ``"warning"`` (amber) or ``"note"`` (grey)."""

    text: str
    kind: Literal["ok", "warning", "note"] = "note"
    title: str = ""


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG figure; ``name`` is its file stem in ``report_files/``."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Paragraph | Callout | Table | Figure | Code

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 background:#f6f7f9;color:#1d2330;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 32px 48px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:0 0 4px}h2{font-size:1.3em;margin:32px 0 8px;
 border-bottom:2px solid #e3e6eb;padding-bottom:4px}h3{font-size:1.08em;margin:20px 0 6px}
p{margin:6px 0}.muted{color:#5b6475;font-size:.92em}
table{border-collapse:collapse;margin:8px 0 4px;font-size:.86em}
th,td{border:1px solid #d9dde3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}tbody tr:nth-child(even){background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.wide{max-width:100%;overflow-x:auto}
caption{caption-side:bottom;text-align:left;color:#5b6475;font-size:.9em;padding-top:3px}
.box{border-left:6px solid #8a94a6;background:#f1f3f6;padding:10px 14px;margin:12px 0;
 border-radius:4px}.box.ok{border-color:#2e9d5b;background:#eaf7ef}
.box.warning{border-color:#d98c00;background:#fff5e0}.box strong{display:block}
figure{margin:10px 0 14px}figure img{max-width:100%;height:auto;border:1px solid #e3e6eb}
figcaption{color:#5b6475;font-size:.9em}
pre{background:#f3f4f6;padding:8px 10px;overflow-x:auto;font-size:.82em;
 white-space:pre-wrap;word-break:break-all}
nav{font-size:.9em;margin:8px 0}nav a{margin-right:12px;color:#2a5db0}
"""

# Counts the figures that decoded (the browser test reads the result from the DOM).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
});
"""

# Nothing may be fetched: data: images, inline style and script only.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _is_number(text: str) -> bool:
    head = text.split(" ", 1)[0].replace(",", "").lstrip("+-−")
    return bool(head) and (head[0].isdigit() or head in ("n/a", "inf", "nan"))


def _html_block(block: Block) -> str:
    esc = html.escape
    if isinstance(block, Heading):
        anchor = f' id="{esc(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{esc(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        cls = ' class="muted"' if block.muted else ""
        return f"<p{cls}>{esc(block.text)}</p>"
    if isinstance(block, Callout):
        title = f"<strong>{esc(block.title)}</strong>" if block.title else ""
        return f'<div class="box {esc(block.kind)}">{title}{esc(block.text)}</div>'
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{esc(cell)}</td>' if _is_number(cell) else f"<td>{esc(cell)}</td>"
                for cell in row
            )
            + "</tr>"
            for row in block.rows
        )
        caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
        # a table wider than the page scrolls on its own instead of overflowing it
        table = f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f'<div class="wide">{table}</div>'
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
            f"<figcaption>{esc(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Code):
        return f"<pre>{esc(block.text)}</pre>"
    raise TypeError(f"unknown report block {block!r}")


def render_html(title: str, blocks: list[Block], nav: list[tuple[str, str]] = ()) -> str:
    """The report as one self-contained HTML page.

    Parameters
    ----------
    title : str
    blocks : list of Block
    nav : list of (anchor, label)
        Links to the sections, shown under the first heading.

    Returns
    -------
    str
        The page; figures embedded as base64 PNG, no external references.
    """
    parts = []
    links = "".join(f'<a href="#{html.escape(a)}">{html.escape(label)}</a>' for a, label in nav)
    for index, block in enumerate(blocks):
        parts.append(_html_block(block))
        if index == 0 and links:
            parts.append(f"<nav>{links}</nav>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"{GENERATOR}\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(parts) + "\n</main>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _md_text(text: str) -> str:
    # ``*`` as in p* would start emphasis; ``<`` would start raw HTML
    text = text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text}\n{ticks}"


def render_markdown(blocks: list[Block], figure_paths: dict[str, str]) -> str:
    """The report as Markdown, figures referenced by relative path.

    Parameters
    ----------
    blocks : list of Block
    figure_paths : dict of str to str
        Each figure's name -> its path relative to the Markdown file.

    Returns
    -------
    str
        Starting with :data:`MARKDOWN_MARK` on its own line.
    """
    parts = [MARKDOWN_MARK]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + _md_text(block.text))
        elif isinstance(block, Paragraph):
            parts.append(f"*{_md_text(block.text)}*" if block.muted else _md_text(block.text))
        elif isinstance(block, Callout):
            title = f"**{_md_text(block.title)}** " if block.title else ""
            parts.append("> " + title + _md_text(block.text).replace("\n", "\n> "))
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
                "|" + "---|" * len(block.columns),
                *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows),
            ]
            if block.caption:
                lines.append(f"\n*{_md_text(block.caption)}*")
            parts.append("\n".join(lines))
        elif isinstance(block, Figure):
            parts.append(
                f"![{block.name}]({figure_paths[block.name]})\n\n*{_md_text(block.caption)}*"
            )
        elif isinstance(block, Code):
            parts.append(_fence(block.text))
        else:
            raise TypeError(f"unknown report block {block!r}")
    return "\n\n".join(parts) + "\n"
