"""Snapshots (local store): point-in-time copies taken while writes go on, restored here or on another server."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
from conftest import InProcessServer
from semsearch import (
    AlreadyExistsError,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

TEXTS = [
    "the cat sat on the mat",
    "a dog chased the ball across the park",
    "stock markets fell sharply on monday",
    "the recipe needs flour, eggs and butter",
    "rain is expected over the weekend",
    "the team won the championship final",
    "a new phone was announced with a larger screen",
    "volcanoes erupt when magma rises to the surface",
]
QUERIES = ["animals playing", "weather forecast", "cooking a cake", "sports victory", "finance news"]


def _snapshots_dir(server) -> Path:
    return server.config.data_dir / "snapshots"


def _searches(client, collection: str) -> list:
    out = []
    for query in QUERIES:
        for mode in ("dense", "lexical", "hybrid"):
            hits = client.search(query, collection=collection, top_k=5, mode=mode)
            out.append([(h.id, round(h.score, 5), h.text, dict(h.metadata)) for h in hits])
    return out


def _state(server) -> tuple:
    """What a refused restore must leave as it was: the collections and the data directory's entries."""
    collections = sorted((c.name, c.document_count) for c in server.client.list_collections())
    entries = sorted(p.name for p in (server.config.data_dir / "collections").iterdir())
    return collections, entries


@pytest.fixture
def filled(client, collection):
    client.upsert([(f"d{i}", text, {"n": i, "kind": "even" if i % 2 == 0 else "odd"}) for i, text in enumerate(TEXTS)],
                  collection=collection)  # fmt: skip
    return collection


def test_a_restored_collection_searches_like_the_source_did_at_the_snapshot(client, filled):
    before = _searches(client, filled)
    snap = client.create_snapshot(filled)
    assert snap.collection == filled and snap.document_count == len(TEXTS) and snap.size_bytes > 0
    assert snap.model_id and snap.created_at.seconds > 0
    assert [s.name for s in client.list_snapshots(filled)] == [snap.name]
    assert snap.name in [s.name for s in client.list_snapshots()]
    # Changes after the snapshot are not in the restored collection.
    client.upsert([("late", "written after the snapshot")], collection=filled)
    client.delete(["d0"], collection=filled)
    restored = "r-" + uuid.uuid4().hex[:8]
    info = client.restore_snapshot(snap.name, restored)
    try:
        assert info.name == restored and info.document_count == len(TEXTS)
        assert _searches(client, restored) == before
        assert client.get(["late"], collection=restored) == []
        assert [d.id for d in client.get(["d0"], collection=restored)] == ["d0"]
        assert client.count(collection=restored, where="n >= 4") == 4
        with pytest.raises(AlreadyExistsError):
            client.restore_snapshot(snap.name, restored)
    finally:
        client.delete_collection(restored)
        client.delete_snapshot(snap.name)
    assert snap.name not in [s.name for s in client.list_snapshots()]
    with pytest.raises(NotFoundError):
        client.delete_snapshot(snap.name)
    with pytest.raises(NotFoundError):
        client.restore_snapshot(snap.name, restored)
    with pytest.raises(InvalidArgumentError):
        client.restore_snapshot("../escape", restored)


def test_a_snapshot_holds_every_write_acknowledged_before_it_and_none_after(client, collection):
    """A writer keeps upserting one document at a time while CreateSnapshot runs."""
    acknowledged: list[tuple[str, int]] = []  # (id, order of acknowledgement)
    started: dict[str, int] = {}
    clock = iter(range(10**9))
    clock_lock = threading.Lock()
    stop = threading.Event()

    def tick() -> int:
        with clock_lock:
            return next(clock)

    def write() -> None:
        i = 0
        while not stop.is_set():
            doc_id = f"w{i}"
            started[doc_id] = tick()
            client.upsert([(doc_id, f"write number {i}")], collection=collection)
            acknowledged.append((doc_id, tick()))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(acknowledged) < 20:
            threading.Event().wait(0.01)
        called = tick()
        snap = client.create_snapshot(collection)
        returned = tick()
        while sum(1 for d, _ in list(acknowledged) if started[d] > returned) < 10 and writer.is_alive():
            threading.Event().wait(0.01)
    finally:
        stop.set()
        writer.join(30)
    before = {d for d, t in acknowledged if t < called}
    after = {d for d, _ in acknowledged if started[d] > returned}
    assert len(before) >= 20 and after
    restored = "r-" + uuid.uuid4().hex[:8]
    client.restore_snapshot(snap.name, restored)
    try:
        ids = {d.id for d in client.scroll(collection=restored, limit=10_000).documents}
        assert before <= ids, sorted(before - ids)[:5]
        assert not ids & after, sorted(ids & after)[:5]
        assert snap.document_count == len(ids)
    finally:
        client.delete_collection(restored)
        client.delete_snapshot(snap.name)


