"""A full disk loses nothing: a real server process on a small tmpfs, filled with a ballast file mid-ingest.

The write that does not fit is refused with RESOURCE_EXHAUSTED (saying the disk is full, and where), nothing
of it is stored, every write acknowledged before is intact, reads are served throughout, and writes work
again once the ballast is deleted, without a restart. A snapshot that does not fit leaves the previous one
valid. Mounting needs root (or CAP_SYS_ADMIN); elsewhere these tests are skipped and say so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import ServerProcess
from semsearch import Document, ResourceExhaustedError, SemsearchError
from semsearch.client import to_pb_document
from semsearch.errors import from_rpc_error
from semsearch.v1 import search_service_pb2 as pb

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("SEMSEARCH_TEST_DISK_CYCLES", "4"))
# The disk filled and freed under steady load (make long: 10).
LOAD_CYCLES = int(os.environ.get("SEMSEARCH_TEST_DISK_LOAD_CYCLES", "3"))
# Every write refused for space is answered within this, whatever else runs (the requirement itself).
REFUSAL_BOUND_SECONDS = 2.0
# Room for the model-free parts of the server's files, the cycles' documents and a ballast, little more.
DISK_SIZE = "32m"
SHORT_CHARS = 300
MEDIUM_CHARS = 6_000  # two of them: a message of a few pages
LONG_CHARS = 60_000  # one: more pages than a message of medium ones
ROOM_PER_MESSAGE = 40 * 1024  # what a message of two medium ones takes in the log, about
A, B = "disk-a", "disk-b"
FILLER = "the river carried silt past the old mill while the farmers waited for rain and argued about prices "
TOPICS = ["wine", "fish", "rain", "trains", "maps", "bread"]


# -- the small disk ----------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of DISK_SIZE mounted as the data directory; unmounted however the test ends."""
    mount = tmp_path / "data"
    mount.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount(8) on this machine: the disk-full tests mount a small tmpfs as the data directory")
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs as the data directory ({result.stderr.strip() or result.returncode}): "
            "the disk-full tests need root or CAP_SYS_ADMIN"
        )
    try:
        yield mount
    finally:
        _unmount(mount)


def _unmount(mount: Path) -> None:
    for _ in range(20):  # a server process just killed may hold files for a moment
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path, leave: int = 0) -> Path:
    """Writes a ballast file until the file system is full; then frees `leave` bytes of it."""
    ballast = mount / "ballast"
    with open(ballast, "ab", buffering=0) as out:
        for size in (1 << 20, 1 << 12):
            block = bytes(size)
            while True:
                try:
                    out.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    if leave:
        os.truncate(ballast, ballast.stat().st_size - leave)
    return ballast


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


# -- documents -----------------------------------------------------------------------------------------
def _tag(doc_id: str) -> str:
    """A word only this document contains: the lexical index finds exactly it by that word."""
    return "tag" + re.sub(r"[^a-z0-9]", "x", doc_id)


