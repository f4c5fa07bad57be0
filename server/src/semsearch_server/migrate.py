"""`semsearch-server migrate`: copies local collections (FAISS + SQLite under --data-dir) into Milvus.

Texts, metadata, passages, their vectors, the settings and the model fingerprint are copied as stored: no model
is loaded and nothing is embedded. A Milvus collection of the same name that already exists must hold the same
model's vectors and the same settings (otherwise the command refuses and says why); documents already copied
with the same text and metadata are skipped, so an interrupted migration is finished by running it again.

    semsearch-server migrate --data-dir index_data --milvus-uri http://milvus:19530 [--collection NAME ...]

Every other option (--milvus-token, --milvus-prefix, SEMSEARCH_* variables, --config) is the server's, so the
command is given what the replicas will be given. The local server should be stopped while it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from semsearch_server.config import ConfigError, ServerConfig, load_config
from semsearch_server.domain import ModelFingerprint
from semsearch_server.errors import FailedPrecondition, NotFound, SemsearchError
from semsearch_server.index.base import CollectionBroken, EmbeddedDocument, IndexStore, ModelMismatch, StoreProvider
from semsearch_server.index.local_manifest import read_manifest
from semsearch_server.index.local_provider import LocalStoreProvider
from semsearch_server.logs import quiet_third_parties

log = logging.getLogger("semsearch_server.migrate")

BATCH = 256


@dataclass(frozen=True)
class MigrationReport:
    collection: str
    documents: int  # in the local collection
    copied: int
    skipped: int  # already in the target with the same text and metadata
    seconds: float


def migrate_collection(
    source: LocalStoreProvider,
    target: StoreProvider,
    name: str,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> MigrationReport:
    """Copies one local collection into the target store, without embedding anything.

    Raises:
        FailedPrecondition: the target already holds this collection with another model's vectors or other
            settings (nothing is written then).
        NotFound: no local collection of that name.
    """
    started = time.monotonic()
    if name not in source.names():
        raise NotFound(f"collection {name!r}: no such local collection under {source.root}")
    fingerprint = ModelFingerprint.from_dict(read_manifest(source.root / name)["model"])
    local = source.open(name, fingerprint)  # its own model: recovered, vectors loaded, nothing re-embedded
    try:
        remote = _target_collection(target, name, local.settings, fingerprint)
        # Every document of the collection (Explain's table without scores is exactly that list).
        ids = local.score_all("", None, {}, dense=False, lexical=False).doc_ids
        copied = skipped = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            docs = local.get(chunk)
            there = {d.id: d for d in remote.get(chunk)}
            todo = [d for d in docs if there.get(d.id) != d]
            skipped += len(docs) - len(todo)
            if todo:
                passages = local.get_passages([d.id for d in todo])
                remote.upsert([EmbeddedDocument(d, *passages[d.id]) for d in todo])
                copied += len(todo)
            if progress is not None:
                progress(start + len(chunk), len(ids))
        return MigrationReport(name, len(ids), copied, skipped, time.monotonic() - started)
    finally:
        local.close(snapshot=False)


def _target_collection(target: StoreProvider, name: str, settings, fingerprint: ModelFingerprint) -> IndexStore:
    """The target's collection of that name: created with the local settings and model, or an existing one
    that has both."""
    if name not in target.names():
        return target.create(name, settings, fingerprint)
    try:
        remote = target.open(name, fingerprint)
    except ModelMismatch as exc:
        raise FailedPrecondition(
            f"collection {name!r}: the target already holds it with vectors of model {exc.stored.short()}, and the "
            f"local collection's are of model {fingerprint.short()}; delete the target collection (or choose "
            "another --milvus-prefix) to copy it, or `semsearch reindex` one of them first"
        ) from None
    if remote.settings != settings:
        raise FailedPrecondition(
            f"collection {name!r}: the target already holds it with other settings ({remote.settings}) than the "
            f"local collection ({settings}); delete the target collection to copy it"
        )
    return remote


def _parse(argv: Sequence[str]) -> tuple[list[str], ServerConfig]:
    parser = argparse.ArgumentParser(
        prog="semsearch-server migrate",
        description="Copy local collections into Milvus without re-embedding. Other options are the server's "
        "(--data-dir, --milvus-uri, --milvus-token, --milvus-prefix, --config, SEMSEARCH_*).",
    )
    parser.add_argument("--collection", action="append", default=[], help="a collection to copy (default: all)")
    parser.add_argument("--to-store", choices=["milvus"], default="milvus", help="the target store (milvus)")
    args, rest = parser.parse_known_args(argv)
    return args.collection, load_config([*rest, "--store", args.to_store])  # refuses a missing --milvus-uri


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    quiet_third_parties()
    argv = sys.argv[1:] if argv is None else argv
    try:
        names, config = _parse(argv)
    except ConfigError as exc:
        print(f"semsearch-server migrate: {exc}", file=sys.stderr)
        return 2
    from semsearch_server.wiring import build_store_provider

    source = LocalStoreProvider(config.data_dir, config.snapshot_every)
    names = names or source.names()
    if not names:
        print(f"semsearch-server migrate: no local collections under {source.root}", file=sys.stderr)
        return 1
    try:
        target = build_store_provider(config)
    except SemsearchError as exc:
        print(f"semsearch-server migrate: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for name in names:

        def progress(done: int, total: int, name: str = name) -> None:
            log.info("collection %r: %d of %d documents", name, done, total)

        try:
            report = migrate_collection(source, target, name, progress=progress)
        except (SemsearchError, CollectionBroken) as exc:
            print(f"semsearch-server migrate: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(
            f"collection {name!r}: {report.documents} documents, {report.copied} copied, {report.skipped} already "
            f"there, in {report.seconds:.1f}s (vectors copied, nothing embedded)"
        )
    return 1 if failed else 0
