"""The README runs as written: every block marked `<!-- run: NAME -->` is run against a real server.

Console blocks: each `$ semsearch ...` line runs through the CLI, and its output must start with the lines
the README shows under it (scores compared by their shape, 0.####, not their digits: the README's came from
`make run`'s default engines, the tests' server runs torch). Python blocks run twice (a snippet a newcomer
re-runs must not fail the second time) and must print. The blue-green bash block is run by
tests/test_blue_green.py, which checks that it is the README's.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil

import pytest
from conftest import REPO
from semsearch.cli import main

_SCORE = re.compile(r"-?\d+\.\d{4}\b")


def readme_block(name: str, doc: str = "README.md") -> tuple[str, str]:
    """(language, text) of the fenced block marked `<!-- run: name -->` in doc."""
    text = (REPO / doc).read_text()
    start = text.index(f"<!-- run: {name} -->")
    fence = text.index("```", start)
    language_end = text.index("\n", fence)
    end = text.index("\n```", language_end)
    return text[fence + 3 : language_end], text[language_end + 1 : end]


def marked_blocks(doc: str = "README.md") -> list[str]:
    return re.findall(r"<!-- run: ([\w-]+) -->", (REPO / doc).read_text())


def console_steps(block: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def shape(line: str) -> str:
    return _SCORE.sub("0.####", line.rstrip())


CONSOLE = ["tour", "typed-filters", "explain", "why-not", "indexing"]
PYTHON = ["python", "frameworks"]
# Collections the blocks create, removed after each run.
CREATED = ("wines", "sts", "fish-wines")


def test_every_marked_block_is_run_here_or_by_the_blue_green_test():
    assert sorted(marked_blocks()) == sorted([*CONSOLE, *PYTHON, "blue-green"])


@pytest.fixture
def in_a_copy(server, tmp_path, monkeypatch):
    """A working directory with the repository's examples/, and the CLI pointed at the test server."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEMSEARCH_ADDRESS", server.address)
    yield server
    existing = {c.name for c in server.client.list_collections()}
    for name in CREATED:
        if name in existing:
            server.client.delete_collection(name)


@pytest.mark.parametrize("name", CONSOLE)
def test_a_console_block_runs_as_written(name, in_a_copy, capsys):
    language, block = readme_block(name)
    assert language == "console"
    steps = console_steps(block)
    assert steps
    for command, shown in steps:
        argv = shlex.split(command)
        assert argv[0] == "semsearch", command
        capsys.readouterr()
        code = main(argv[1:])
        out = capsys.readouterr().out.splitlines()
        assert code == 0, (command, out)
        assert [shape(line) for line in out[: len(shown)]] == [shape(line) for line in shown], command


@pytest.mark.parametrize("name", PYTHON)
def test_a_python_block_runs_twice(name, in_a_copy):
    language, block = readme_block(name)
    assert language == "python"
    for _ in range(2):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, f"README.md:{name}", "exec"), {"__name__": "__readme__"})
        assert printed.getvalue().strip(), f"the {name} block printed nothing"
    if name == "python":
        lines = printed.getvalue().splitlines()
        assert lines[0].split()[1] == "w1" and "'year': 2022" in lines[0]  # the filter kept w1 only
        assert len(lines) == 2
