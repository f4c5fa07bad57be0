"""The fenced blocks of README.md and docs/*.md, and the runner that runs them as written.

A block is marked by the line just before its fence:

    <!-- run: NAME -->          a test runs it (tests/test_readme_tour.py, tests/test_docs_blocks.py)
    <!-- not-run: REASON -->    it cannot run here, and why (its semsearch commands are still parsed)

Console blocks: each `$ ` line is a command (a trailing backslash continues it on the next line, `#` starts a
comment), and the lines under it are what a terminal shows, standard output and error together. A command's
output must start with those lines, compared by their shape: a score's digits (0.####), a duration, a rate
and the progress bar's clock are not compared (the docs' figures came from `make run`'s default engines on
a machine of its own, the tests' server runs torch). A shown line `...` stands for any number of lines.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
# Languages whose blocks a reader would type or paste: each must be marked run or not-run.
RUNNABLE = frozenset({"bash", "sh", "shell", "console", "python", "py"})

_FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")
_MARKER = re.compile(r"^<!-- (?P<kind>run|not-run): (?P<label>.*?) -->$")
# What differs from run to run or machine to machine, and what stands in for it when outputs are compared.
_VOLATILE = [
    (re.compile(r"-?\d+\.\d{4}\b"), "0.####"),  # scores
    (re.compile(r"\[[\d:]+<[\d:?]+, *[\d.?]+\w+/s\]"), "[elapsed<left, rate]"),  # tqdm's clock
    (re.compile(r"\b\d+(\.\d+)? (s|ms|docs/s)\b"), r"# \2"),  # durations and rates
]


@dataclass(frozen=True)
class Block:
    """A fenced block: where it is, its language and text, and its marker (`run`, `not-run` or None)."""

    doc: str  # the file's path from the repository's root
    line: int  # the fence's line number
    language: str
    text: str
    marker: str | None
    label: str  # the run block's name, or the reason it is not run

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str | Path) -> list[Block]:
    """Every fenced block of doc (a path, or a name relative to the repository), in order."""
    path = doc if isinstance(doc, Path) else REPO / doc
    name = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(before.strip())
        found.append(
            Block(
                name,
                i + 1,
                fence["language"],
                "\n".join(lines[i + 1 : end]),
                marker["kind"] if marker else None,
                marker["label"] if marker else "",
            )
        )
        i = end + 1
    return found


def block(doc: str, name: str) -> Block:
    """The block of doc marked `<!-- run: name -->`."""
    [found] = [b for b in blocks(doc) if b.marker == "run" and b.label == name]
    return found


@dataclass(frozen=True)
class Step:
    command: str
    argv: list[str]
    shown: list[str]


def console_steps(text: str) -> list[Step]:
    """The commands of a console block, each with the lines shown under it (trailing blank lines dropped)."""
    steps: list[tuple[str, list[str]]] = []
    continued = False
    for line in text.splitlines():
        if continued:
            steps[-1] = (steps[-1][0] + " " + line.strip(), steps[-1][1])
        elif line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
            continue
        continued = line.endswith("\\")
        if continued:
            steps[-1] = (steps[-1][0][:-1].rstrip(), steps[-1][1])
    out = []
    for command, shown in steps:
        while shown and not shown[-1].strip():
            shown.pop()
        out.append(Step(command, shlex.split(command, comments=True), shown))
    return out


def shape(line: str) -> str:
    for pattern, stand_in in _VOLATILE:
        line = pattern.sub(stand_in, line)
    return line.rstrip()


def terminal_lines(text: str) -> list[str]:
    """What a terminal shows of text: a carriage return goes back to the line's start, to be written over."""
    shown = []
    for raw in text.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part) :]
        shown.append(line.rstrip())
    if shown and not shown[-1]:
        shown.pop()
    return shown


def fits(shown: list[str], printed: list[str]) -> bool:
    """Whether printed starts with the shown lines, by shape, a shown `...` standing for any lines."""
    want, have = [shape(line) for line in shown], [shape(line) for line in printed]

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return True
        if want[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(have) + 1))
        return j < len(have) and want[i] == have[j] and match(i + 1, j + 1)

    return match(0, 0)


class _Terminal(io.StringIO):
    encoding = "utf-8"  # as a terminal's: tqdm draws its bar in ASCII on a stream without one


