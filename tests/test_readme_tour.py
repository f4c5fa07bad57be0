"""The README's console blocks marked `<!-- run: NAME -->` are run as written against a real server, and each
command's output must start with the lines the README shows (scores compared to their shape, not digits)."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
from conftest import REPO
from semsearch.cli import main

_SCORE = re.compile(r"\d+\.\d{4}\b")


def tour(name: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) of the README block marked `<!-- run: name -->`."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"<!-- run: {name} -->")
    begin = text.index("```console\n", start) + len("```console\n")
    block = text[begin : text.index("\n```", begin)]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def shape(line: str) -> str:
    return _SCORE.sub("0.####", line.rstrip())


@pytest.mark.parametrize("name", ["typed-filters"])
def test_the_readme_tour_runs_as_written(name, server, tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEMSEARCH_ADDRESS", server.address)
    steps = tour(name)
    assert len(steps) >= 5
    try:
        for command, shown in steps:
            argv = shlex.split(command)
            assert argv[0] == "semsearch", command
            capsys.readouterr()
            code = main(argv[1:])
            out = capsys.readouterr().out.splitlines()
            assert code == 0, (command, out)
            assert [shape(line) for line in out[: len(shown)]] == [shape(line) for line in shown], command
    finally:
        if any(c.name == "wines" for c in server.client.list_collections()):
            server.client.delete_collection("wines")
