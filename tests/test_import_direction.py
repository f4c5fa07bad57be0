"""The client never depends on the server: the server imports the client (its stubs, readers, checkpoint), never
the other way. `--engine ray` reaches the server's Ray path through the `semsearch.engines` entry point."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SRC = ROOT / "client" / "src"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (relative imports resolved to `semsearch`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("semsearch" if node.level else (node.module or ""))
    return names


def test_no_client_module_imports_the_server_package():
    files = sorted(CLIENT_SRC.rglob("*.py"))
    assert len(files) > 10  # the walk found the client's sources
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in imported_modules(path) if n.split(".")[0] == "semsearch_server")
        for path in files
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_no_client_source_names_the_server_package_at_all():
    # Not even a string for importlib: the client finds engines by entry point, not by the server's name.
    named = [str(p.relative_to(ROOT)) for p in CLIENT_SRC.rglob("*.py") if "semsearch_server" in p.read_text("utf-8")]
    assert named == []


def test_the_server_registers_the_ray_engine_the_client_looks_up():
    from semsearch.indexer import ENGINES_GROUP

    server = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text("utf-8"))
    assert server["project"]["entry-points"][ENGINES_GROUP]["ray"] == "semsearch_server.bulk:run_bulk_index"
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text("utf-8"))
    assert not [d for d in client["project"]["dependencies"] if d.startswith("semsearch-server")]
