"""A local collection's SQLite database: its schema, the writer's connection, the upgrade of format 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    label    INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL,
    seq      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_seq ON documents(seq);
CREATE TABLE IF NOT EXISTS metadata_kv (
    label INTEGER NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (label, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_kv_key_value ON metadata_kv(key, value);
CREATE TABLE IF NOT EXISTS deletions (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO state(key, value) VALUES ('seq', '0');
"""
# Added by format 2 (and by the upgrade of a format-1 database, in upgrade_from_v1).
PASSAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS passages (
    label     INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_label INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    start     INTEGER NOT NULL,
    end       INTEGER NOT NULL,
    vector    BLOB NOT NULL,
    seq       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_label);
CREATE INDEX IF NOT EXISTS passages_seq ON passages(seq);
CREATE TABLE IF NOT EXISTS passage_deletions (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
"""
# Upserts are applied in slices of this many rows' SQL parameters (SQLite's variable limit).
SQL_CHUNK = 500


def connect_database(path: Path, new: bool) -> tuple[sqlite3.Connection, bool]:
    """The writer's connection to a collection's database (WAL, synchronous=FULL): a new one gets the schema,
    an existing one is checked for its tables and upgraded from format 1. Also returns whether the documents
    table still has format 1's vector column (kept, empty).

    Raises:
        sqlite3.DatabaseError: an emptied file, missing tables, or the failure of the upgrade.
    """
    if not new and path.stat().st_size == 0:
        # SQLite would happily treat an emptied file as a new, empty database: silent data loss.
        raise sqlite3.DatabaseError("the file is empty")
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if new:
            db.executescript(SCHEMA + PASSAGE_SCHEMA)
    except sqlite3.Error:  # a full disk, most likely: no connection left open behind the error
        db.close()
        raise
    if new:
        return db, False
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = {"documents", "metadata_kv", "deletions", "state"} - tables
    if missing:
        db.close()
        raise sqlite3.DatabaseError(f"tables missing: {', '.join(sorted(missing))}")
    legacy_vector_column = "vector" in {r[1] for r in db.execute("PRAGMA table_info(documents)")}
    if "passages" not in tables:
        upgrade_from_v1(db)
    return db, legacy_vector_column


def upgrade_from_v1(db: sqlite3.Connection) -> None:
    """Gives a format-1 database its passages table: each document becomes its one passage.

    A passage keeps its document's label, so the FAISS snapshot (labelled by document) stays valid and
    nothing is re-embedded; the documents' own vector column is emptied. One transaction.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in PASSAGE_SCHEMA.strip().split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO passages(label, doc_label, idx, start, end, vector, seq) "
            "SELECT label, label, 0, 0, length(text), vector, seq FROM documents"
        )
        db.execute("INSERT INTO passage_deletions(label, seq) SELECT label, seq FROM deletions")
        db.execute("UPDATE documents SET vector = x''")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
