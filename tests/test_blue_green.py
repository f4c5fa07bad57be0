"""The README's blue-green recipe, run verbatim with the `semsearch` CLI against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from doc_blocks import block

REPO = Path(__file__).resolve().parents[1]

# The README's recipe (docs -> docs_v1 is live; docs_v2.jsonl holds the new build's documents).
RECIPE = """\
# 1. Build the new version beside the live one (clients keep searching `docs`, i.e. docs_v1).
semsearch collections create docs_v2
semsearch index docs_v2.jsonl --collection docs_v2
# 2. Check it before anyone sees it.
semsearch count --collection docs_v2
semsearch search "how do I reset my password" --collection docs_v2 --top-k 3
# 3. Keep a copy of the old version, then switch every client at once (atomic).
semsearch snapshot create docs_v1
semsearch alias set docs docs_v2
# 4. Roll back, if needed, with one command.
semsearch alias set docs docs_v1
"""

V1 = [{"id": "p1", "text": "To reset your password, call the help desk."}]
V2 = [
    {"id": "p1", "text": "To reset your password, open Settings, then Security, and choose Reset password."},
    {"id": "p2", "text": "Two-factor authentication can be turned on under Settings > Security."},
]


def _cli(*args: str, env: dict) -> str:
    run = subprocess.run([sys.executable, "-m", "semsearch.cli", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_recipe_is_the_readmes():
    found = block("README.md", "blue-green")
    assert found.language == "bash" and found.text + "\n" == RECIPE


def test_the_blue_green_recipe_runs_verbatim(server, tmp_path):
    client = server.client
    client.create_collection("docs_v1")
    client.upsert([(d["id"], d["text"]) for d in V1], collection="docs_v1")
    client.set_alias("docs", "docs_v1")
    (tmp_path / "docs_v2.jsonl").write_text("".join(json.dumps(d) + "\n" for d in V2))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "semsearch"  # `semsearch` as installed, from this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m semsearch.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "SEMSEARCH_ADDRESS": server.address,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{REPO / 'client' / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    try:
        # Up to the switch: docs still names docs_v1 until `alias set`, then docs_v2.
        at = RECIPE.index("# 4.")
        switch, rollback = RECIPE[:at], RECIPE[at:]
        run = subprocess.run(["bash", "-euc", switch], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "alias docs -> docs_v2 (was docs_v1)" in run.stdout
        assert client.list_aliases()["docs"] == "docs_v2"
        assert client.count(collection="docs") == 2
        assert "Settings" in client.search("reset my password", collection="docs", top_k=1)[0].text
        run = subprocess.run(["bash", "-euc", rollback], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert client.list_aliases()["docs"] == "docs_v1"
        assert "help desk" in client.search("reset my password", collection="docs", top_k=1)[0].text
        # The other commands of the CLI.
        assert json.loads(_cli("alias", "list", "--json", env=env))["aliases"] == [
            {"alias": "docs", "collection": "docs_v1"}
        ]
        listed = json.loads(_cli("snapshot", "list", "docs_v1", "--json", env=env))["snapshots"]
        assert [s["document_count"] for s in listed] == [1]
        name = listed[0]["name"]
        assert "restored snapshot" in _cli("snapshot", "restore", name, "docs_v1_copy", env=env)
        assert client.count(collection="docs_v1_copy") == 1
        assert "deleted snapshot" in _cli("snapshot", "delete", name, env=env)
        assert "deleted alias docs" in _cli("alias", "delete", "docs", env=env)
    finally:
        for alias in client.list_aliases():
            client.delete_alias(alias)
        for name in ("docs_v1", "docs_v2", "docs_v1_copy"):
            if name in {c.name for c in client.list_collections()}:
                client.delete_collection(name)
        for snap in client.list_snapshots("docs_v1"):
            client.delete_snapshot(snap.name)
