"""fsync failing with EIO (PostgreSQL's "fsyncgate"): the write is not acknowledged, and the collection is
taken out of service loudly, not carried on as if its files were good; the others keep serving, and a
restart recovers it from what is on disk.

The fault is injected at the file layer: a small shared library (tests/fixtures/fsync_eio.c, built here
with gcc) is LD_PRELOADed into a real server process and makes fsync/fdatasync fail with EIO for chosen
files once a trigger file exists. SQLite calls fsync from C, so no Python-level patch could reach it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ServerProcess
from semsearch import Document, UnavailableError

pytestmark = pytest.mark.slow

FAILED, READY = 2, 1  # COLLECTION_STATE_*


@pytest.fixture(scope="module")
def fsync_eio_library(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc to build the fsync fault-injection library (tests/fixtures/fsync_eio.c)")
    out = tmp_path_factory.mktemp("fault") / "fsync_eio.so"
    result = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(FIXTURES / "fsync_eio.c"), "-ldl"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot build the fsync fault-injection library: {result.stderr.strip()}")
    probe = subprocess.run(
        [sys.executable, "-c", "import os; fd = os.open('/', os.O_RDONLY); os.fsync(fd)"],
        env={"LD_PRELOAD": str(out), "FAULT_FSYNC_TRIGGER": "/", "FAULT_FSYNC_PATTERNS": "/"},
        capture_output=True,
        text=True,
    )
    if "Input/output error" not in probe.stderr:
        pytest.skip(f"LD_PRELOAD does not take effect here (fsync was not intercepted): {probe.stderr.strip()}")
    return out


def docs(prefix: str, n: int) -> list[Document]:
    return [
        Document(f"{prefix}-{i}", f"{prefix} note {i} about rain on the farm and the price of wine") for i in range(n)
    ]


def test_fsync_eio_is_not_acknowledged_and_fails_only_that_collection(fsync_eio_library, tmp_path):
    data = tmp_path / "data"
    collections = data / "collections"
    trigger = tmp_path / "disk-is-failing"
    fault_log = tmp_path / "fsync-eio.log"
    env = {
        "LD_PRELOAD": str(fsync_eio_library),
        "FAULT_FSYNC_TRIGGER": str(trigger),
        # Every file of `victim` (its database's log above all); only the snapshot files of `snapvictim`.
        "FAULT_FSYNC_PATTERNS": f"{collections}/victim/*:{collections}/snapvictim/.*.tmp",
        "FAULT_FSYNC_LOG": str(fault_log),
    }
    # A snapshot every 10 writes while a collection is small.
    server = ServerProcess(data, "--backend", "torch", "--snapshot-every", "10", env=env)
    acked: dict[str, list[Document]] = {"victim": [], "snapvictim": [], "bystander": []}
    try:
        server.start()
        with server.client(timeout=120) as client:
            for name in acked:
                client.create_collection(name)
                batch = docs(f"{name}-before", 9)  # 9 writes: no snapshot due yet
                assert client.upsert(batch, collection=name) == 9
                acked[name] += batch
            snapshot_before = json.loads((collections / "snapvictim" / "index.json").read_text())

            trigger.touch()  # from now on fsync fails with EIO for the victims' files

            # The database's fsync fails: the write is not acknowledged...
            failed_write = docs("victim-failed", 3)
            with pytest.raises(UnavailableError) as info:
                client.upsert(failed_write, collection="victim")
            message = info.value.details
            assert "out of service" in message and "not acknowledged" in message and "restart" in message, message
            assert "documents.sqlite3" in message and "SQLITE_IOERR_FSYNC" in message, message
            assert "victim/documents.sqlite3" in fault_log.read_text(), "the fault was never injected"
            # ... and the collection is not carried on with: reads and writes refused, its status says why.
            with pytest.raises(UnavailableError, match="out of service"):
                client.search("rain", collection="victim")
            with pytest.raises(UnavailableError, match="out of service"):
                client.get(["victim-before-0"], collection="victim")
            with pytest.raises(UnavailableError, match="out of service"):
                client.upsert(docs("victim-later", 1), collection="victim")

            # A snapshot's fsync fails: the write that made it due is not acknowledged either, and the
            # previous snapshot is left as it was.
            with pytest.raises(UnavailableError, match="out of service.*snapshot") as info:
                client.upsert(docs("snapvictim-trigger", 1), collection="snapvictim")
            assert "snapvictim/.index.faiss.tmp" in fault_log.read_text()
            assert json.loads((collections / "snapvictim" / "index.json").read_text()) == snapshot_before
            assert not list((collections / "snapvictim").glob(".*.tmp"))
            with pytest.raises(UnavailableError):
                client.search("rain", collection="snapvictim")

            # The other collections serve on, reads and writes.
            status = {c.name: c for c in client.list_collections()}
            assert status["victim"].state == FAILED, status["victim"]
            assert "SQLITE_IOERR_FSYNC" in status["victim"].status_message, status["victim"]
            assert status["snapvictim"].state == FAILED
            assert status["bystander"].state == READY and status["default"].state == READY
            more = docs("bystander-during", 5)
            assert client.upsert(more, collection="bystander") == 5
            acked["bystander"] += more
            assert client.search("rain", collection="bystander", top_k=1)
            assert client.health() == "SERVING"
        log = server.output()
        assert "CRITICAL" in log and "victim" in log and "out of service" in log

        # A restart (the disk working again) recovers each collection from what is on disk.
        trigger.unlink()
        server.kill()
        server.start()
        with server.client(timeout=120) as client:
            status = {c.name: c.state for c in client.list_collections()}
            assert status == {"default": READY, "victim": READY, "snapvictim": READY, "bystander": READY}
            for name, expected in acked.items():
                found = client.get([d.id for d in expected], collection=name)
                assert [(d.id, d.text) for d in found] == [(d.id, d.text) for d in expected], name
            # A write that was not acknowledged is all there or not at all (here: SQLite rolled it back).
            assert len(client.get([d.id for d in failed_write], collection="victim")) in (0, len(failed_write))
            assert client.upsert(docs("victim-after", 2), collection="victim") == 2
            assert client.search("victim-after note 1", collection="victim", top_k=1)[0].id.startswith("victim")
    finally:
        server.stop()
