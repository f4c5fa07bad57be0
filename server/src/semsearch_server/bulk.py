"""Corpus-scale embedding on Ray Data: `semsearch index FILE --engine ray --milvus-uri URI -c NAME`.

For a corpus too large to send through a server's embedder: the documents are read, validated, split and
embedded on a Ray cluster (or a local Ray) and written straight into the collection's Milvus collection,
which every semsearch replica on that Milvus then serves. No server takes part.

The pipeline, and why each stage is where it is:

1. **read** — one Ray Data read task per input file, through the client's own readers and `DocumentSpec`
   (`semsearch.readers`, `semsearch.indexer.open_rows`): the same formats, field options, ids and bad-record
   messages as the gRPC indexer. A file is read by one task (CSV records may span lines and gzip cannot be
   split), which is ~100x faster than embedding it, so one reader feeds many embedding actors.
2. **embed** — `map_batches` on an actor pool (`--workers`, each reserving `--worker-cpus` CPUs and running
   that many inference threads). Every actor builds the server's embedder (`embedding.factory.build_embedder`:
   the same model, the same fast backend, the same agreement check with torch), the server's
   `PassageSplitter`, and validates with the server's `Validator`; it splits and embeds with
   `core.service.embed_documents`, the function Reindex uses. Each actor checks that its model matches the
   collection's fingerprint, so a node with other weights fails the run instead of writing foreign vectors.
3. **write** — the driver, in input order (`preserve_order`), through the Milvus store's own `upsert` (the
   collection opened with the fingerprint check: a collection of another model is refused with
   FAILED_PRECONDITION before anything runs). In input order, a repeated id ends with its last record, as
   with the gRPC indexer, and the checkpoint can name the last line written. Vectors travel to the driver
   (1.5 KB per passage at 384 dimensions); a Milvus insert costs far less than the embedding behind it.

Resuming is the gRPC indexer's: the checkpoint file records, per input file, the last line whose documents
(and every one before) are in Milvus; `--resume` skips those lines at the read. Without `--resume`
everything is written again, and since upsert replaces by id, a re-run leaves the same collection.

Sizing on one machine: the local Ray gets `ceil(workers * worker_cpus) + 1` logical CPUs, so the read task
always finds one (an actor pool holding every CPU starves the read task and the run never progresses).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from semsearch.indexer import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    STDIN,
    Checkpoint,
    Source,
    Stats,
    StopRun,
    _summary,
    open_rows,
    report_run,
    run_state_paths,
)
from semsearch.readers import BadRecord, DocumentSpec

from semsearch_server.config import Limits, default_cache_dir
from semsearch_server.domain import Document, ModelFingerprint, Passage, PassageConfig
from semsearch_server.errors import FailedPrecondition, InvalidArgument, NotFound, SemsearchError, Unavailable
from semsearch_server.index.base import EmbeddedDocument, ModelMismatch

log = logging.getLogger(__name__)

# Documents per map_batches call: large enough for the batch engine to sort by length and fill its batches.
EMBED_BATCH = 256
# Documents per Milvus upsert (one version, one commit marker) and per checkpoint save.
WRITE_BATCH = 1024
# Rows per block the read task yields.
READ_BLOCK = 2048
WRITE_RETRIES = 5

_DOC, _BLANK, _BAD = 0, 1, 2
_READ_SCHEMA = pa.schema(
    [
        ("source", pa.int32()),
        ("line", pa.int64()),
        ("kind", pa.int8()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("meta", pa.string()),  # JSON object of strings
        ("error", pa.string()),
    ]
)


# -- read --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadOptions:
    """What the read tasks need of the command line (picklable)."""

    format: str | None
    id_field: str
    text_field: str
    text_template: str | None
    metadata_fields: tuple[str, ...] | None
    id_prefix: str | None


def read_file(index: int, path: str, after_line: int, options: ReadOptions) -> Iterator[pa.Table]:
    """One input file's records after `after_line`, as blocks of _READ_SCHEMA (documents, blanks, bad ones)."""
    source = Source.of(path)
    prefix = options.id_prefix if options.id_prefix is not None else f"{source.name}:"
    spec = DocumentSpec(options.id_field, options.text_field, options.text_template, options.metadata_fields, prefix)
    columns: dict[str, list] = {name: [] for name in _READ_SCHEMA.names}

    def block() -> pa.Table:
        table = pa.table(columns, schema=_READ_SCHEMA)
        for values in columns.values():
            values.clear()
        return table

    with open_rows(source, options.format, options.text_field) as rows:
        for row in rows:
            if row.line <= after_line:
                continue
            doc_id = text = meta = error = None
            if row.blank:
                kind = _BLANK
            else:
                try:
                    doc = spec.to_document(row)
                    kind, doc_id, text, meta = _DOC, doc.id, doc.text, json.dumps(dict(doc.metadata))
                except BadRecord as exc:
                    kind, error, text = _BAD, str(exc), row.raw
            for name, value in zip(_READ_SCHEMA.names, (index, row.line, kind, doc_id, text, meta, error), strict=True):
                columns[name].append(value)
            if len(columns["line"]) >= READ_BLOCK:
                yield block()
    if columns["line"]:
        yield block()


