"""`semsearch index`: stream files of documents into a collection, resumably, with progress.

The pipeline is a chain of generators (lines -> rows -> documents -> batches -> chunks), so memory
stays constant whatever the input size, except for the set of ids seen so far (one string per unique
id, needed to count duplicates and to order them; see below). Each chunk (``--stream-batches``
batches) goes over its own UpsertStream call; up to ``--concurrency`` chunks are in flight.

Ordering of duplicate ids ("the last one wins"): inside a batch the later record replaces the
earlier one before sending (the server refuses repeated ids in one request); inside a chunk the
stream applies batches in order; a chunk that repeats an id of an *earlier* chunk waits until every
chunk in flight is acknowledged before it is sent, so two streams never race on one id.

Resuming: the checkpoint records, per input file, the line of the last record whose chunk and every
chunk before it were acknowledged. It is rewritten (temp file + rename) only after an
acknowledgement, so a crash at any moment loses at most the chunks in flight, which ``--resume``
sends again (upsert replaces by id, so sending twice is harmless).

Retrying: a chunk whose stream fails with a transient status is sent again, whole, after a pause drawn
with full jitter from [0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)], at most ``--retries`` times, so
clients that failed together (an outage of the store under every replica) come back spread out rather
than in step. Transient: UNAVAILABLE (the server is loading or draining, or its store is unreachable),
DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED *for the stream limit* ("too many open UpsertStreams": another
stream finishing frees a slot). Not retried: any other RESOURCE_EXHAUSTED (a message over the size limit,
a full disk on the server: sending the same chunk again fails the same way until someone acts), nor any
other code. Re-sending a chunk the server had partly stored is safe: each upsert replaces by id, so every
document ends up stored once, and the checkpoint only moves past acknowledged chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from itertools import chain
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from semsearch.client import SearchClient
from semsearch.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SemsearchError,
    UnavailableError,
)
from semsearch.readers import (
    FORMATS,
    STDIN,
    BadRecord,
    DocumentSpec,
    Row,
    count_lines,
    detect_format,
    numbered_lines,
    open_binary,
    read_rows,
)
from semsearch.types import Document

# benchmarks/indexer_throughput.py sweeps 32/64/128/256: throughput is flat within noise (the server
# re-batches for its model), so the default favours smaller units of retry and checkpoint.
DEFAULT_BATCH_SIZE = 64
DEFAULT_STREAM_BATCHES = 16
DEFAULT_CONCURRENCY = 2
# With full jitter the pauses of 10 retries add up to about 33 s on average (at most 66 s): enough to ride
# out a store restarting under the server.
DEFAULT_RETRIES = 10
# One stream carries stream_batches * batch_size documents: a CPU-only server needs seconds for that.
DEFAULT_STREAM_TIMEOUT = 300.0
BACKOFF_BASE, BACKOFF_CAP = 0.5, 10.0

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 3, 4, 130
_RETRYABLE = (UnavailableError, DeadlineExceededError)
# The stream gate's refusals (server transport/streams.py), server-wide and per client address.
_STREAM_LIMIT = "too many open UpsertStreams"
_CHECKPOINT_VERSION = 1
# Where `--engine NAME` is looked up (semsearch-server registers "ray").
ENGINES_GROUP = "semsearch.engines"


# -- arguments -----------------------------------------------------------------------------------------
def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `index` subcommand's arguments (the common connection options come from the CLI)."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="input files; '-' reads standard input")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="input format (default: by extension, else sniffed)",
    )
    fields = parser.add_argument_group("fields")
    fields.add_argument("--id-field", default="id", help="field holding the document id (default: id)")
    fields.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    fields.add_argument("--text-template", help="build the text from fields, e.g. '{title} {text}'")
    fields.add_argument(
        "--metadata-fields",
        type=lambda s: tuple(f.strip() for f in s.split(",") if f.strip()),
        help="comma-separated fields kept as metadata (default: every field not used for id or text)",
    )
    fields.add_argument(
        "--id-prefix",
        help="plain text ids are PREFIX<line number> (default: '<file name>:')",
    )
    fields.add_argument(
        "--timestamp-fields",
        type=lambda s: frozenset(f.strip() for f in s.split(",") if f.strip()),
        default=frozenset(),
        help="comma-separated fields holding timestamps (RFC 3339, e.g. 2024-01-31T12:00:00Z), stored as timestamps",
    )
    fields.add_argument(
        "--string-metadata",
        action="store_true",
        help="store every metadata value as a string (JSON numbers, booleans and lists keep their kinds otherwise)",
    )
    sending = parser.add_argument_group("sending")
    sending.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        help="documents per message (default: %(default)s)",
    )
    sending.add_argument(
        "--stream-batches",
        type=_positive,
        default=DEFAULT_STREAM_BATCHES,
        help="batches per UpsertStream call (default: %(default)s); its deadline is --timeout, default 300 s",
    )
    sending.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help="streams in flight (default: %(default)s)",
    )
    sending.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="retries of a stream on UNAVAILABLE, DEADLINE_EXCEEDED or the server's stream limit, with exponential "
        "backoff and full jitter, 0.5 s doubling up to 10 s (default: %(default)s)",
    )
    sending.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="at most this many documents/s (0: no limit)",
    )
    sending.add_argument(
        "--create",
        action="store_true",
        help="create the collection when it does not exist (with --passages, --window-tokens, --default-mode)",
    )
    new = parser.add_argument_group("a collection made by --create")
    new.add_argument("--index", choices=("flat", "hnsw", "ivf"), default="flat", help="vector index kind")
    from semsearch.cli import add_collection_arguments

    add_collection_arguments(new)
    sending.add_argument("--dry-run", action="store_true", help="parse and validate only; send nothing")
    safety = parser.add_argument_group("re-runs and bad input")
    safety.add_argument(
        "--resume",
        action="store_true",
        help="skip what the checkpoint says is already indexed",
    )
    safety.add_argument(
        "--checkpoint",
        help="checkpoint file (default: <first file>.semsearch-checkpoint.json in --state-dir, else next to the "
        "first file; for stdin in the current directory)",
    )
    safety.add_argument(
        "--state-dir",
        help="writable directory for the default checkpoint and rejects file, for inputs on a read-only mount",
    )
    safety.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip malformed records instead of stopping",
    )
    safety.add_argument(
        "--rejects",
        help="JSONL file listing skipped records (default: next to the checkpoint)",
    )
    add_engine_arguments(parser)
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bar, retry notes or text summary (errors still go to stderr)",
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """`--engine ray`: embed on Ray Data and write straight into Milvus (an installed engine, not this package)."""
    ray = parser.add_argument_group(
        "engine",
        "--engine ray reads and embeds on Ray Data and writes into the collection's Milvus collection, without "
        "a semsearch server; it needs semsearch-server[ray] (torch, the model) where it runs. "
        "--address, --concurrency, --stream-batches, --rate-limit and --retries are for the grpc engine only.",
    )
    ray.add_argument(
        "--engine",
        choices=("grpc", "ray"),
        default="grpc",
        help="grpc: send to a server (default); ray: embed on Ray Data, write into Milvus",
    )
    ray.add_argument("--milvus-uri", help="ray: the Milvus the replicas serve from (as their --milvus-uri)")
    ray.add_argument("--milvus-token", default="", help="ray: Milvus token, or @FILE (as the server's)")
    ray.add_argument("--milvus-prefix", default="semsearch_", help="ray: as the server's (default: %(default)s)")
    ray.add_argument("--ray-address", help="ray: an existing Ray cluster (default: start a local Ray)")
    ray.add_argument("--workers", type=_positive, default=1, help="ray: embedding actors (default: %(default)s)")
    ray.add_argument(
        "--worker-cpus",
        type=float,
        default=1.0,
        help="ray: CPUs each actor reserves and its inference threads (default: %(default)s)",
    )
    ray.add_argument("--model", default="", help="ray: the server's --model (default: the shipped model)")
    ray.add_argument("--backend", default="auto", help="ray: the server's --backend (default: auto)")
    ray.add_argument(
        "--cache-dir",
        help="ray: where model exports are cached (default: $SEMSEARCH_CACHE_DIR, else index_data/cache)",
    )


def run_ray_engine(args: argparse.Namespace) -> int:
    """`semsearch index --engine ray`: hands over to the engine a package registers as "ray" in the
    `semsearch.engines` entry-point group (semsearch-server[ray]: its Ray Data bulk path).

    The client distribution stays free of torch, faiss and ray, and depends on no server package: the
    engine is found by its entry point and imported only here.
    """
    needs = "semsearch-server with its ray extra: pip install 'semsearch-server[ray]'"
    found = entry_points(group=ENGINES_GROUP, name="ray")
    if not found:
        print(f"semsearch index --engine ray: no ray engine is installed; it needs {needs}", file=sys.stderr)
        return EXIT_FAILED
    try:
        run_bulk_index = next(iter(found)).load()
    except ModuleNotFoundError as exc:
        print(f"semsearch index --engine ray: {exc.name} is not installed; it needs {needs}", file=sys.stderr)
        return EXIT_FAILED
    return run_bulk_index(args)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be at least 1")
    return number


# -- data ----------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One input: its path as given, the name used in messages and ids, where to start."""

    path: str
    name: str
    # Records starting at or before this line are done (from the checkpoint).
    after_line: int = 0
    complete: bool = False

    @classmethod
    def of(cls, path: str) -> Source:
        return cls(path, "stdin" if path == STDIN else os.path.basename(path))

    def key(self) -> str:
        return STDIN if self.path == STDIN else os.path.abspath(self.path)

    def size(self) -> int | None:
        return None if self.path == STDIN else os.path.getsize(self.path)


