"""`make soak`: mixed traffic against a real server process that is SIGKILLed at random and restarted.

    python tests/soak.py [--minutes 30] [--kill-every 1 3] [--seed 1] [--data-dir DIR] [--backend auto]

One `python -m semsearch_server` (local store, the default model and backend) serves a data directory;
--workers threads send Search, BatchSearch, Explain, Get, Count and Scroll with typed filters, Upsert,
UpsertStream, Delete (by ids and by filter), and cycles of collection create/delete, aliases and snapshots.
Every --kill-every MIN MAX minutes (uniform) the server is SIGKILLed and started again on the same data
directory. --minutes is the whole run's wall time, server starts included.

What is checked. Each worker owns its collection, its alias and its temporary collections, so it knows
exactly what they hold: the last acknowledged text and attributes of each of its documents, and which ids
an acknowledged delete removed. Reads are checked against that (Get, Count and Scroll under a filter, a
document found by its own text and, lexically, by its own tag word, a restored snapshot's contents).
A write that failed while the server was being killed (its call overlapped the kill window: from the kill
until the new process is SERVING; UNAVAILABLE, usually) may or may not have landed. It is resolved after
the restart, before the worker sends anything else, by reading back what it touched: an Upsert or a Delete
must be all there or all absent, an UpsertStream a prefix of whole messages; what landed is then taken as
written. After every restart each worker checks all of its documents (every acknowledged upsert there with
its last acknowledged content unless deleted since, every acknowledged delete absent), and once more at the
end. Hard failures (exit 1): an acknowledged write lost or changed, an ambiguous write half-applied, a read
that disagrees with the acknowledged state, any INTERNAL or UNKNOWN status, any other failed call outside a
kill window, a server that dies unasked, no restart at all, and (with --rss-check, the default) the
server's RSS growing more than 10 % after the warm-up (see `rss_verdict`).

Prints the seed first (the kill times and each worker's sequence of calls follow from it; the threads'
interleaving does not), then a summary: throughput, p50/p99 per RPC, status codes per
RPC (in and out of kill windows), restarts, the resolution of ambiguous writes, and the server's RSS over
time (VmRSS from /proc/PID/status). tests/test_soak.py runs a 2-minute profile of it in `make test`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import grpc  # noqa: E402
from semsearch import Document, SearchClient, SemsearchError  # noqa: E402
from semsearch_server.testing import ServerProcess, unexpected_log_lines  # noqa: E402

# Every RPC the soak drives; a run is complete when each of them succeeded at least once.
SOAK_RPCS = (
    "Search",
    "BatchSearch",
    "Explain",
    "Get",
    "Count",
    "Scroll",
    "Upsert",
    "UpsertStream",
    "Delete",
    "CreateCollection",
    "DeleteCollection",
    "ListCollections",
    "SetAlias",
    "ListAliases",
    "CreateSnapshot",
    "ListSnapshots",
    "RestoreSnapshot",
    "DeleteSnapshot",
)
HARD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
POOL = 48  # ids per worker: reused, so documents are replaced and deleted and written again
GROUPS = ("g0", "g1", "g2", "g3", "g4")
TAGS = ("red", "green", "blue", "amber")
WORDS = (
    "harbour lighthouse ferry tide gull anchor orchard vineyard cellar barrel cork vintage glacier summit "
    "trail valley meadow violin sonata orchestra chorus tempo compiler kernel socket thread mutex bakery "
    "sourdough oven crust flour telescope comet nebula orbit eclipse"
).split()
RSS_GROWTH_LIMIT = 0.10
RSS_MIN_LIFE_SECONDS = 30.0
MAX_FAILURES_IN_A_ROW = 10  # then the worker stops: its picture of its data is no longer known to be true
CALL_TIMEOUT = 60.0  # generous: the machine is shared; a call that times out outside a kill is a failure


# -- the kill windows and the per-RPC tallies ------------------------------------------------------------
class Target:
    """The server the workers talk to, the windows in which it was being killed, and a gate for them."""

    def __init__(self) -> None:
        self.address = ""
        self.generation = 0  # bumped by each (re)start
        self.serving = threading.Event()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.windows: list[list[float]] = []  # [kill started, SERVING again (inf while down)]

    def up(self, address: str) -> None:
        with self._lock:
            self.address = address
            self.generation += 1
            if self.windows and self.windows[-1][1] == float("inf"):
                self.windows[-1][1] = time.monotonic()
        self.serving.set()

    def going_down(self) -> None:
        self.serving.clear()
        with self._lock:
            self.windows.append([time.monotonic(), float("inf")])

    def in_kill_window(self, start: float, end: float) -> bool:
        """Whether a call that ran from start to end overlapped a kill (or the restart after it)."""
        with self._lock:
            return any(start <= w_end and end >= w_start for w_start, w_end in self.windows)


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # rpc -> (code, in_window)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rpc: str, seconds: float, code: grpc.StatusCode, in_window: bool) -> None:
        with self.lock:
            self.codes[rpc][(code.name, in_window)] += 1
            if code == grpc.StatusCode.OK:
                self.latencies[rpc].append(seconds)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)
        print(f"FAILURE: {message}", flush=True)


class KillWindow(Exception):
    """A call failed because the server was being killed: what it did is unknown until the restart."""


# -- a worker's knowledge of its own data -------------------------------------------------------------------
def _doc(doc_id: str, version: int, rng: random.Random) -> Document:
    words = " ".join(rng.sample(WORDS, 5))
    metadata = {
        "group": rng.choice(GROUPS),
        "n": rng.randrange(100),
        "score": round(rng.uniform(0, 1), 6),
        "flag": rng.random() < 0.5,
        "tags": rng.sample(TAGS, rng.randrange(1, 3)),
    }
    return Document(doc_id, f"{words} {tag_word(doc_id, version)}", metadata)


def tag_word(doc_id: str, version: int) -> str:
    """A word only this version of this document contains: BM25 must find exactly it by that word."""
    return "tag" + doc_id.replace("-", "x") + f"v{version}"


def _content(doc: Document) -> tuple[str, dict]:
    return doc.text, {k: list(v) if isinstance(v, list | tuple) else v for k, v in doc.metadata.items()}


def _filters(rng: random.Random) -> tuple[str, Callable[[dict], bool]]:
    """A typed filter in its text form, and the same condition on a document's attributes."""
    g, g2, n, tag = rng.choice(GROUPS), rng.choice(GROUPS), rng.randrange(100), rng.choice(TAGS)
    choices = [
        (f'group == "{g}"', lambda m: m["group"] == g),
        (f"n >= {n}", lambda m: m["n"] >= n),
        (f'group in ["{g}", "{g2}"] and flag == true', lambda m: m["group"] in (g, g2) and m["flag"]),
        (f'tags == "{tag}" or n < {n}', lambda m: tag in m["tags"] or m["n"] < n),
        (f'not (score > 0.5) and tags != "{tag}"', lambda m: not m["score"] > 0.5 and tag not in m["tags"]),
    ]
    return rng.choice(choices)