class InputFiles(Datasource):
    """The input files as a Ray Data source: one read task per file not yet complete."""

    def __init__(self, sources: list[Source], options: ReadOptions) -> None:
        self._sources = sources
        self._options = options

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s.size() or 0 for s in self._sources if not s.complete) or None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        tasks = []
        for index, source in enumerate(self._sources):
            if source.complete:
                continue
            path, after, options = os.path.abspath(source.path), source.after_line, self._options
            metadata = BlockMetadata(num_rows=None, size_bytes=source.size(), input_files=(path,), exec_stats=None)
            tasks.append(
                ReadTask(lambda i=index, p=path, a=after, o=options: read_file(i, p, a, o), metadata, _READ_SCHEMA)
            )
        return tasks


# -- embed -------------------------------------------------------------------------------------------------
_EMBEDDED_SCHEMA = pa.schema(
    [
        *_READ_SCHEMA,
        ("passages", pa.string()),  # JSON [[start, end], ...]
        ("vectors", pa.binary()),  # float32, passages x dimension, row-major
    ]
)


@dataclass(frozen=True)
class EmbedOptions:
    """What the embedding actors need to build the server's embedder (picklable)."""

    model: str
    backend: str
    cache_dir: str
    threads: int
    fingerprint: dict  # the collection's
    passages: dict  # the collection's PassageConfig


class EmbedBatch:
    """A Ray Data actor: the server's embedder, splitter and validator, loaded once per actor."""

    def __init__(self, options: EmbedOptions) -> None:
        logging.basicConfig(level=logging.WARNING)
        from semsearch_server.core.validation import Validator
        from semsearch_server.embedding.factory import build_embedder
        from semsearch_server.embedding.passages import PassageSplitter
        from semsearch_server.embedding.sentence_transformer import default_model_path

        model = options.model or default_model_path()
        self.embedder = build_embedder(model, options.backend, cache_dir=options.cache_dir, threads=options.threads)
        expected = ModelFingerprint.from_dict(options.fingerprint)
        if not expected.is_compatible(self.embedder.fingerprint):
            raise ModelMismatch("(bulk)", expected, self.embedder.fingerprint)
        self.splitter = PassageSplitter.for_model(model, self.embedder.max_seq_length)
        self.validator = Validator(Limits())
        self.passages = PassageConfig.from_dict(options.passages)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from semsearch_server.core.service import embed_documents

        columns = batch.to_pydict()
        kinds, errors = list(columns["kind"]), list(columns["error"])
        docs: list[Document] = []
        positions: list[int] = []
        for i, kind in enumerate(kinds):
            if kind != _DOC:
                continue
            doc = Document(columns["id"][i], columns["text"][i], json.loads(columns["meta"][i]))
            try:
                self.validator.documents([doc], field="document")
            except InvalidArgument as exc:  # the server would refuse it: a bad record like any other
                kinds[i], errors[i] = _BAD, f"the server would refuse it: {exc}"
                continue
            docs.append(doc)
            positions.append(i)
        passages: list[str | None] = [None] * len(kinds)
        vectors: list[bytes | None] = [None] * len(kinds)
        for i, embedded in zip(
            positions, embed_documents(self.embedder, self.splitter, self.passages, docs), strict=True
        ):
            passages[i] = json.dumps([[p.start, p.end] for p in embedded.passages])
            vectors[i] = np.ascontiguousarray(embedded.vectors, dtype=np.float32).tobytes()
        columns.update(kind=kinds, error=errors, passages=passages, vectors=vectors)
        return pa.table(columns, schema=_EMBEDDED_SCHEMA)