def text_of(doc_id: str, chars: int) -> str:
    topic = TOPICS[int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % len(TOPICS)]
    head = f"note {doc_id} {_tag(doc_id)} about {topic}. "
    return head + (FILLER * (chars // len(FILLER) + 1))[: max(chars - len(head), 0)]


def doc(doc_id: str, chars: int) -> Document:
    return Document(doc_id, text_of(doc_id, chars))


class Acknowledged:
    """Every document the server acknowledged: collection -> {id: length of its text}."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, int]] = {A: {}, B: {}}

    def add(self, collection: str, docs: list[Document]) -> None:
        for d in docs:
            self.docs[collection][d.id] = len(d.text)

    def check(self, client) -> None:
        """All there, byte for byte, counted, and found by their own words (the lexical index agrees)."""
        counts = {c.name: c.document_count for c in client.list_collections()}
        for collection, expected in self.docs.items():
            ids = sorted(expected)
            for start in range(0, len(ids), 100):
                chunk = ids[start : start + 100]
                found = {d.id: d.text for d in client.get(chunk, collection=collection)}
                missing = [i for i in chunk if i not in found]
                assert not missing, f"acknowledged documents lost from {collection}: {missing[:5]}"
                for i in chunk:
                    assert found[i] == text_of(i, expected[i]), f"{collection}/{i} changed"
            assert counts[collection] == len(expected), (collection, counts[collection], len(expected))
            for start in range(0, len(ids), 100):
                chunk = ids[start : start + 100]
                results = client.batch_search([_tag(i) for i in chunk], collection=collection, top_k=1, mode="lexical")
                for doc_id, hits in zip(chunk, results, strict=True):
                    assert [h.id for h in hits] == [doc_id], f"lexical index out of step for {doc_id}"


class ClientLoop:
    """Calls on its own channel, round after round in a daemon thread (`thread`), until `stop` is set."""

    client_timeout = 60.0

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.client(timeout=self.client_timeout) as client:
            for round_no in range(1_000_000):
                if self.stop.is_set():
                    return
                self.round(client, round_no)

    def round(self, client, round_no: int) -> None:
        raise NotImplementedError


class Reader(ClientLoop):
    """Searches, gets and explains all along, in its own thread and channel; records every failure."""

    client_timeout = 120.0

    def __init__(self, server: ServerProcess, probe_id: str) -> None:
        super().__init__(server)
        self.probe_id = probe_id
        self.disk_full = threading.Event()  # set by the test while the ballast fills the disk
        self.served = {"free": 0, "full": 0}
        self.failures: list[str] = []

    def round(self, client, round_no: int) -> None:
        full = self.disk_full.is_set()
        try:
            if round_no % 5 == 0:  # waits for the model, busy with the ingest's documents
                assert client.search("rain on the farm", collection=A, top_k=3), "no hits"
            assert client.get([self.probe_id], collection=A)[0].text == text_of(self.probe_id, SHORT_CHARS)
            assert client.search(_tag(self.probe_id), collection=A, top_k=1, mode="lexical")[0].id == self.probe_id
            if round_no % 10 == 0:  # the slowest read: a forward pass with attention
                assert client.explain("rain", doc_id=self.probe_id, collection=A).doc_segments
            self.served["full" if full else "free"] += 1
        except (SemsearchError, AssertionError, IndexError) as exc:
            self.failures.append(f"{'full' if full else 'free'} disk: {type(exc).__name__}: {exc}")
        time.sleep(0.05)

    def __enter__(self) -> Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(60)


# -- the tests ---------------------------------------------------------------------------------------------
def start_server(mount: Path, *extra: str) -> ServerProcess:
    # torch: the fastest start-up; the write path is the same for every backend.
    return ServerProcess(mount, "--backend", "torch", "--max-text-chars", str(LONG_CHARS), *extra)


def truncate_logs(mount: Path) -> None:
    """Checkpoints and truncates each collection's SQLite write-ahead log, from this process (as any second
    process may). SQLite reuses the log's file after a checkpoint, so a write may still fit into a full disk
    (nothing wrong with that); with the log truncated, where the disk runs out depends on the ballast alone."""
    for path in (mount / "collections").glob("*/documents.sqlite3"):
        db = sqlite3.connect(path, timeout=30)
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0, f"{path}: the checkpoint could not complete"
        finally:
            db.close()


def stream_into_full_disk(client, cycle: int, room: int) -> tuple[list[tuple[str, Document]], str | None]:
    """An UpsertStream of messages alternating between A and B (one transaction each), more than `room`
    messages fill; returns what was sent, in order, and the error's message (None if it went through)."""
    sent: list[tuple[str, Document]] = []

    def messages():
        for m in range(room + 3):
            collection = (A, B)[m % 2]
            batch = [doc(f"c{cycle}-full-m{m}-{j}", MEDIUM_CHARS) for j in range(2)]
            sent.extend((collection, d) for d in batch)
            yield collection, batch

    try:
        _stream(client, messages())
    except ResourceExhaustedError as exc:
        return sent, exc.details
    return sent, None


def _stream(client, messages) -> int:
    """UpsertStream over (collection, documents) messages (the client's helper takes one collection)."""
    requests = (
        pb.UpsertRequest(collection=collection, documents=[to_pb_document(d) for d in batch])
        for collection, batch in messages
    )
    try:
        return client.stub.UpsertStream(requests, timeout=120).upserted_count
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


def test_full_disk_mid_ingest_loses_nothing_over_fill_free_cycles(small_disk, tmp_path):
    server = start_server(small_disk, "--snapshot-every", "40")
    acked = Acknowledged()
    refusals: list[str] = []
    prefixes: list[int] = []
    try:
        server.start()
        with server.client(timeout=120) as client:
            for name in (A, B):
                client.create_collection(name, passages=False)
            seed = [doc(f"seed-{j}", SHORT_CHARS) for j in range(8)]
            client.upsert(seed, collection=A)
            acked.add(A, seed)
            with Reader(server, probe_id="seed-0") as reader:
                for cycle in range(CYCLES):
                    # An ingest on a disk with space: a stream that is acknowledged whole.
                    batches = [[doc(f"c{cycle}-a{m}-{j}", SHORT_CHARS) for j in range(4)] for m in range(4)]
                    assert client.upsert_stream(batches, collection=(A, B)[cycle % 2]) == 16
                    acked.add((A, B)[cycle % 2], [d for b in batches for d in b])

                    # Full but for room for about 0 to 3 of the messages below: the write that does not fit
                    # comes first, or after some were stored.
                    room = cycle % 4
                    truncate_logs(small_disk)
                    ballast = fill(small_disk, leave=room * ROOM_PER_MESSAGE)
                    reader.disk_full.set()
                    assert free_bytes(small_disk) < room * ROOM_PER_MESSAGE + 16 * 1024

                    # The ingest goes on into the full disk, until a write does not fit.
                    sent, message = stream_into_full_disk(client, cycle, room)
                    assert message is not None, "the ingest never ran into the full disk"
                    refusals.append(message)
                    assert "disk full" in message and str(small_disk) in message, message
                    stored = int(re.search(r"after (\d+) documents of the stream were stored", message).group(1))
                    # What the message says was stored is a prefix of whole messages, and nothing after it.
                    assert stored % 2 == 0
                    for collection in (A, B):
                        ids = [d.id for c, d in sent if c == collection]  # none: refused at the first message
                        found = {d.id for d in client.get(ids, collection=collection)} if ids else set()
                        want = {d.id for c, d in sent[:stored] if c == collection}
                        assert found == want, f"cycle {cycle}: {collection} holds {len(found)}, expected {len(want)}"
                    for collection, d in sent[:stored]:
                        acked.add(collection, [d])
                    prefixes.append(stored)

                    # Still full: a plain Upsert (larger than the message that did not fit) is refused as well,
                    # and changes nothing.
                    refused = [doc(f"c{cycle}-refused", LONG_CHARS)]
                    with pytest.raises(ResourceExhaustedError, match="disk full"):
                        client.upsert(refused, collection=B)
                    assert client.get([d.id for d in refused], collection=B) == []
                    # Reads work on the full disk: everything acknowledged, every search mode, Explain.
                    acked.check(client)
                    for mode in ("dense", "lexical", "hybrid"):
                        assert client.search("rain", collection=A, top_k=5, mode=mode), mode
                    explained = client.explain("rain", doc_id="seed-1", collection=A, top_k=10)
                    assert explained.doc_segments and explained.ranking is not None

                    ballast.unlink()
                    reader.disk_full.clear()
                    # Writes resume, without a restart.
                    resumed = [doc(f"c{cycle}-resumed-{j}", SHORT_CHARS) for j in range(4)]
                    assert client.upsert(resumed, collection=A) == 4
                    acked.add(A, resumed)
                    assert len(client.get([d.id for d in resumed], collection=A)) == 4
            assert not reader.failures, reader.failures[:5]
            assert reader.served["full"] >= CYCLES and reader.served["free"] > 0, reader.served
            acked.check(client)
            assert "writes resumed" in server.output()
        assert any(prefixes), f"every refused stream had stored nothing before: {prefixes}"

        # A crash after all that: every acknowledged write is durable.
        server.kill()
        server.start()
        with server.client(timeout=120) as client:
            acked.check(client)
        print(
            f"{CYCLES} fill/free cycles: {sum(map(len, acked.docs.values()))} documents acknowledged, all there "
            f"after a SIGKILL; reads served {reader.served['full']} times on a full disk, "
            f"{reader.served['free']} times with space, 0 failures; documents stored before the refused write "
            f"of each cycle's stream: {prefixes}; e.g. {refusals[-1]!r}"
        )
    finally:
        server.stop()


def test_a_snapshot_that_does_not_fit_leaves_the_previous_one_valid(small_disk):
    # A snapshot is due every 50 writes (while the collection is small).
    server = start_server(small_disk, "--snapshot-every", "50")
    directory = small_disk / "collections" / A
    try:
        server.start()
        with server.client(timeout=120) as client:
            client.create_collection(A, passages=False)
            before = _snapshot_state(directory)
            # 49 writes of words never seen twice: a lexical snapshot of several MB, next to a database
            # where one more short document takes a few pages.
            wordy = [Document(f"w{i}", _unique_words(i, 19_000)) for i in range(49)]
            for start in range(0, len(wordy), 7):
                client.upsert(wordy[start : start + 7], collection=A)
            assert _snapshot_state(directory) == before, "a snapshot was written before it was due"

            ballast = fill(small_disk, leave=256 * 1024)
            trigger = doc("trigger", SHORT_CHARS)
            # The write commits and is acknowledged; the snapshot it makes due does not fit.
            assert client.upsert([trigger], collection=A) == 1
            after = _snapshot_state(directory)
            assert after["lexical.json"] == before["lexical.json"], "the lexical snapshot changed on a full disk"
            _assert_snapshots_valid(directory)
            assert not list(directory.glob(".*.tmp")), "a temporary snapshot file was left on the full disk"
            assert "snapshot not written" in server.output()
            # Reads see everything: the in-memory indexes have the write, the database holds it.
            assert client.search(_tag("trigger"), collection=A, top_k=1, mode="lexical")[0].id == "trigger"
            assert client.search("w7", collection=A, top_k=1, mode="lexical")[0].id == "w7"
            assert len(client.get([d.id for d in wordy], collection=A)) == len(wordy)

            ballast.unlink()
            time.sleep(2.5)  # the first retry waits 2 s after the failure
            client.upsert([doc("after", SHORT_CHARS)], collection=A)
            written = _snapshot_state(directory)
            assert written["lexical.json"]["seq"] > before["lexical.json"]["seq"], "the snapshot was not retried"
            _assert_snapshots_valid(directory)
            assert "snapshot written again" in server.output()

        server.kill()
        server.start()
        assert re.search(r"replayed 0 passage and 0 document changes", server.output())
        with server.client(timeout=120) as client:
            assert len(client.get(["trigger", "after", *(d.id for d in wordy)], collection=A)) == 51
    finally:
        server.stop()


def test_start_up_and_create_on_a_full_disk(small_disk):
    server = start_server(small_disk)
    try:
        server.start()
        with server.client(timeout=120) as client:
            client.create_collection(A, passages=False)
            kept = [doc(f"k{i}", SHORT_CHARS) for i in range(6)]
            client.upsert(kept, collection=A)
            ballast = fill(small_disk)
            # Creating a collection that does not fit: refused, and nothing of it left behind.
            with pytest.raises(ResourceExhaustedError, match=f"disk full.*{re.escape(str(small_disk))}.*not created"):
                client.create_collection(B)
            assert B not in {c.name for c in client.list_collections()}
            assert [p.name for p in (small_disk / "collections").iterdir() if p.name.startswith(".")] == []
            ballast.unlink()
        assert server.terminate() == 0  # with space: the final snapshots and a clean close
        ballast = fill(small_disk)

        # A cleanly closed collection needs room for SQLite's shared-memory index to open: the server
        # starts and serves, and says why that collection waits.
        server.start()
        with server.client(timeout=120) as client:
            assert client.health() == "SERVING"
            status = {c.name: c for c in client.list_collections()}[A]
            assert status.state == 2 and "disk full" in status.status_message, status
            with pytest.raises(ResourceExhaustedError, match="disk full"):
                client.get(["k0"], collection=A)
            ballast.unlink()
            # Served as soon as there is space, without a restart.
            assert [d.id for d in client.get([d.id for d in kept], collection=A)] == [d.id for d in kept]
            assert client.upsert([doc("k6", SHORT_CHARS)], collection=A) == 1
            client.create_collection(B)
            assert {c.name: c.state for c in client.list_collections()}[A] == 1
    finally:
        server.stop()


# -- under load ----------------------------------------------------------------------------------------
@dataclass
class WriteOutcome:
    kind: str  # "upsert", "stream" or "delete"
    started: float  # time.monotonic()
    latency: float
    code: str  # "OK" or the status code's name
    details: str = ""


class LoadWriter(ClientLoop):
    """Upserts, UpsertStreams and deletes of its own ids, in its own thread and channel, until stopped; records
    every call's latency and code, and what the server acknowledged, refused, or neither."""

    def __init__(self, server: ServerProcess, number: int) -> None:
        super().__init__(server)
        self.prefix = f"w{number}"
        self.number = number
        self.acked: dict[str, dict[str, int]] = {A: {}, B: {}}  # collection -> {id: text length}
        self.refused: dict[str, set[str]] = {A: set(), B: set()}  # never stored (ids are never sent again)
        self.outcomes: list[WriteOutcome] = []

    def round(self, client, round_no: int) -> None:
        n = round_no
        collection = (A, B)[(n + self.number) % 2]
        kind = ("upsert", "stream", "delete")[n % 3]
        if kind == "delete" and collection == A:
            kind = "upsert"
        docs = [doc(f"{self.prefix}-{n}-{j}", SHORT_CHARS * (1 + j)) for j in range(4)]
        started = time.monotonic()
        try:
            if kind == "upsert":
                client.upsert(docs, collection=collection)
            elif kind == "stream":
                client.upsert_stream([docs[:2], docs[2:]], collection=collection)
            else:
                doomed = sorted(self.acked[B])[:2]
                if not doomed:
                    return
                client.delete(doomed, collection=B)
        except SemsearchError as exc:
            self._refused(kind, collection, docs, exc, time.monotonic() - started)
            return
        self.outcomes.append(WriteOutcome(kind, started, time.monotonic() - started, "OK"))
        if kind == "delete":
            for doc_id in doomed:
                del self.acked[B][doc_id]
        else:
            self.acked[collection].update((d.id, len(d.text)) for d in docs)
        time.sleep(0.02)

    def _refused(self, kind: str, collection: str, docs: list[Document], exc: SemsearchError, latency: float) -> None:
        self.outcomes.append(WriteOutcome(kind, time.monotonic() - latency, latency, exc.code.name, exc.details))
        if kind == "delete":
            return  # nothing deleted: the ids stay acknowledged (checked at the end)
        stored = 0
        if kind == "stream":
            found = re.search(r"after (\d+) documents of the stream were stored", exc.details)
            stored = int(found.group(1)) if found else 0
        self.acked[collection].update((d.id, len(d.text)) for d in docs[:stored])
        self.refused[collection].update(d.id for d in docs[stored:])
        time.sleep(0.1)  # a client backs off a little before it tries again


class LoadReader(ClientLoop):
    """Searches (dense and lexical), gets and counts in its own thread and channel; records every failure."""

    def __init__(self, server: ServerProcess, probe_ids: list[str]) -> None:
        super().__init__(server)
        self.probe_ids = probe_ids
        self.served = 0
        self.failures: list[str] = []

    def round(self, client, round_no: int) -> None:
        n = round_no
        try:
            if n % 3 == 0:
                assert client.search("rain on the farm", collection=A, top_k=3), "no hits"
            elif n % 3 == 1:
                probe = self.probe_ids[n % len(self.probe_ids)]
                assert client.search(_tag(probe), collection=A, top_k=1, mode="lexical")[0].id == probe
            else:
                assert len(client.get(self.probe_ids, collection=A)) == len(self.probe_ids)
                assert client.count(collection=B) >= 0
            self.served += 1
        except (SemsearchError, AssertionError, IndexError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.02)


def test_a_full_disk_under_load_is_said_at_once_every_time(small_disk):
    """4 writers (Upsert, UpsertStream, Delete) and 4 readers while the disk fills and is freed LOAD_CYCLES times:
    every refusal is RESOURCE_EXHAUSTED "disk full" within REFUSAL_BOUND_SECONDS (of the request, or of the disk
    filling for a write already on its way then), none while there is room, reads never fail, and after a
    SIGKILL every acknowledged write is there and no refused one."""
    # Snapshots due every 8 writes and an HNSW collection whose deletes make rebuilds due: background work
    # that needs room of its own while the disk is full and freed.
    server = start_server(small_disk, "--snapshot-every", "8")
    seed = [doc(f"seed-{j}", SHORT_CHARS) for j in range(6)]
    writers = [LoadWriter(server, i) for i in range(4)]
    readers = [LoadReader(server, [d.id for d in seed]) for _ in range(4)]
    try:
        server.start()
        with server.client(timeout=120) as client:
            client.create_collection(A, passages=False)
            client.create_collection(B, index="hnsw")
            client.upsert(seed, collection=A)
        for worker in (*writers, *readers):
            worker.thread.start()
        started = time.monotonic()
        full: list[tuple[float, float, float]] = []  # (the ballast starts, the disk is full, it is freed)
        for _ in range(LOAD_CYCLES):
            time.sleep(2.0)  # writes with space
            filling = time.monotonic()
            ballast = fill(small_disk)
            filled = time.monotonic()
            time.sleep(1.5)  # writes into the full disk
            ballast.unlink()
            full.append((filling, filled, time.monotonic()))
        # With space again: every writer has a write acknowledged after the last full disk.
        resumed = time.monotonic() + 60
        while time.monotonic() < resumed and not all(
            any(o.code == "OK" and o.started > full[-1][2] for o in w.outcomes) for w in writers
        ):
            time.sleep(0.1)
        for worker in (*writers, *readers):
            worker.stop.set()
        for worker in (*writers, *readers):
            worker.thread.join(120)
            assert not worker.thread.is_alive(), "a worker is stuck"
        elapsed = time.monotonic() - started

        outcomes = [o for w in writers for o in w.outcomes]
        for writer in writers:
            assert any(o.code == "OK" and o.started > full[-1][2] for o in writer.outcomes), f"{writer.prefix} stuck"
        refusals = [o for o in outcomes if o.code != "OK"]
        wrong = [o for o in refusals if o.code != "RESOURCE_EXHAUSTED" or "disk full" not in o.details]
        assert not wrong, f"{len(wrong)} writes failed otherwise than refused for space: {wrong[:3]}"
        # Each refusal overlaps a full disk (none while there was room), and is answered within the bound of
        # its request or, for a write sent before the disk filled, of the disk being full.
        sent_full, in_flight = [], []
        for o in refusals:
            # The full disk it was refused by: the last one to start before the answer.
            window = next((w for w in reversed(full) if w[0] <= o.started + o.latency), None)
            assert window is not None and o.started <= window[2], f"refused while there was room: {o}"
            if o.started >= window[1]:
                sent_full.append(o.latency)
            else:
                in_flight.append((o.started + o.latency - window[1], o))
        assert len(sent_full) >= LOAD_CYCLES, f"only {len(sent_full)} writes sent to {LOAD_CYCLES} full disks"
        sent_full.sort()
        in_flight.sort(key=lambda late: late[0])
        latest = in_flight[-1] if in_flight else (0.0, None)
        acked = sorted(o.latency for o in outcomes if o.code == "OK")
        figures = (
            f"{len(sent_full)} writes sent to a full disk refused in p50 {_quantile(sent_full, 0.5):.3f}s, "
            f"p99 {_quantile(sent_full, 0.99):.3f}s, max {sent_full[-1]:.3f}s; {len(in_flight)} on their way when "
            f"it filled refused at most {latest[0]:.3f}s after (max from their request "
            f"{max((o.latency for o in refusals), default=0.0):.3f}s); {len(acked)} acknowledged writes took "
            f"p50 {_quantile(acked, 0.5):.3f}s, max {acked[-1]:.3f}s"
        )
        assert sent_full[-1] <= REFUSAL_BOUND_SECONDS, f"a refusal for space took too long: {figures}"
        assert latest[0] <= REFUSAL_BOUND_SECONDS, f"a full disk was said too late: {figures}; {latest[1]}"
        failures = [f for r in readers for f in r.failures]
        assert not failures, f"{len(failures)} reads failed: {failures[:3]}"
        assert all(r.served > 0 for r in readers), [r.served for r in readers]
        log = server.output()
        background = {what: log.count(what) for what in ("snapshot not written", "rebuilt beside", "not rebuilt")}

        # A crash at the end: every acknowledged write is there, nothing refused is.
        server.kill()
        server.start()
        with server.client(timeout=120) as client:
            for collection in (A, B):
                expected = {i: n for w in writers for i, n in w.acked[collection].items()}
                if collection == A:
                    expected.update((d.id, len(d.text)) for d in seed)
                ids = sorted(expected)
                found = {d.id: d.text for d in _get_all(client, ids, collection)}
                lost = [i for i in ids if i not in found]
                assert not lost, f"acknowledged documents lost from {collection}: {lost[:5]}"
                assert all(found[i] == text_of(i, expected[i]) for i in ids), f"a document of {collection} changed"
                assert client.count(collection=collection) == len(expected), collection
                refused = sorted(i for w in writers for i in w.refused[collection])
                stored = [d.id for d in _get_all(client, refused, collection)]
                assert not stored, f"refused writes stored in {collection}: {stored[:5]}"
        print(
            f"{LOAD_CYCLES} fill/free cycles under 4 writers and 4 readers in {elapsed:.0f}s: {len(outcomes)} writes; "
            f"{figures}; every refusal RESOURCE_EXHAUSTED; reads served {sum(r.served for r in readers)} times, "
            f"0 failures; background work in the log: {background}; "
            f"{sum(len(w.acked[c]) for w in writers for c in (A, B))} acknowledged documents all there after a SIGKILL"
        )
    finally:
        for worker in (*writers, *readers):
            worker.stop.set()
        server.stop()


def _get_all(client, ids: list[str], collection: str) -> list[Document]:
    return [d for start in range(0, len(ids), 100) for d in client.get(ids[start : start + 100], collection=collection)]


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _unique_words(seed: int, chars: int) -> str:
    words, size, n = [f"w{seed}"], 0, 0
    while size < chars:
        word = hashlib.blake2b(f"{seed}-{n}".encode(), digest_size=5).hexdigest()
        words.append("q" + "".join(c if c.isalpha() else "abcdefghij"[int(c)] for c in word))
        size += len(words[-1]) + 1
        n += 1
    return " ".join(words)


def _snapshot_state(directory: Path) -> dict:
    return {name: json.loads((directory / name).read_text()) for name in ("index.json", "lexical.json")}


def _assert_snapshots_valid(directory: Path) -> None:
    """Each snapshot file matches the checksum its metadata records (what a restart checks)."""
    for data, meta in (("index.faiss", "index.json"), ("lexical.bin", "lexical.json")):
        recorded = json.loads((directory / meta).read_text())["sha256"]
        assert hashlib.sha256((directory / data).read_bytes()).hexdigest() == recorded, f"{data} does not match {meta}"
