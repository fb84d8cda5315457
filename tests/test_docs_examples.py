"""Every code example in README.md and docs/*.md works, so a broken example fails CI.

- ```python blocks run, in a fresh temporary working directory per file; the blocks of
  one file run in order and share one namespace (a later block may use an earlier one's
  names), like a reader following the page.
- ```bash / ```console / ```sh blocks: each ``bioreason ...`` command is parsed by
  ``build_parser()`` (the subcommand and options exist, values have the right type;
  nothing is run); ``python path/to/script.py`` names a file of the repository;
  ``make target`` names a target of the Makefile.

Markers: HTML comments on the lines right above a fence (invisible on the rendered
page) adapt a block to the test::

    <!-- docs-test: skip REASON -->        not run (python is still compiled)
    <!-- docs-test: slow -->               run only with ``pytest -m slow``
    <!-- docs-test: replace OLD => NEW -->  run with the text OLD replaced by NEW, e.g. a
                                           smaller ``max_steps`` (OLD must occur)

There is no hidden setup: code that writes the file an example reads is a block the
reader sees (a page that needs an input creates it, or names where it comes from).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGUAGES = {"bash", "console", "sh", "shell"}
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(\w+)(.*?)-->", re.DOTALL)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    markers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def marker(self, name: str) -> list[str]:
        return [value for key, value in self.markers if key == name]


def extract_blocks(path: Path) -> list[Block]:
    """Fenced code blocks of a Markdown file with the docs-test markers above them."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence, language = match.groups()
        start = index
        body = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line)
            index += 1
        index += 1  # the closing fence
        blocks.append(
            Block(path, start + 1, language.lower(), "\n".join(body), _markers(lines, start))
        )
    return blocks


def _markers(lines: list[str], fence: int) -> list[tuple[str, str]]:
    """The docs-test comments directly above line ``fence`` (blank lines allowed)."""
    text = "\n".join(lines[:fence]).rstrip()
    found: list[tuple[str, str]] = []
    while text.endswith("-->"):
        start = text.rfind("<!--")
        match = _MARKER.fullmatch(text[start:]) if start >= 0 else None
        if match is None:
            break
        name, value = match.groups()
        value = value.strip()
        found.insert(0, (name, value))
        text = text[:start].rstrip()
    return found


def _blocks(languages: set[str]) -> list[Block]:
    return [b for path in DOC_FILES for b in extract_blocks(path) if b.language in languages]


KNOWN_MARKERS = {"skip", "slow", "replace"}


def _python_files() -> list:
    params = []
    for path in DOC_FILES:
        blocks = [b for b in extract_blocks(path) if b.language == "python"]
        if not blocks:
            continue
        marks = [pytest.mark.slow] if any(b.marker("slow") for b in blocks) else []
        params.append(pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks))
    return params


def _runnable(block: Block) -> str:
    code = block.code
    for rule in block.marker("replace"):
        old, sep, new = rule.partition("=>")
        old, new = old.strip(), new.strip()
        assert sep and old, f"{block.where}: write 'replace OLD => NEW', got {rule!r}"
        assert old in code, f"{block.where}: replace marker: {old!r} is not in the block"
        code = code.replace(old, new)
    return code


@pytest.mark.parametrize("path", _python_files())
def test_python_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs_example__"}
    for block in (b for b in extract_blocks(path) if b.language == "python"):
        unknown = {key for key, _ in block.markers} - KNOWN_MARKERS
        assert not unknown, f"{block.where}: unknown docs-test marker(s) {sorted(unknown)}"
        code = _runnable(block)
        compiled = compile(code, block.where, "exec")
        if block.marker("skip"):
            continue
        try:
            exec(compiled, namespace)
        except Exception as err:
            raise AssertionError(
                f"the example at {block.where} fails: {type(err).__name__}: {err}"
            ) from err


def _commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, argv) of each command in a shell block; continuations joined."""
    commands, pending, first = [], "", 0
    for offset, raw in enumerate(block.code.splitlines(), start=1):
        line = raw.strip()
        if block.language == "console":
            if not line.startswith("$ ") and not pending:
                continue  # output
            line = line.removeprefix("$ ")
        if not pending:
            first = block.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
            words = words[1:]  # VAR=value before the command
        if words:
            commands.append((first, words))
    return commands


def _command_params() -> list:
    params = []
    for block in _blocks(SHELL_LANGUAGES):
        if block.marker("skip"):
            continue
        for line, words in _commands(block):
            where = f"{block.path.relative_to(ROOT)}:{line}"
            params.append(pytest.param(words, id=f"{where} {' '.join(words)[:60]}"))
    return params


@pytest.mark.parametrize("words", _command_params())
def test_command_examples_parse(words, capsys):
    from bioreason.cli import build_parser

    program, args = words[0], words[1:]
    if program == "flock":  # flock LOCKFILE command ...
        program, args = args[1], args[2:]
    if program == "bioreason":
        try:
            build_parser().parse_args(args)
        except SystemExit as exit:
            assert exit.code == 0, f"`{shlex.join(words)}`: {capsys.readouterr().err.strip()}"
    elif program in ("python", "python3") and args and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), f"`{shlex.join(words)}`: no file {args[0]}"
    elif program == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in (a for a in args if "=" not in a and not a.startswith("-")):
            assert re.search(rf"^{re.escape(target)}\s*:", makefile, re.M), (
                f"`{shlex.join(words)}`: the Makefile has no target {target!r}"
            )


def test_the_extractor_reads_fences_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n"
        "<!-- docs-test: replace steps=3000 => steps=3 -->\n"
        "<!-- docs-test: skip\nnot run\n-->\n"
        "```python\nprint(steps=3000)\n```\n\n"
        "```bash\nOMP_NUM_THREADS=1 bioreason simulate \\\n  --out a.h5ad  # comment\n```\n"
        "```\nplain\n```\n"
    )
    python, bash, plain = extract_blocks(page)
    assert python.language == "python" and python.line == 7
    assert python.markers == [("replace", "steps=3000 => steps=3"), ("skip", "not run")]
    assert _runnable(python) == "print(steps=3)"
    assert bash.markers == [] and plain.language == ""
    assert _commands(bash) == [(12, ["bioreason", "simulate", "--out", "a.h5ad"])]


def test_no_page_hides_the_code_that_makes_its_inputs():
    """Issue 20: hidden ``docs-test: setup`` comments wrote the files the tutorials read,
    and the rendered site did not show them; a reader could not follow the page."""
    hidden = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in DOC_FILES
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"<!--\s*docs-test:\s*setup", line)
    ]
    assert not hidden, (
        "hidden setup code (invisible on the site) at " + ", ".join(hidden) + ": make it a "
        "visible block that creates the input, or name where the input comes from"
    )