def embedded_document(row: dict[str, Any], dimension: int) -> EmbeddedDocument:
    """A row of the embed stage as the store's EmbeddedDocument."""
    spans = json.loads(row["passages"])
    passages = tuple(Passage(i, int(s), int(e)) for i, (s, e) in enumerate(spans))
    vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(passages), dimension)
    doc = Document(row["id"], row["text"], json.loads(row["meta"]))
    return EmbeddedDocument(doc, passages, vectors)


# -- run ---------------------------------------------------------------------------------------------------
def local_ray_cpus(workers: int, worker_cpus: float) -> int:
    """Logical CPUs of a local Ray: every actor's reservation, plus one that the read task can always get."""
    return math.ceil(workers * worker_cpus) + 1


def connect_ray(args: argparse.Namespace) -> None:
    """Joins --ray-address, or starts a local Ray sized for the actors (unless this process already runs one)."""
    if ray.is_initialized():
        return
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=local_ray_cpus(args.workers, args.worker_cpus), include_dashboard=False, log_to_driver=False)


def build_dataset(
    sources: list[Source], options: ReadOptions, embed: EmbedOptions, workers: int, worker_cpus: float
) -> ray.data.Dataset:
    """read -> embed on `workers` actors; rows come out in input order."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    dataset = ray.data.read_datasource(InputFiles(sources, options))
    return dataset.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"options": embed},
        batch_size=EMBED_BATCH,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=worker_cpus,
    )


def _milvus_token(token: str) -> str:
    return Path(token[1:]).read_text().strip() if token.startswith("@") else token


def _cache_dir(args: argparse.Namespace) -> str:
    return args.cache_dir or os.environ.get("SEMSEARCH_CACHE_DIR") or str(default_cache_dir())


def open_collection(args: argparse.Namespace, collection: str):
    """The collection's Milvus store, opened with the fingerprint check against the model the actors will run."""
    from semsearch_server.embedding.reference import ModelReference
    from semsearch_server.embedding.sentence_transformer import default_model_path
    from semsearch_server.index.milvus_provider import MilvusStoreProvider

    running = ModelReference(args.model or default_model_path(), _cache_dir(args)).fingerprint
    for attempt in range(WRITE_RETRIES + 1):  # a Milvus busy sealing segments can miss the connect deadline
        try:
            provider = MilvusStoreProvider(args.milvus_uri, _milvus_token(args.milvus_token), args.milvus_prefix)
            break
        except Unavailable:
            if attempt == WRITE_RETRIES:
                raise
            time.sleep(min(10.0, 0.5 * 2**attempt))
    try:
        return provider, provider.open(collection, running)
    except NotFound:
        provider.close()
        raise NotFound(
            f"collection {collection!r} not found in Milvus at {args.milvus_uri} (prefix {args.milvus_prefix!r}); "
            f"create it through a replica first: semsearch collections create {collection}"
        ) from None
    except BaseException:
        provider.close()
        raise


