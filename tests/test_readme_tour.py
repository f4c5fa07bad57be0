"""The README runs as written: every block marked `<!-- run: NAME -->` is run against a real server.

Console blocks: each `$ semsearch ...` line runs through the CLI, and its output must start with the lines
the README shows under it, compared by their shape (tests/doc_blocks.py: scores as 0.####, not their digits:
the README's came from `make run`'s default engines, the tests' server runs torch). Python blocks run twice
(a snippet a newcomer re-runs must not fail the second time) and must print. The docs' blocks are run the
same way by tests/test_docs_blocks.py. The blue-green bash block is run by
tests/test_blue_green.py, which checks that it is the README's.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO
from doc_blocks import block, blocks, run_console, run_python

CONSOLE = ["tour", "typed-filters", "explain", "why-not", "indexing"]
PYTHON = ["python", "frameworks"]
# Collections the blocks create, removed after each run.
CREATED = ("wines", "sts", "fish-wines")


def test_every_marked_block_is_run_here_or_by_the_blue_green_test():
    marked = [b.label for b in blocks("README.md") if b.marker == "run"]
    assert sorted(marked) == sorted([*CONSOLE, *PYTHON, "blue-green"])


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
def test_a_console_block_runs_as_written(name, in_a_copy):
    run_console(block("README.md", name))


@pytest.mark.parametrize("name", PYTHON)
def test_a_python_block_runs_twice(name, in_a_copy):
    printed = run_python(block("README.md", name))
    if name == "python":
        lines = printed.splitlines()
        assert lines[0].split()[1] == "w1" and "'year': 2022" in lines[0]  # the filter kept w1 only
        assert len(lines) == 2
