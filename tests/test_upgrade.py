"""A collection written by the previous format (one vector per document, no lexical index) opens,
is upgraded in place without re-embedding, and serves every mode."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
from semsearch_server.domain import ModelFingerprint, SearchMode
from semsearch_server.index.faiss_store import FaissIndexStore

FINGERPRINT = ModelFingerprint("fake", "0" * 64, 8, "mean", True, 16, "fake")
V1_SCHEMA = """
CREATE TABLE documents (label INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL,
                        metadata TEXT NOT NULL, vector BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX documents_seq ON documents(seq);
CREATE TABLE metadata_kv (label INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                          PRIMARY KEY (label, key)) WITHOUT ROWID;
CREATE INDEX metadata_kv_key_value ON metadata_kv(key, value);
CREATE TABLE deletions (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO state(key, value) VALUES ('seq', '3');
"""


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def write_v1_collection(directory) -> dict[str, str]:
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "name": "old",
                "index": {"kind": "flat"},
                "model": FINGERPRINT.to_dict(),
            }
        )
    )
    texts = {"a": "the night train to Vienna", "b": "a ferry to Helsinki", "c": "a tram through Vienna"}
    db = sqlite3.connect(directory / "documents.sqlite3")
    db.executescript(V1_SCHEMA)
    for i, (doc_id, text) in enumerate(texts.items()):
        db.execute(
            "INSERT INTO documents(id, text, metadata, vector, seq) VALUES (?, ?, ?, ?, ?)",
            (doc_id, text, json.dumps({"n": str(i)}), unit(i).tobytes(), i + 1),
        )
        db.execute("INSERT INTO metadata_kv(label, key, value) VALUES (?, 'n', ?)", (i + 1, str(i)))
    db.commit()
    db.close()
    return texts


def test_a_format_1_collection_is_upgraded_and_serves_every_mode(tmp_path):
    directory = tmp_path / "old"
    texts = write_v1_collection(directory)
    store = FaissIndexStore.open(directory, FINGERPRINT)
    try:
        assert store.settings.passages.enabled is False
        assert store.settings.default_mode is SearchMode.DENSE
        assert [d.text for d in store.get(["a", "b", "c"])] == list(texts.values())
        # The stored vectors are served as they are: each document is its one passage.
        matches = store.search_dense(unit(1)[None, :], 3, {})[0]
        assert matches[0].doc_id == "b" and abs(matches[0].score - 1.0) < 1e-5
        assert (matches[0].passage.index, matches[0].passage.start, matches[0].passage.end) == (0, 0, len(texts["b"]))
        lexical = store.search_lexical(["Vienna"], 10, {})[0]
        assert {m.doc_id for m in lexical} == {"a", "c"}
        assert [m.doc_id for m in store.search_lexical(["Vienna"], 10, {"n": "2"})[0]] == ["c"]
    finally:
        store.close()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["passages"]["enabled"] is False
    reopened = FaissIndexStore.open(directory, FINGERPRINT)
    try:
        assert reopened.count() == 3
        assert reopened.search_dense(unit(2)[None, :], 1, {})[0][0].doc_id == "c"
    finally:
        reopened.close()