class Writer:
    """Consumes the embedded rows in input order: upserts into the store, saves the checkpoint, counts."""

    def __init__(self, store, args: argparse.Namespace, sources: list[Source], checkpoint: Checkpoint, stats: Stats,
                 rejects, progress) -> None:  # fmt: skip
        self.store = store
        self.args = args
        self.sources = sources
        self.checkpoint = checkpoint
        self.stats = stats
        self.rejects = rejects
        self.progress = progress
        self.pending: dict[str, EmbeddedDocument] = {}
        self.seen: set[str] = set()
        self.current: tuple[int, int] | None = None  # (source, line) of the last row consumed

    def consume(self, block: pa.Table) -> None:
        dimension = self.store.fingerprint.dimension
        for row in block.to_pylist():
            source, line = int(row["source"]), int(row["line"])
            if self.current is not None and self.current[0] != source:
                self.flush()  # the previous file is done: its last line is written
                self.sources[self.current[0]].complete = True
                self.checkpoint.save()
            self.current = (source, line)
            if row["kind"] == _BLANK:
                self.stats.skipped += 1
            elif row["kind"] == _BAD:
                self._bad(source, line, row)
            else:
                doc = embedded_document(row, dimension)
                if doc.document.id in self.seen:
                    self.stats.duplicates += 1
                    self.pending.pop(doc.document.id, None)  # the last one wins, in its own position
                self.seen.add(doc.document.id)
                self.pending[doc.document.id] = doc
                if len(self.pending) >= WRITE_BATCH:
                    self.flush()
            self.progress.update(1)

    def _bad(self, source: int, line: int, row: dict) -> None:
        self.stats.failed += 1
        name = self.sources[source].name
        if not self.args.skip_bad:
            self.current = (source, line - 1)  # written up to the line before the bad record
            self.flush()
            raise StopRun(f"{name}:{line}: {row['error']} (use --skip-bad to skip such records)", EXIT_BAD_INPUT)
        if self.rejects is not None:
            record = {"file": self.sources[source].path, "line": line, "error": row["error"], "raw": row["text"]}
            self.rejects.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Writes what is pending, then moves the checkpoint to the last row consumed."""
        if self.pending:
            docs = list(self.pending.values())
            self._upsert(docs)
            self.stats.indexed += len(docs)
            self.pending.clear()
        if self.current is not None:
            source = self.sources[self.current[0]]
            source.after_line = max(source.after_line, self.current[1])
            self.checkpoint.save()

    def _upsert(self, docs: list[EmbeddedDocument]) -> None:
        for attempt in range(WRITE_RETRIES + 1):
            try:
                self.store.upsert(docs)
                return
            except Unavailable as exc:
                if attempt == WRITE_RETRIES:
                    raise StopRun(
                        f"Milvus stayed unreachable: {exc}; run again with --resume", EXIT_UNAVAILABLE
                    ) from None
                time.sleep(min(10.0, 0.5 * 2**attempt))
            except InvalidArgument as exc:
                raise StopRun(f"the Milvus store refused a batch: {exc}", EXIT_FAILED) from None

    def finish(self) -> None:
        self.flush()
        for source in self.sources:
            source.complete = True
        self.checkpoint.save()
        self.store.snapshot()  # seal the segments, so that Milvus builds the collection's index over them


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.milvus_uri:
        raise argparse.ArgumentTypeError("--engine ray writes into Milvus: give --milvus-uri (as the replicas')")
    if STDIN in args.files:
        raise argparse.ArgumentTypeError("--engine ray reads files on Ray workers, not standard input ('-')")
    for path in args.files:
        if not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{path}: no such file")
    if args.dry_run or args.create:
        raise argparse.ArgumentTypeError(
            "--dry-run and --create are for the grpc engine; create the collection through a replica "
            "(semsearch collections create NAME), then index with --engine ray"
        )
    if args.worker_cpus <= 0:
        raise argparse.ArgumentTypeError(f"--worker-cpus {args.worker_cpus}: must be > 0")


def run_bulk_index(args: argparse.Namespace) -> int:
    """Runs `semsearch index --engine ray`; returns the exit code (the gRPC indexer's codes, same meanings)."""
    from tqdm import tqdm

    from semsearch_server.core.validation import Validator

    _check_arguments(args)
    collection = Validator(Limits()).collection_name(args.collection)
    sources = [Source.of(path) for path in args.files]
    checkpoint_path, rejects_path = run_state_paths(args)  # a checkpoint always: --dry-run was refused above
    checkpoint = Checkpoint(checkpoint_path, args.collection, sources)
    stats, error = Stats(), None
    started = time.monotonic()
    first_block: float | None = None
    with ExitStack() as stack:
        try:
            try:
                provider, store = open_collection(args, collection)
            except FailedPrecondition as exc:
                raise StopRun(f"FAILED_PRECONDITION: {exc}", EXIT_FAILED) from None
            except Unavailable as exc:
                raise StopRun(str(exc), EXIT_UNAVAILABLE) from None
            except SemsearchError as exc:
                raise StopRun(str(exc), EXIT_FAILED) from None
            stack.callback(provider.close)
            if args.resume:
                checkpoint.restore()
            else:
                checkpoint.save()
            if all(s.complete for s in sources):
                raise _Done
            try:
                connect_ray(args)
            except Exception as exc:  # noqa: BLE001 - Ray raises plain RuntimeErrors and ConnectionErrors
                where = f"join the Ray cluster at {args.ray_address}" if args.ray_address else "start a local Ray"
                raise StopRun(f"could not {where}: {_root_cause(exc)}", EXIT_FAILED) from exc
            options = ReadOptions(args.format, args.id_field, args.text_field, args.text_template,
                                  args.metadata_fields, args.id_prefix)  # fmt: skip
            embed = EmbedOptions(
                model=args.model,
                backend=args.backend,
                cache_dir=os.path.abspath(_cache_dir(args)),
                threads=max(1, round(args.worker_cpus)),
                fingerprint=store.fingerprint.to_dict(),
                passages=store.settings.passages.to_dict(),
            )
            ray.data.DataContext.get_current().enable_progress_bars = False
            progress = stack.enter_context(
                tqdm(unit="doc", file=sys.stderr, disable=args.quiet, dynamic_ncols=True, mininterval=0.5)
            )
            rejects = None
            if rejects_path is not None:
                rejects = stack.enter_context(open(rejects_path, "a" if args.resume else "w", encoding="utf-8"))
            writer = Writer(store, args, sources, checkpoint, stats, rejects, progress)
            dataset = build_dataset(sources, options, embed, args.workers, args.worker_cpus)
            try:
                for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    if first_block is None:  # Ray started, actors loaded the model, the first batch embedded
                        first_block = time.monotonic() - started
                    writer.consume(block)
            except StopRun:
                raise
            except (KeyboardInterrupt, SemsearchError):
                raise
            except Exception as exc:  # a failed Ray task or actor: its cause is in the message
                raise StopRun(
                    f"the Ray pipeline failed: {_root_cause(exc)}; run again with --resume", EXIT_FAILED
                ) from exc
            writer.finish()
        except _Done:
            pass
        except StopRun as exc:
            error = exc
        except KeyboardInterrupt:
            error = StopRun("interrupted; run again with --resume to continue", EXIT_INTERRUPTED)
    stats.seconds = time.monotonic() - started
    summary = _summary(stats, args, checkpoint, rejects_path, error)
    summary["engine"] = "ray"
    # Seconds until the first embedded batch came back: Ray's start and the actors' model load, mostly.
    summary["first_batch_seconds"] = round(first_block, 3) if first_block is not None else None
    return report_run(summary, args, error)


class _Done(Exception):
    """Every input is already complete (--resume): nothing to start."""


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message: Ray wraps a task's exception in several layers."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