class Worker:
    """One stream of mixed traffic on its own collection, alias and temporary collections."""

    def __init__(self, number: int, target: Target, stats: Stats, seed: int) -> None:
        self.number = number
        self.target = target
        self.stats = stats
        self.rng = random.Random(seed * 1000 + number)
        self.collection = f"soak-w{number}"
        self.alias = f"soak-alias-w{number}"
        self.ids = [f"w{number}-{i:03d}" for i in range(POOL)]
        self.docs: dict[str, Document] = {}  # the acknowledged state of self.collection
        self.gone: dict[str, str] = {}  # deleted (acknowledged) ids -> their last text
        self.versions: Counter = Counter()
        self.owned: dict[str, bool | None] = {}  # temporary collections: exists, or None (unknown)
        self.snapshots: set[str] = set()  # snapshots of self.collection known to exist
        self.pending: Callable[[], None] | None = None  # resolves the write a kill left ambiguous
        self.verified_generation = 0
        self.tally = Counter()  # acknowledged writes and how ambiguous ones resolved
        self.client: SearchClient | None = None
        self.client_generation = 0
        self.counter = 0
        self.thread = threading.Thread(target=self.run, name=f"soak-worker-{number}", daemon=True)

    # -- calls --------------------------------------------------------------------------------------
    def call(self, rpc: str, fn: Callable[[SearchClient], Any]) -> Any:
        """Runs one RPC, timed and tallied; a failure in a kill window raises KillWindow."""
        if self.client is None or self.client_generation != self.target.generation:
            if self.client is not None:
                self.client.close()
            self.client_generation = self.target.generation
            self.client = SearchClient(self.target.address, timeout=CALL_TIMEOUT)
        start = time.monotonic()
        try:
            result = fn(self.client)
        except SemsearchError as exc:
            end = time.monotonic()
            in_window = self.target.in_kill_window(start, end)
            self.stats.record(rpc, end - start, exc.code, in_window)
            if exc.code in HARD_CODES:
                self.stats.fail(f"{rpc} answered {exc.code.name}: {exc.details}")
            if in_window:
                raise KillWindow(rpc) from exc
            raise
        self.stats.record(rpc, time.monotonic() - start, grpc.StatusCode.OK, False)
        return result

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.stats.fail(f"worker {self.number}: {message}")

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        ops = [
            (self.op_upsert, 14),
            (self.op_upsert_stream, 6),
            (self.op_delete, 5),
            (self.op_delete_where, 2),
            (self.op_search, 14),
            (self.op_batch_search, 6),
            (self.op_explain, 4),
            (self.op_get, 6),
            (self.op_count, 6),
            (self.op_scroll, 4),
            (self.op_collection_cycle, 2),
            (self.op_snapshot_cycle, 2),
        ]
        functions, weights = zip(*ops, strict=True)
        failed_in_a_row = 0
        while not self.target.stop.is_set() and failed_in_a_row < MAX_FAILURES_IN_A_ROW:
            if not self.target.serving.wait(1.0):
                continue
            try:
                if self.pending is not None:
                    self.pending()
                    self.pending = None
                elif self.verified_generation != self.target.generation:
                    generation = self.target.generation
                    self.verify()
                    self.verified_generation = generation
                else:
                    self.rng.choices(functions, weights)[0]()
            except KillWindow:
                continue  # the server is being killed: wait for it, then resolve or verify
            except SemsearchError as exc:
                # A write that failed so is as ambiguous as one cut by a kill: `pending` resolves it.
                self.stats.fail(f"worker {self.number}: {exc.code.name} outside a kill window: {exc.details}")
                failed_in_a_row += 1
                time.sleep(0.5)
                continue
            except Exception as exc:  # a client-side bug or an unexpected exception type
                self.stats.fail(f"worker {self.number}: {type(exc).__name__}: {exc}")
                failed_in_a_row += 1
                time.sleep(0.5)
                continue
            failed_in_a_row = 0
        if failed_in_a_row:
            self.stats.fail(f"worker {self.number} stopped after {failed_in_a_row} failures in a row")

    def setup(self) -> None:
        """The worker's collection and alias (before the first kill, so they are acknowledged)."""
        self.call("CreateCollection", lambda c: c.create_collection(self.collection, exist_ok=True))
        self.call("SetAlias", lambda c: c.set_alias(self.alias, self.collection))

    # -- writes -------------------------------------------------------------------------------------
    def _new_docs(self, ids: list[str]) -> list[Document]:
        docs = []
        for doc_id in ids:
            self.versions[doc_id] += 1
            docs.append(_doc(doc_id, self.versions[doc_id], self.rng))
        return docs

    def op_upsert(self) -> None:
        docs = self._new_docs(self.rng.sample(self.ids, self.rng.randint(1, 5)))
        self.pending = lambda: self._resolve_batches([docs], stream=False)
        count = self.call("Upsert", lambda c: c.upsert(docs, collection=self.collection))
        self.pending = None
        self.check(count == len(docs), f"Upsert of {len(docs)} answered {count}")
        self._apply(docs)
        self.tally["acknowledged upserts"] += 1

    def op_upsert_stream(self) -> None:
        ids = self.rng.sample(self.ids, self.rng.randint(2, 9))
        cuts = sorted(self.rng.sample(range(1, len(ids)), min(2, len(ids) - 1)))
        batches = [self._new_docs(part) for part in _split(ids, cuts)]
        self.pending = lambda: self._resolve_batches(batches, stream=True)
        count = self.call("UpsertStream", lambda c: c.upsert_stream(batches, collection=self.collection))
        self.pending = None
        self.check(count == len(ids), f"UpsertStream of {len(ids)} answered {count}")
        for batch in batches:
            self._apply(batch)
        self.tally["acknowledged upserts"] += 1

    def op_delete(self) -> None:
        ids = self.rng.sample(self.ids, self.rng.randint(1, 3))
        present = [i for i in ids if i in self.docs]
        self.pending = lambda: self._resolve_delete(present)
        count = self.call("Delete", lambda c: c.delete(ids, collection=self.collection))
        self.pending = None
        self.check(count == len(present), f"Delete of {ids} answered {count}, {len(present)} of them stored")
        for doc_id in present:
            self._forget(doc_id)
        self.tally["acknowledged deletes"] += 1

    def op_delete_where(self) -> None:
        # Narrow (a group and a range of n), so that the collection is not emptied at once.
        group, n = self.rng.choice(GROUPS), self.rng.randrange(60, 100)
        where = f'group == "{group}" and n >= {n}'
        matching = [i for i, d in self.docs.items() if d.metadata["group"] == group and d.metadata["n"] >= n]
        self.pending = lambda: self._resolve_delete(matching)
        count = self.call("Delete", lambda c: c.delete(collection=self.collection, where=where))
        self.pending = None
        self.check(count == len(matching), f"Delete where {where} answered {count}, expected {len(matching)}")
        for doc_id in matching:
            self._forget(doc_id)
        self.tally["acknowledged deletes"] += 1

    def _apply(self, docs: list[Document]) -> None:
        for d in docs:
            self.docs[d.id] = d
            self.gone.pop(d.id, None)

    def _forget(self, doc_id: str) -> None:
        if doc_id in self.docs:
            self.gone[doc_id] = self.docs.pop(doc_id).text

    def _resolve_batches(self, batches: list[list[Document]], stream: bool) -> None:
        """An Upsert (one batch) or UpsertStream the kill cut: all or nothing per batch, and for a stream a
        prefix of whole batches; what landed becomes the acknowledged state."""
        ids = [d.id for batch in batches for d in batch]
        found = {d.id: _content(d) for d in self.call("Get", lambda c: c.get(ids, collection=self.collection))}
        landed = []
        for batch in batches:
            new = [found.get(d.id) == _content(d) for d in batch]
            old = [found.get(d.id) == (_content(self.docs[d.id]) if d.id in self.docs else None) for d in batch]
            if all(new):
                landed.append(True)
            elif all(old):
                landed.append(False)
            else:
                self.check(False, f"half-applied batch {[d.id for d in batch]} after a kill: {found}")
                landed.append(any(new))
        if stream:
            self.check(landed == sorted(landed, reverse=True), f"a cut stream applied {landed}: not a prefix")
        for batch, applied in zip(batches, landed, strict=True):
            if applied:
                self._apply(batch)
        kind = "UpsertStream" if stream else "Upsert"
        self.tally[f"ambiguous {kind}: landed"] += all(landed)
        self.tally[f"ambiguous {kind}: partly (whole messages)"] += any(landed) and not all(landed)
        self.tally[f"ambiguous {kind}: not landed"] += not any(landed)

    def _resolve_delete(self, ids: list[str]) -> None:
        found = {d.id for d in self.call("Get", lambda c: c.get(ids, collection=self.collection))} if ids else set()
        self.check(not found or found == set(ids), f"half-applied delete after a kill: {sorted(found)} of {ids}")
        if not found:
            for doc_id in ids:
                self._forget(doc_id)
        self.tally[f"ambiguous Delete: {'not landed' if found else 'landed'}"] += 1

    # -- reads, checked against the acknowledged state ----------------------------------------------
    def _live(self, k: int) -> list[Document]:
        return self.rng.sample(list(self.docs.values()), min(k, len(self.docs)))

    def op_search(self) -> None:
        kind = self.rng.choice(("dense", "lexical", "hybrid", "filtered", "alias"))
        live = self._live(1)
        if kind == "filtered":
            where, matches = _filters(self.rng)
            query = " ".join(self.rng.sample(WORDS, 3))
            hits = self.call("Search", lambda c: c.search(query, collection=self.collection, top_k=8, where=where))
            wrong = [h.id for h in hits if h.id not in self.docs or not matches(self.docs[h.id].metadata)]
            self.check(not wrong, f"Search where {where} returned non-matching {wrong}")
            return
        if not live:
            return
        doc = live[0]
        if kind == "lexical" or kind == "alias":
            collection = self.alias if kind == "alias" else self.collection
            word = doc.text.split()[-1]
            hits = self.call("Search", lambda c: c.search(word, collection=collection, top_k=3, mode="lexical"))
            self.check([h.id for h in hits] == [doc.id], f"lexical search for {word} found {[h.id for h in hits]}")
        else:
            hits = self.call("Search", lambda c: c.search(doc.text, collection=self.collection, top_k=5, mode=kind))
            self.check(doc.id in [h.id for h in hits], f"{kind} search by {doc.id}'s text missed it")

    def op_batch_search(self) -> None:
        live = self._live(4)
        if not live:
            return
        texts = [d.text for d in live]
        results = self.call("BatchSearch", lambda c: c.batch_search(texts, collection=self.collection, top_k=5))
        for doc, hits in zip(live, results, strict=True):
            self.check(doc.id in [h.id for h in hits], f"BatchSearch by {doc.id}'s text missed it")

    def op_explain(self) -> None:
        live = self._live(1)
        if not live:
            return
        doc = live[0]
        query = " ".join(self.rng.sample(doc.text.split()[:5], 2))
        result = self.call("Explain", lambda c: c.explain(query, doc_id=doc.id, collection=self.collection))
        total = float(result.pair_contributions.sum())
        self.check(abs(total - result.score) < 1e-3, f"Explain's pairs add up to {total}, not {result.score}")

    def op_get(self) -> None:
        ids = self.rng.sample(self.ids, 8)
        found = self.call("Get", lambda c: c.get(ids, collection=self.collection))
        want = [i for i in ids if i in self.docs]
        self.check([d.id for d in found] == want, f"Get {ids} found {[d.id for d in found]}, expected {want}")
        for d in found:
            if d.id in self.docs:
                self.check(_content(d) == _content(self.docs[d.id]), f"Get {d.id}: {d} is not the acknowledged one")

    def op_count(self) -> None:
        where, matches = _filters(self.rng)
        count = self.call("Count", lambda c: c.count(collection=self.collection, where=where))
        want = sum(matches(d.metadata) for d in self.docs.values())
        self.check(count == want, f"Count where {where} = {count}, expected {want}")

    def op_scroll(self) -> None:
        where, matches = _filters(self.rng)
        ids, cursor = [], ""
        while True:
            page = self.call(
                "Scroll", lambda c, cursor=cursor: c.scroll(self.collection, where=where, limit=7, cursor=cursor)
            )
            ids += [d.id for d in page.documents]
            cursor = page.next_cursor
            if not cursor:
                break
        want = sorted(i for i, d in self.docs.items() if matches(d.metadata))
        self.check(ids == want, f"Scroll where {where} gave {ids}, expected {want}")

    # -- collections, aliases, snapshots --------------------------------------------------------------
    def _track(self, rpc: str, name: str, exists: bool, fn: Callable[[SearchClient], Any]) -> Any:
        """A call that creates or deletes `name`: unknown until it is acknowledged."""
        self.owned[name] = None
        self.pending = self.reconcile
        result = self.call(rpc, fn)
        self.owned[name] = exists
        self.pending = None
        return result

    def op_collection_cycle(self) -> None:
        """Create a collection, write to it through an alias, delete it."""
        self.counter += 1
        name = f"soak-tmp-w{self.number}-{self.counter}"
        self._track("CreateCollection", name, True, lambda c: c.create_collection(name, default_mode="hybrid"))
        docs = [_doc(f"t{i}", 1, self.rng) for i in range(3)]
        self.pending = self.reconcile
        self.call("SetAlias", lambda c: c.set_alias(self.alias, name))
        self.call("Upsert", lambda c: c.upsert(docs, collection=self.alias))
        self.check(self.call("Count", lambda c: c.count(self.alias)) == 3, f"{name} through its alias: not 3")
        aliases = self.call("ListAliases", lambda c: c.list_aliases())
        self.check(aliases.get(self.alias) == name, f"{self.alias} names {aliases.get(self.alias)}, not {name}")
        self.call("SetAlias", lambda c: c.set_alias(self.alias, self.collection))
        self.pending = None
        self._track("DeleteCollection", name, False, lambda c: c.delete_collection(name))

    def op_snapshot_cycle(self) -> None:
        """Snapshot the worker's collection, restore it beside, check the copy, delete both."""
        at_snapshot = {d.id: _content(d) for d in self.docs.values()}
        self.pending = self.reconcile
        snapshot = self.call("CreateSnapshot", lambda c: c.create_snapshot(self.collection))
        self.snapshots.add(snapshot.name)
        self.pending = None
        listed = {s.name for s in self.call("ListSnapshots", lambda c: c.list_snapshots(self.collection))}
        self.check(self.snapshots <= listed, f"snapshots {sorted(self.snapshots - listed)} are not listed")
        self.counter += 1
        name = f"soak-restored-w{self.number}-{self.counter}"
        self._track("RestoreSnapshot", name, True, lambda c: c.restore_snapshot(snapshot.name, name))
        ids = sorted(at_snapshot)
        copy = {d.id: _content(d) for d in self.call("Get", lambda c: c.get(self.ids, collection=name))}
        self.check(copy == at_snapshot, f"{name} restored {sorted(copy)}, the snapshot held {ids}")
        self._track("DeleteCollection", name, False, lambda c: c.delete_collection(name))
        self.pending = self.reconcile
        self.call("DeleteSnapshot", lambda c: c.delete_snapshot(snapshot.name))
        self.snapshots.discard(snapshot.name)
        self.pending = None

    def reconcile(self) -> None:
        """After a kill cut a collection, alias or snapshot call: learn what exists, check what is known,
        clean up (each cycle leaves nothing behind), and point the alias back at the worker's collection."""
        self.call("SetAlias", lambda c: c.set_alias(self.alias, self.collection))  # before its target goes
        names = {c.name for c in self.call("ListCollections", lambda c: c.list_collections())}
        self._check_owned(names)
        for name in sorted(n for n in names if n in self.owned):
            self._track("DeleteCollection", name, False, lambda c, name=name: c.delete_collection(name))
        listed = {s.name for s in self.call("ListSnapshots", lambda c: c.list_snapshots(self.collection))}
        self.check(self.snapshots <= listed, f"acknowledged snapshots {sorted(self.snapshots - listed)} lost")
        for name in sorted(listed):
            self.call("DeleteSnapshot", lambda c, name=name: c.delete_snapshot(name))
            self.snapshots.discard(name)

    # -- the full check -------------------------------------------------------------------------------
    def verify(self) -> None:
        """Every acknowledged document as last acknowledged, no deleted one, the indexes in step."""
        found = {d.id: d for d in self.call("Get", lambda c: c.get(self.ids, collection=self.collection))}
        lost = sorted(set(self.docs) - set(found))
        changed = sorted(i for i in set(self.docs) & set(found) if _content(found[i]) != _content(self.docs[i]))
        back = sorted(set(found) - set(self.docs))
        self.check(not lost, f"acknowledged documents lost: {lost}")
        self.check(not changed, f"documents not as last acknowledged: {changed}")
        self.check(not back, f"deleted documents back (or unacknowledged writes there): {back}")
        count = self.call("Count", lambda c: c.count(self.collection))
        self.check(count == len(self.docs), f"Count {count}, {len(self.docs)} acknowledged")
        live = sorted(self.docs)
        for start in range(0, len(live), 16):
            chunk = live[start : start + 16]
            words = [self.docs[i].text.split()[-1] for i in chunk]  # each version's own tag word
            results = self.call(
                "BatchSearch", lambda c, words=words: c.batch_search(words, self.collection, top_k=2, mode="lexical")
            )
            for doc_id, hits in zip(chunk, results, strict=True):
                self.check([h.id for h in hits] == [doc_id], f"lexical index out of step for {doc_id}")
        gone = self.rng.sample(sorted(self.gone), min(8, len(self.gone)))
        if gone:  # the vector index forgot them too: not found by their own last text
            texts = [self.gone[i] for i in gone]
            results = self.call("BatchSearch", lambda c: c.batch_search(texts, self.collection, top_k=5, mode="dense"))
            for doc_id, hits in zip(gone, results, strict=True):
                self.check(doc_id not in [h.id for h in hits], f"deleted {doc_id} is still in the vector index")
        aliases = self.call("ListAliases", lambda c: c.list_aliases())
        self.check(aliases.get(self.alias) == self.collection, f"{self.alias} names {aliases.get(self.alias)}")
        names = {c.name for c in self.call("ListCollections", lambda c: c.list_collections())}
        self.check(self.collection in names, f"collection {self.collection} is gone")
        self._check_owned(names)
        self.tally["full checks"] += 1

    def _check_owned(self, names: set[str]) -> None:
        """The temporary collections acknowledged as created or deleted are so; the unknown ones are learnt."""
        for name, exists in sorted(self.owned.items()):
            if exists is None:
                self.owned[name] = name in names
                kind = name.split("-")[1]  # tmp, restored
                self.tally[f"ambiguous {kind} create/delete: {'exists' if name in names else 'absent'}"] += 1
            else:
                self.check((name in names) == exists, f"collection {name}: exists={name in names}, acked {exists}")


