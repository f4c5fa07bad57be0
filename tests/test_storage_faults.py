"""The local store on storage faults, without a model or a mount (tests/test_disk_full.py and
tests/test_fsync_failure.py do it for real, on a tmpfs and with an LD_PRELOAD library, as root).

SQLite's max_page_count makes the database answer SQLITE_FULL exactly as a full disk does; the snapshot
faults are raised where the file layer would raise them.
"""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from semsearch_server.domain import CollectionSettings, Document, ModelFingerprint, Passage
from semsearch_server.errors import DiskFull, StorageFailed
from semsearch_server.files import StagedFiles, SyncFailed, atomic_write
from semsearch_server.index import faiss_store
from semsearch_server.index.base import EmbeddedDocument
from semsearch_server.index.faiss_store import FaissIndexStore
from semsearch_server.index.local_provider import LocalStoreProvider
from semsearch_server.index.vector_index import VectorIndex

FINGERPRINT = ModelFingerprint("fake", "0" * 64, 8, "mean", True, 16, "fake")


def embedded(doc_id: str, text: str, seed: int) -> EmbeddedDocument:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return EmbeddedDocument(Document(doc_id, text), (Passage(0, 0, len(text)),), (v / np.linalg.norm(v))[None, :])


@pytest.fixture
def store(tmp_path):
    store = FaissIndexStore.create(tmp_path / "c", "c", CollectionSettings(), FINGERPRINT, snapshot_every=3)
    yield store
    store.close()


def _limit_pages(store: FaissIndexStore, extra: int) -> None:
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages + extra}")


def test_a_write_that_does_not_fit_is_refused_whole_and_the_next_one_fits_once_there_is_room(store):
    store.upsert([embedded("a", "the first document", 1)])
    _limit_pages(store, 0)
    big = [embedded(f"b{i}", "many words " * 400, i) for i in range(20)]
    with pytest.raises(DiskFull, match=r"disk full: no space left on the file system holding .*none of it"):
        store.upsert(big)
    # Nothing half-applied: not in the database, nor in either index; what was there is intact and served.
    assert store.count() == 1 and store.get([d.document.id for d in big]) == []
    assert store._index.ntotal == 1 and store.search_lexical(["words"], 5, {})[0] == []
    assert [m.doc_id for m in store.search_lexical(["first"], 5, {})[0]] == ["a"]
    store._db.execute("PRAGMA max_page_count = 1073741823")
    assert store.upsert(big) == len(big)  # no restart
    assert store.count() == 21 and store.status().state.value == "ready"


def test_a_staged_file_that_does_not_fit_leaves_the_previous_one_and_no_temporary_file(tmp_path):
    target = tmp_path / "snapshot.bin"
    target.write_bytes(b"previous")

    def write_until_full(path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, write_until_full)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["snapshot.bin"]
    with pytest.raises(OSError), StagedFiles() as staged:
        staged.write(tmp_path / "a", lambda p: p.write_bytes(b"a"))
        staged.write(tmp_path / "b", write_until_full)
    assert os.listdir(tmp_path) == ["snapshot.bin"]  # neither was renamed into place


def test_a_snapshot_that_does_not_fit_is_deferred_not_the_writes_failure(store, monkeypatch, caplog):
    before = json.loads((store.directory / "index.json").read_text())

    def full(path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    # On the class: a snapshot is written from a copy of the live index.
    monkeypatch.setattr(VectorIndex, "write", lambda self, path: full(path))
    monkeypatch.setattr(faiss_store, "SNAPSHOT_RETRY_SECONDS", 0.0)
    caplog.set_level("WARNING")
    # The third write makes a snapshot due: it cannot be written, the write is acknowledged all the same.
    for i in range(3):
        assert store.upsert([embedded(f"d{i}", f"document {i}", i)]) == 1
    assert "snapshot not written" in caplog.text
    assert json.loads((store.directory / "index.json").read_text()) == before
    assert not list(store.directory.glob(".*.tmp"))
    monkeypatch.undo()
    store.upsert([embedded("d3", "document 3", 3)])  # the retry is due: written now
    assert json.loads((store.directory / "index.json").read_text())["seq"] > before["seq"]
    assert "snapshot written again" in caplog.text


def test_a_failed_fsync_of_a_snapshot_takes_the_collection_out_of_service(store, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".index.faiss.tmp"):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.upsert([embedded("d0", "document 0", 0)])
    store.upsert([embedded("d1", "document 1", 1)])
    with pytest.raises(StorageFailed, match="out of service.*snapshot.*fsync failed.*not acknowledged"):
        store.upsert([embedded("d2", "document 2", 2)])  # makes the snapshot due
    for call in (lambda: store.get(["d0"]), lambda: store.upsert([embedded("d3", "x", 3)])):
        with pytest.raises(StorageFailed, match="out of service"):
            call()
    assert store.status().state.value == "failed" and "restarts" in store.status().message
    assert not list(store.directory.glob(".*.tmp"))


def test_sync_failed_is_an_oserror_with_the_path(tmp_path):
    error = SyncFailed(errno.EIO, "fsync failed: Input/output error", str(tmp_path / "f"))
    assert isinstance(error, OSError) and error.errno == errno.EIO and str(tmp_path) in str(error)


def test_a_collection_that_cannot_be_created_for_want_of_space_leaves_nothing(tmp_path, monkeypatch):
    provider = LocalStoreProvider(tmp_path)
    provider.names()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faiss_store, "write_manifest", full)
    with pytest.raises(DiskFull, match="collection 'new' was not created"):
        provider.create("new", CollectionSettings(), FINGERPRINT)
    assert list((tmp_path / "collections").iterdir()) == []