def _rewrite(path: Path, change_info) -> None:
    """Rewrites a snapshot file with its description changed and the checksums made to match again."""
    with tarfile.open(path) as tar:
        info = json.loads(tar.extractfile("snapshot.json").read())
        db = tar.extractfile("documents.sqlite3").read()
    change_info(info)
    info_bytes = json.dumps(info).encode()
    sums = (
        f"{hashlib.sha256(info_bytes).hexdigest()}  snapshot.json\n"
        f"{hashlib.sha256(db).hexdigest()}  documents.sqlite3\n"
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("snapshot.json", info_bytes), ("documents.sqlite3", db), ("SHA256SUMS", sums)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_a_snapshot_restores_on_another_server_and_damaged_or_foreign_files_change_nothing(
    server, client, filled, tmp_path, embedder, explainer
):
    before = _searches(client, filled)
    snap = client.create_snapshot(filled)
    source = _snapshots_dir(server) / f"{snap.name}.snapshot.tar"
    other = InProcessServer(tmp_path / "other", embedder, explainer)
    try:
        target = _snapshots_dir(other)
        target.mkdir(parents=True)
        shutil.copy(source, target / source.name)
        assert [s.name for s in other.client.list_snapshots()] == [snap.name]
        other.client.restore_snapshot(snap.name, "copied")
        assert _searches(other.client, "copied") == before

        # Damaged: one byte of the database flipped.
        damaged = target / "damaged.snapshot.tar"
        data = bytearray(source.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        # Foreign: a valid file (checksums match) of vectors from another model.
        foreign = target / "foreign.snapshot.tar"
        shutil.copy(source, foreign)
        _rewrite(foreign, lambda info: info["manifest"]["model"].update(weights_sha256="0" * 64, dimension=768))
        # Truncated: what a copy cut short leaves.
        truncated = target / "truncated.snapshot.tar"
        truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 3])

        state = _state(other)
        with pytest.raises(DataLossError, match="damaged"):
            other.client.restore_snapshot("damaged", "fromdamaged")
        with pytest.raises(DataLossError):
            other.client.restore_snapshot("truncated", "fromtruncated")
        with pytest.raises(FailedPreconditionError, match="model"):
            other.client.restore_snapshot("foreign", "fromforeign")
        assert _state(other) == state
        # Every file is listed (a damaged one too, so that it can be deleted).
        assert {s.name for s in other.client.list_snapshots()} >= {"damaged", "foreign", "truncated", snap.name}
        for name in ("damaged", "foreign", "truncated"):
            other.client.delete_snapshot(name)
    finally:
        other.stop()
        client.delete_snapshot(snap.name)


def test_snapshots_through_an_alias(client, filled):
    alias = "a-" + uuid.uuid4().hex[:8]
    client.set_alias(alias, filled)
    try:
        snap = client.create_snapshot(alias)
        assert snap.collection == filled
        assert [s.name for s in client.list_snapshots(alias)] == [snap.name]
        with pytest.raises(AlreadyExistsError):
            client.restore_snapshot(snap.name, alias)
        client.delete_snapshot(snap.name)
    finally:
        client.delete_alias(alias)


def test_the_milvus_store_refuses_snapshots_naming_milvus_backup(servers):
    milvus = servers("milvus")
    for call in (
        lambda c: c.create_snapshot(""),
        lambda c: c.list_snapshots(),
        lambda c: c.delete_snapshot("x"),
        lambda c: c.restore_snapshot("x", "y"),
    ):
        with pytest.raises(FailedPreconditionError, match="milvus-backup"):
            call(milvus.client)