def _split(items: list, cuts: list[int]) -> list[list]:
    bounds = [0, *cuts, len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- the server's memory ----------------------------------------------------------------------------------
def vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class RssSample:
    at: float  # seconds since the run started
    life: int  # which server process (1 = the first start)
    kib: int


def rss_verdict(samples: list[RssSample], warmup_seconds: float) -> tuple[float | None, str]:
    """Growth of the server's RSS after the warm-up: the median of the peaks of the processes started in
    the second half of the post-warm-up run against that of the first half. Each process is killed after
    1-3 minutes, so the peak of one life is what a leak would raise (within it, or from data it reloads);
    medians over several lives keep one long-lived process from deciding. The first process is left out
    whatever the warm-up: on a new data directory it exports the fast engines with torch loaded (about
    twice the RSS of a restart, which never loads torch), and so is a life sampled for less than
    RSS_MIN_LIFE_SECONDS. None when there are too few lives to judge."""
    spans: dict[int, list[RssSample]] = defaultdict(list)
    for s in samples:
        if s.at >= warmup_seconds and s.life > 1:
            spans[s.life].append(s)
    # A life sampled for less than RSS_MIN_LIFE_SECONDS (the last one, cut by the run's end) has not
    # reached its plateau: its low peak would hide growth.
    peaks = {
        life: (lived[0].at, max(s.kib for s in lived))
        for life, lived in spans.items()
        if lived[-1].at - lived[0].at >= RSS_MIN_LIFE_SECONDS
    }
    if len(peaks) < 4:
        return None, f"{len(peaks)} server lives sampled long enough after the warm-up: too few to judge growth"
    lives = sorted(peaks.values())
    half = len(lives) // 2
    early = statistics.median(p for _, p in lives[:half])
    late = statistics.median(p for _, p in lives[half:])
    growth = late / early - 1
    return growth, (
        f"median peak of {half} lives {early / 1024:.0f} MiB -> of {len(lives) - half} later lives "
        f"{late / 1024:.0f} MiB: {growth:+.1%}"
    )


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class SoakResult:
    seed: int
    seconds: float
    restarts: int
    start_seconds: list[float]
    down_seconds: float  # in kill windows: from each kill until SERVING again
    stats: Stats
    tally: Counter
    rss: list[RssSample]
    rss_growth: float | None
    rss_note: str
    rss_enforced: bool
    log_lines: list[str]
    failures: list[str]

    @property
    def succeeded_rpcs(self) -> set[str]:
        return {rpc for rpc, codes in self.stats.codes.items() if codes[("OK", False)] > 0}


@contextmanager
def _sampling(target: Target, current: Callable[[], ServerProcess], started: float, every: float) -> Iterator[list]:
    samples: list[RssSample] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            server, life = current(), target.generation
            if target.serving.is_set() and server.proc is not None and server.proc.poll() is None:
                kib = vm_rss_kib(server.pid)
                if kib:
                    samples.append(RssSample(time.monotonic() - started, life, kib))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def run_soak(
    minutes: float,
    kill_every: tuple[float, float],
    seed: int,
    data_dir: Path,
    backend: str = "auto",
    workers: int = 3,
    rss_check: bool = True,
    warmup_minutes: float | None = None,
    rss_every: float = 5.0,
) -> SoakResult:
    """Runs the soak for `minutes` of wall time (server starts included) and returns what it saw."""
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    flags = ("--backend", backend, "--snapshot-every", "100")
    target, stats = Target(), Stats()
    started = time.monotonic()
    deadline = started + minutes * 60
    warmup = warmup_minutes * 60 if warmup_minutes is not None else min(300.0, minutes * 6)
    servers = [ServerProcess(data_dir, *flags)]  # one per life: each keeps its own log
    start_seconds = []
    t0 = time.monotonic()
    servers[0].start()
    start_seconds.append(time.monotonic() - t0)
    target.up(servers[0].address)
    print(f"server pid {servers[0].pid} on {servers[0].address} after {start_seconds[0]:.1f}s", flush=True)
    crew = [Worker(n, target, stats, seed) for n in range(workers)]
    restarts = 0
    with _sampling(target, lambda: servers[-1], started, rss_every) as rss:
        for worker in crew:
            worker.setup()
            worker.verified_generation = target.generation
            worker.thread.start()
        while True:
            wait = rng.uniform(*kill_every) * 60
            if time.monotonic() + wait >= deadline:
                break
            if target.stop.wait(wait):
                break
            if servers[-1].proc.poll() is not None:
                stats.fail(f"the server exited by itself with {servers[-1].proc.returncode}")
                break
            target.going_down()
            servers[-1].kill()
            servers.append(ServerProcess(data_dir, *flags))
            t0 = time.monotonic()
            servers[-1].start()
            start_seconds.append(time.monotonic() - t0)
            restarts += 1
            target.up(servers[-1].address)
            elapsed = time.monotonic() - started
            print(f"{elapsed:6.0f}s: kill {restarts}, serving again after {start_seconds[-1]:.1f}s", flush=True)
        target.stop.wait(max(0.0, deadline - time.monotonic()))
        if servers[-1].proc.poll() is not None:
            stats.fail(f"the server exited by itself with {servers[-1].proc.returncode}")
        target.stop.set()
        for worker in crew:
            worker.thread.join(CALL_TIMEOUT * 2)
    seconds = time.monotonic() - started
    # The final check, on the running server: ambiguous writes resolved, then every document.
    for worker in crew:
        try:
            if worker.pending is not None:
                worker.pending()
                worker.pending = None
            worker.verify()
        except SemsearchError as exc:
            stats.fail(f"final check of worker {worker.number}: {exc}")
    code = servers[-1].terminate()
    if code != 0:
        stats.fail(f"the server exited with {code} on SIGTERM")
    log_lines = [line for s in servers for line in unexpected_log_lines(s.output())]
    for s in servers:
        s.stop()
    if restarts == 0:
        stats.fail("no kill happened: the run was too short for --kill-every")
    growth, note = rss_verdict(rss, warmup)
    if rss_check and growth is not None and growth > RSS_GROWTH_LIMIT:
        stats.fail(f"server RSS grew {growth:.1%} after the warm-up ({note})")
    tally = sum((w.tally for w in crew), Counter())
    down = sum(end - start for start, end in target.windows)
    return SoakResult(
        seed,
        seconds,
        restarts,
        start_seconds,
        down,
        stats,
        tally,
        rss,
        growth,
        note,
        rss_check,
        log_lines,
        stats.failures,
    )


# -- the summary ------------------------------------------------------------------------------------------
def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def summary(result: SoakResult) -> str:
    stats = result.stats
    lines = []
    total = sum(sum(c.values()) for c in stats.codes.values())
    ok = sum(len(v) for v in stats.latencies.values())
    lines.append(
        f"soak: seed {result.seed}, {result.seconds / 60:.1f} min, {total} calls, {ok / result.seconds:.1f} "
        f"successful calls/s, {result.restarts} kills+restarts "
        f"(restart to SERVING: median {statistics.median(result.start_seconds[1:] or [0]):.1f}s, "
        f"{result.down_seconds:.0f}s down in all; first start {result.start_seconds[0]:.1f}s)"
    )
    lines.append("")
    header = f"{'rpc':<17}{'ok':>7}{'p50 ms':>9}{'p99 ms':>9}  other codes (in a kill window / outside)"
    lines.append(header)
    lines.append("-" * len(header))
    for rpc in sorted(stats.codes, key=lambda r: (r not in SOAK_RPCS, SOAK_RPCS.index(r) if r in SOAK_RPCS else 0)):
        codes = stats.codes[rpc]
        text = ", ".join(
            f"{code} {codes[(code, True)]}/{codes[(code, False)]}" for code in sorted({c for c, _ in codes} - {"OK"})
        )
        lat = stats.latencies[rpc]
        lines.append(f"{rpc:<17}{len(lat):>7}{_ms(lat, 0.5):>9}{_ms(lat, 0.99):>9}  {text or '-'}")
    by_code = Counter()
    for codes in stats.codes.values():
        for (code, in_window), n in codes.items():
            if code != "OK":
                by_code[f"{code} ({'kill window' if in_window else 'outside a kill window'})"] += n
    lines.append("")
    lines.append("errors by status code: " + (", ".join(f"{k} {v}" for k, v in sorted(by_code.items())) or "none"))
    lines.append("writes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.tally.items())))
    missing = [rpc for rpc in SOAK_RPCS if rpc not in result.succeeded_rpcs]
    lines.append(f"RPCs never successful: {', '.join(missing) or 'none'}")
    lines.append("")
    lines.append("server RSS (MiB) per life: first sample -> peak (at s)")
    lives: dict[int, list[RssSample]] = defaultdict(list)
    for s in result.rss:
        lives[s.life].append(s)
    for life, samples in sorted(lives.items()):
        peak = max(samples, key=lambda s: s.kib)
        lines.append(
            f"  life {life:>2}: {samples[0].kib / 1024:6.0f} at {samples[0].at:6.0f}s -> {peak.kib / 1024:6.0f} "
            f"at {peak.at:6.0f}s ({len(samples)} samples)"
        )
    enforced = "enforced" if result.rss_enforced else "reported only"
    lines.append(f"RSS growth after warm-up ({enforced}, limit {RSS_GROWTH_LIMIT:.0%}): {result.rss_note}")
    lines.append(f"server log lines that are not INFO: {len(result.log_lines)}")
    lines.extend(f"  {line[:200]}" for line in result.log_lines[:5])
    lines.append("")
    if result.failures:
        lines.append(f"FAIL: {len(result.failures)} failure(s)")
        lines.extend(f"  {f}" for f in result.failures[:20])
    else:
        lines.append(
            "PASS: no acknowledged write lost, no INTERNAL/UNKNOWN, no failed call outside a kill window, "
            "every read as acknowledged"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall time of the run, server starts included")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=1, help="the kills' times and every worker's calls (printed)")
    parser.add_argument("--data-dir", type=Path, help="default: a temporary directory (removed after a pass)")
    parser.add_argument("--backend", default="auto", help="the server's --backend (default: its default, auto)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--warmup-minutes", type=float, help="RSS growth is judged after it (default: 10%%, 5 max)")
    parser.add_argument("--no-rss-check", dest="rss_check", action="store_false", help="report RSS, never fail on it")
    args = parser.parse_args(argv)
    seed = args.seed
    print(f"soak seed {seed} (replay: --seed {seed})", flush=True)
    workdir = None
    data_dir = args.data_dir
    if data_dir is None:
        workdir = Path(tempfile.mkdtemp(prefix="semsearch-soak-"))
        data_dir = workdir / "data"
    print(f"data dir {data_dir} (server logs beside it)", flush=True)
    result = run_soak(
        args.minutes,
        tuple(args.kill_every),
        seed,
        data_dir,
        backend=args.backend,
        workers=args.workers,
        rss_check=args.rss_check,
        warmup_minutes=args.warmup_minutes,
    )
    print("\n" + summary(result), flush=True)
    if workdir is not None and not result.failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