@dataclass
class Chunk:
    """The documents of one UpsertStream call, and the input rows they account for."""

    seq: int
    source: int  # index into the sources
    batches: list[list[Document]] = field(default_factory=list)
    # The input line of each document, per batch: for the server's complaints.
    lines: list[list[int]] = field(default_factory=list)
    first_line: int = 0
    last_line: int = 0  # line of the last row consumed (done or not, e.g. blank)
    rows: int = 0
    # Repeats an id of an earlier chunk: send once everything before is acknowledged.
    barrier: bool = False
    last_of_source: bool = False

    @property
    def documents(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass
class Stats:
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    duplicates: int = 0
    already_done: int = 0
    seconds: float = 0.0


class StopRun(Exception):
    """Ends the run early with an exit code and a message for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- checkpoint ----------------------------------------------------------------------------------------
class Checkpoint:
    """Per-file progress, saved atomically. `path` None (dry runs) keeps it in memory only."""

    def __init__(self, path: Path | None, collection: str, sources: list[Source]) -> None:
        self.path = path
        self.collection = collection
        self.sources = sources

    def restore(self) -> bool:
        """Marks sources as (partly) done from the saved file; False if there is none."""
        if self.path is None or not self.path.exists():
            return False
        saved = json.loads(self.path.read_text(encoding="utf-8"))
        if saved.get("collection") != self.collection:
            raise StopRun(
                f"checkpoint {self.path} is for collection {saved.get('collection')!r}, not {self.collection!r}",
                EXIT_FAILED,
            )
        by_key = {entry["path"]: entry for entry in saved.get("files", [])}
        for source in self.sources:
            entry = by_key.get(source.key())
            if entry is None:
                continue
            if entry.get("size") != source.size() and source.path != STDIN:
                raise StopRun(
                    f"{source.path} changed since checkpoint {self.path} was written; "
                    "run without --resume to index it again",
                    EXIT_FAILED,
                )
            source.after_line, source.complete = entry["last_line"], entry["complete"]
        return True

    def save(self) -> None:
        if self.path is None:
            return
        state = {
            "version": _CHECKPOINT_VERSION,
            "collection": self.collection,
            "files": [
                {
                    "path": s.key(),
                    "size": s.size(),
                    "last_line": s.after_line,
                    "complete": s.complete,
                }
                for s in self.sources
            ],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def default_checkpoint_path(files: list[str], collection: str, state_dir: str | None = None) -> Path:
    """In state_dir when given, else next to the first file; for stdin named after the collection (and in the
    current directory when there is no state_dir)."""
    if files[0] == STDIN:
        name = f"semsearch-stdin-{collection or 'default'}.checkpoint.json"
        return Path(state_dir or ".") / name
    if state_dir:
        return Path(state_dir) / (Path(files[0]).name + ".semsearch-checkpoint.json")
    return Path(files[0] + ".semsearch-checkpoint.json")


def _check_writable(path: Path | None, what: str) -> None:
    """Refuses, before anything is sent, a checkpoint or rejects file that could not be written."""
    if path is None:
        return
    directory = path.parent
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(
            f"{what} {path} cannot be written ({directory} is read-only); "
            "pass --state-dir DIR or --checkpoint PATH on a writable file system"
        )


# -- reading -------------------------------------------------------------------------------------------
@contextmanager
def open_rows(source: Source, fmt: str | None, text_field: str) -> Iterator[Iterator[Row]]:
    """The source's rows; the first line is read ahead to sniff the format when none is given."""
    with open_binary(source.path) as binary:
        lines = numbered_lines(binary)
        if fmt is None:
            first = next(lines, None)
            fmt = detect_format(source.path, first[1] if first else "", text_field)
            lines = chain([first] if first else [], lines)
        yield read_rows(lines, fmt)


class ChunkBuilder:
    """Turns sources into chunks: skips done and blank rows, dedupes, validates, reports bad rows."""

    def __init__(
        self,
        args: argparse.Namespace,
        sources: list[Source],
        stats: Stats,
        rejects: IO[str] | None,
    ):
        self.args = args
        self.sources = sources
        self.stats = stats
        self.rejects = rejects
        self.seen: set[str] = set()  # O(unique ids): the price of counting and ordering duplicates
        self._seq = 0

    def chunks(self) -> Iterator[Chunk]:
        for index, source in enumerate(self.sources):
            if source.complete:
                continue
            spec = self._spec(source)
            with open_rows(source, self.args.format, self.args.text_field) as rows:
                yield from self._source_chunks(index, source, spec, rows)

    def _spec(self, source: Source) -> DocumentSpec:
        a = self.args
        prefix = a.id_prefix if a.id_prefix is not None else f"{source.name}:"
        return DocumentSpec(
            a.id_field,
            a.text_field,
            a.text_template,
            a.metadata_fields,
            prefix,
            typed=not getattr(a, "string_metadata", False),
            timestamp_fields=getattr(a, "timestamp_fields", frozenset()),
        )

    def _source_chunks(self, index: int, source: Source, spec: DocumentSpec, rows: Iterator[Row]) -> Iterator[Chunk]:
        size, per_stream = self.args.batch_size, self.args.stream_batches
        chunk, chunk_ids = self._new_chunk(index), set()
        batch: dict[str, tuple[Document, int]] = {}
        for row in rows:
            if row.line <= source.after_line:
                self.stats.already_done += 1
                continue
            chunk.first_line = chunk.first_line or row.line
            chunk.last_line = row.line
            chunk.rows += 1
            doc = self._document(source, spec, row)
            if doc is None:
                continue
            if doc.id in self.seen:
                self.stats.duplicates += 1
                # Not in this chunk: an earlier chunk has it, possibly still in flight.
                chunk.barrier = chunk.barrier or doc.id not in chunk_ids
                batch.pop(doc.id, None)  # re-insert so the batch keeps input order
            self.seen.add(doc.id)
            chunk_ids.add(doc.id)
            batch[doc.id] = (doc, row.line)
            if len(batch) == size:
                self._close_batch(chunk, batch)
                batch = {}
                if len(chunk.batches) == per_stream:
                    yield chunk
                    chunk, chunk_ids = self._new_chunk(index), set()
        if batch:
            self._close_batch(chunk, batch)
        chunk.last_of_source = True
        yield chunk

    def _new_chunk(self, index: int) -> Chunk:
        self._seq += 1
        return Chunk(self._seq, index)

    @staticmethod
    def _close_batch(chunk: Chunk, batch: dict[str, tuple[Document, int]]) -> None:
        chunk.batches.append([doc for doc, _ in batch.values()])
        chunk.lines.append([line for _, line in batch.values()])

    def _document(self, source: Source, spec: DocumentSpec, row: Row) -> Document | None:
        if row.blank:
            self.stats.skipped += 1
            return None
        try:
            return spec.to_document(row)
        except BadRecord as exc:
            self.stats.failed += 1
            if not self.args.skip_bad:
                message = f"{source.name}:{row.line}: {exc} (use --skip-bad to skip such records)"
                raise StopRun(message, EXIT_BAD_INPUT) from None
            if self.rejects is not None:
                record = {
                    "file": source.path,
                    "line": row.line,
                    "error": str(exc),
                    "raw": row.raw,
                }
                self.rejects.write(json.dumps(record, ensure_ascii=False) + "\n")
            return None


# -- sending -------------------------------------------------------------------------------------------
def is_retryable(exc: SemsearchError) -> bool:
    """Whether sending the same call again later may succeed (see the module docstring: which and why)."""
    if isinstance(exc, _RETRYABLE):
        return True
    return isinstance(exc, ResourceExhaustedError) and _STREAM_LIMIT in exc.details


def backoff_delay(attempt: int) -> float:
    """The pause before retry `attempt` + 1: full jitter, uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def with_retries(call, retries: int, what: str, note) -> Any:
    """call() retried on a transient failure (`is_retryable`) with exponential backoff and full jitter."""
    for attempt in range(retries):
        try:
            return call()
        except SemsearchError as exc:
            if not is_retryable(exc):
                raise
            delay = backoff_delay(attempt)
            reason = "stream limit" if isinstance(exc, ResourceExhaustedError) else ""
            code = f"{exc.code.name} ({reason})" if reason else exc.code.name
            note(f"{what}: {code}, retry {attempt + 1}/{retries} in {delay:.1f} s")
            time.sleep(delay)
    return call()


def _rejected_at(chunk: Chunk, details: str) -> str:
    """The input line(s) an INVALID_ARGUMENT names: the server cites stream message and document index."""
    message, document = (
        re.search(r"stream message (\d+)", details),
        re.search(r"documents\[(\d+)\]", details),
    )
    if message and document:
        i, j = int(message.group(1)), int(document.group(1))
        if i < len(chunk.lines) and j < len(chunk.lines[i]):
            return f"line {chunk.lines[i][j]}"
    return f"lines {chunk.first_line}-{chunk.last_line}"


class Pump:
    """Sends chunks with at most `concurrency` streams in flight; advances the checkpoint over the
    contiguous prefix of acknowledged chunks. `client` None is a dry run: chunks count as accepted."""

    def __init__(self, client: SearchClient | None, args: argparse.Namespace, sources: list[Source],
                 checkpoint: Checkpoint, stats: Stats, progress: tqdm, note) -> None:  # fmt: skip
        self.client = client
        self.args = args
        self.sources = sources
        self.checkpoint = checkpoint
        self.stats = stats
        self.progress = progress
        self.note = note
        self.timeout = args.timeout or DEFAULT_STREAM_TIMEOUT
        self.inflight: dict[Future, Chunk] = {}
        self.acknowledged: dict[int, Chunk] = {}
        self.next_seq = 1
        self.sent_documents = 0
        self.started = time.monotonic()

    def run(self, chunks: Iterable[Chunk]) -> None:
        """Sends every chunk; raises StopRun after letting the streams in flight finish."""
        with ThreadPoolExecutor(self.args.concurrency, thread_name_prefix="index") as pool:
            try:
                for chunk in chunks:
                    self._wait(until=0 if chunk.barrier else self.args.concurrency - 1)
                    self._throttle()
                    self.inflight[pool.submit(self._send, chunk)] = chunk
                    self.sent_documents += chunk.documents
                self._wait(until=0)
            except StopRun:
                self._wait(until=0)  # what finishes still counts and moves the checkpoint
                raise

    def _send(self, chunk: Chunk) -> int:
        if self.client is None or not chunk.batches:
            return chunk.documents
        where = f"{self.sources[chunk.source].name}:{chunk.first_line}-{chunk.last_line}"
        collection, timeout = self.args.collection, self.timeout
        return with_retries(
            lambda: self.client.upsert_stream(chunk.batches, collection=collection, timeout=timeout),
            self.args.retries, where, self.note,
        )  # fmt: skip

    def _throttle(self) -> None:
        if self.args.rate_limit > 0:
            time.sleep(
                max(
                    0.0,
                    self.started + self.sent_documents / self.args.rate_limit - time.monotonic(),
                )
            )

    def _wait(self, until: int) -> None:
        failure: StopRun | None = None
        while len(self.inflight) > until:
            done, _ = wait(self.inflight, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = self.inflight.pop(future)
                try:
                    count = future.result()
                except SemsearchError as exc:
                    self.stats.failed += chunk.documents
                    failure = failure or self._failure(chunk, exc)
                    until = 0
                else:
                    self._acknowledge(chunk, count)
        if failure is not None:
            raise failure

    def _failure(self, chunk: Chunk, exc: SemsearchError) -> StopRun:
        name = self.sources[chunk.source].name
        if isinstance(exc, InvalidArgumentError):
            return StopRun(
                f"{name}, {_rejected_at(chunk, exc.details)}: the server refused: {exc.details}",
                EXIT_FAILED,
            )
        if is_retryable(exc):
            return StopRun(
                f"{name}:{chunk.first_line}-{chunk.last_line}: gave up after {self.args.retries} retries: {exc}; "
                "run again with --resume",
                EXIT_UNAVAILABLE,
            )
        return StopRun(f"{name}:{chunk.first_line}-{chunk.last_line}: {exc}", EXIT_FAILED)

    def _acknowledge(self, chunk: Chunk, count: int) -> None:
        self.stats.indexed += count
        self.progress.update(chunk.rows)
        self.acknowledged[chunk.seq] = chunk
        advanced = False
        while self.next_seq in self.acknowledged:
            done = self.acknowledged.pop(self.next_seq)
            source = self.sources[done.source]
            source.after_line = max(source.after_line, done.last_line)
            source.complete = done.last_of_source
            self.next_seq += 1
            advanced = True
        if advanced:
            self.checkpoint.save()


# -- the command ---------------------------------------------------------------------------------------
def _expected_rows(sources: list[Source], fmt: str | None, text_field: str) -> int | None:
    """Rows still to read, when every input is a regular uncompressed file (else None: no ETA)."""
    total = 0
    for source in sources:
        if source.complete:
            continue
        lines = count_lines(source.path)
        if lines is None:
            return None
        header = 1 if (fmt or detect_format(source.path, "", text_field)) in ("csv", "tsv") else 0
        total += max(0, lines - max(source.after_line, header))
    return total


def _check_inputs(args: argparse.Namespace) -> None:
    if args.files.count(STDIN) > 1:
        raise argparse.ArgumentTypeError("standard input ('-') can be read only once")
    for path in args.files:
        if path != STDIN and not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{path}: no such file")
    if args.resume and args.dry_run:
        raise argparse.ArgumentTypeError("--resume and --dry-run do not mix: a dry run writes no checkpoint")


def _summary(stats: Stats, args: argparse.Namespace, checkpoint: Checkpoint, rejects: Path | None,
             error: StopRun | None) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = asdict(stats)
    out["seconds"] = round(stats.seconds, 3)
    out["docs_per_second"] = round(stats.indexed / stats.seconds, 1) if stats.seconds > 0 else 0.0
    out.update(
        collection=args.collection or "default", dry_run=args.dry_run,
        checkpoint=str(checkpoint.path) if checkpoint.path else None,
        rejects=str(rejects) if rejects and stats.failed else None,
        error=str(error) if error else None, exit_code=error.exit_code if error else EXIT_OK,
    )  # fmt: skip
    return out


def _print_summary(summary: dict[str, Any]) -> None:
    verb = "validated" if summary["dry_run"] else f"indexed into {summary['collection']!r}"
    rate = f"{summary['seconds']:.1f} s, {summary['docs_per_second']:.1f} docs/s"
    print(f"{verb}: {summary['indexed']} documents ({rate})")
    counts = ", ".join(f"{name} {summary[name]}" for name in ("skipped", "failed", "duplicates"))
    resumed = f"; {summary['already_done']} records already done (--resume)" if summary["already_done"] else ""
    print(f"{counts} (duplicates: the last one wins){resumed}")
    for name in ("rejects", "checkpoint"):
        if summary[name]:
            print(f"{name}: {summary[name]}")


def run_index_command(client: SearchClient, args: argparse.Namespace) -> int:
    """Runs `semsearch index`; returns the exit code.

    0 done; 1 the server refused a chunk (or another call failed); 3 the server stayed unreachable
    through every retry; 4 a malformed record (without --skip-bad); 130 interrupted (Ctrl-C).
    """
    _check_inputs(args)
    sources = [Source.of(path) for path in args.files]
    checkpoint_path, rejects_path = run_state_paths(args)
    checkpoint = Checkpoint(checkpoint_path, args.collection, sources)
    stats, error = Stats(), None
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            restored = checkpoint.restore() if args.resume else True
            if not args.resume:
                checkpoint.save()  # a fresh start: a stale checkpoint must not survive a failed first chunk
            # The total (an extra pass over every input file) is only for the bar's ETA: not when quiet.
            total = None if args.quiet else _expected_rows(sources, args.format, args.text_field)
            progress = stack.enter_context(
                tqdm(
                    total=total, unit="doc", file=sys.stderr, disable=args.quiet, dynamic_ncols=True,
                    mininterval=0.5, smoothing=0.1,
                )
            )  # fmt: skip

            def note(message: str) -> None:
                if not args.quiet:
                    progress.write(message, file=sys.stderr)

            if not restored:
                note(f"no checkpoint at {checkpoint_path}: starting from the beginning")
            rejects = None
            if rejects_path is not None:
                rejects = stack.enter_context(open(rejects_path, "a" if args.resume else "w", encoding="utf-8"))
            if args.create and not args.dry_run:
                _create_collection(client, args, note)
            builder = ChunkBuilder(args, sources, stats, rejects)
            Pump(
                None if args.dry_run else client,
                args,
                sources,
                checkpoint,
                stats,
                progress,
                note,
            ).run(builder.chunks())
            checkpoint.save()  # also when nothing was left to send: a finished run says so
            if progress.total is not None and progress.n < progress.total:
                progress.total = progress.n  # CSV records spanning lines: end the bar full
        except StopRun as exc:
            error = exc
        except KeyboardInterrupt:
            error = StopRun("interrupted; run again with --resume to continue", EXIT_INTERRUPTED)
    stats.seconds = time.monotonic() - started
    return report_run(_summary(stats, args, checkpoint, rejects_path, error), args, error)


def run_state_paths(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """Where a run keeps its checkpoint and, with --skip-bad, its rejected records (None: nowhere, as in a
    dry run); both checked writable before anything is sent. Shared by both engines (`--engine ray` too)."""
    checkpoint_path = None
    if not args.dry_run:
        checkpoint_path = (
            Path(args.checkpoint)
            if args.checkpoint
            else default_checkpoint_path(args.files, args.collection, args.state_dir)
        )
    rejects_path = None
    if args.skip_bad and (args.rejects or checkpoint_path):
        rejects_path = Path(args.rejects) if args.rejects else checkpoint_path.with_suffix(".rejects.jsonl")
    _check_writable(checkpoint_path, "checkpoint")
    _check_writable(rejects_path, "rejects file")
    return checkpoint_path, rejects_path


def report_run(summary: dict, args: argparse.Namespace, error: StopRun | None) -> int:
    """Prints a run's error and summary (JSON with --json, nothing more with --quiet); returns its exit code."""
    if error is not None:
        print(f"semsearch index: {error}", file=sys.stderr)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        _print_summary(summary)
    return summary["exit_code"]


def _create_collection(client: SearchClient, args: argparse.Namespace, note) -> None:
    if not args.collection:
        return  # "default" always exists
    try:
        with_retries(
            lambda: client.create_collection(
                args.collection,
                index=args.index,
                passages=args.passages == "on",
                window_tokens=args.window_tokens,
                overlap_tokens=args.overlap_tokens,
                default_mode=args.default_mode,
            ),
            args.retries,
            "create collection",
            note,
        )
        note(f"created collection {args.collection!r}")
    except AlreadyExistsError:
        pass