def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """Runs `semsearch ARGV` in this process: its exit code and what a terminal would show of its output."""
    from semsearch.cli import main

    printed = _Terminal()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return code, terminal_lines(printed.getvalue())


def run_console(found: Block, exits: Mapping[int, int] | None = None) -> None:
    """Runs each `$ semsearch ...` line of a console block and compares its output with the block's.

    Args:
        found: the block.
        exits: the exit code expected of the n-th command, where it is not 0.
    """
    assert found.language == "console", f"{found.where}: a {found.language!r} block, not a console one"
    steps = console_steps(found.text)
    assert steps, f"{found.where}: no `$ ` command"
    for index, step in enumerate(steps):
        assert step.argv[0] == "semsearch", f"{found.where}: `{step.command}` is not a semsearch command"
        code, printed = run_cli(step.argv[1:])
        expected = (exits or {}).get(index, 0)
        assert code == expected, f"{found.where}: `{step.command}` exited {code}, not {expected}:\n" + "\n".join(
            printed
        )
        assert fits(step.shown, printed), (
            f"{found.where}: `{step.command}` printed what the block does not show.\nshown:\n"
            + "\n".join(step.shown)
            + "\nprinted:\n"
            + "\n".join(printed)
        )


def run_python(found: Block, times: int = 2) -> str:
    """Runs a python block `times` times (a snippet a reader re-runs must not fail the second time);
    returns what its last run printed, which must not be empty."""
    assert found.language == "python", f"{found.where}: a {found.language!r} block, not a python one"
    code = compile(found.text, found.where, "exec")
    for _ in range(times):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, {"__name__": "__doc_block__"})
        assert printed.getvalue().strip(), f"{found.where}: the block printed nothing"
    return printed.getvalue()


def parse_command(argv: list[str]) -> None:
    """Parses a `semsearch` or `semsearch-server` command line with the real parser, running nothing.

    Raises:
        AssertionError: the parser refuses it (an option that does not exist, a bad value).
    """
    parsers: dict[str, Callable[[list[str]], object]] = {"semsearch": _parse_client, "semsearch-server": _parse_server}
    assert argv[0] in parsers, f"not a semsearch command: {shlex.join(argv)}"
    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):
            parsers[argv[0]](argv[1:])
    except SystemExit as exc:
        assert exc.code == 0, f"`{shlex.join(argv)}` is refused: {refusal.getvalue().strip()}"


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subcommands' refusing abbreviations: the docs must name each option in full."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _parse_client(argv: list[str]) -> object:
    from semsearch.cli import build_parser

    return _strict(build_parser()).parse_args(argv)


def _parse_server(argv: list[str]) -> object:
    from semsearch_server.config import ConfigError, build_parser, load_config

    try:
        if argv[:1] == ["migrate"]:
            from semsearch_server.migrate import _parse

            known = {o for action in build_parser()._actions for o in action.option_strings}
            unknown = [a for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in known]
            assert set(unknown) <= {"--collection", "--to-store"}, f"`semsearch-server {shlex.join(argv)}`: {unknown}"
            return _parse(argv[1:])
        _strict(build_parser()).parse_args(argv)
        return load_config(argv, environ={})
    except ConfigError as exc:
        raise AssertionError(f"`semsearch-server {shlex.join(argv)}` is refused: {exc}") from None


def inline_code(doc: str | Path) -> list[str]:
    """The inline code spans of doc's prose (outside fenced blocks), each on one line."""
    path = doc if isinstance(doc, Path) else REPO / doc
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def options_of(argv: list[str]) -> set[str]:
    """The long options the command that argv starts with takes (`semsearch SUB...`, `semsearch-server`,
    `semsearch-server migrate`), its subcommands followed as far as argv names them."""
    if argv[0] == "semsearch":
        from semsearch.cli import build_parser

        parser = build_parser()
        for word in argv[1:]:
            subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subparsers and word in subparsers[0].choices:
                parser = subparsers[0].choices[word]
        return {o for action in parser._actions for o in action.option_strings if o.startswith("--")}
    assert argv[0] == "semsearch-server", argv
    from semsearch_server.config import build_parser as server_parser

    options = {o for action in server_parser()._actions for o in action.option_strings if o.startswith("--")}
    return options | ({"--collection", "--to-store"} if argv[1:2] == ["migrate"] else set())
