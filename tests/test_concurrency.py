"""8 writers and 8 readers at once: no half-applied batch is ever visible, and everything adds up."""

from __future__ import annotations

import random
import threading
import time

from semsearch import Document, SearchClient

WRITERS = 8
READERS = 8
BATCH = 4
SECONDS = 4.0
# Each writer stops after this many batches: the final check searches for every live document with
# top_k = 1,000, so the live set must stay below that however fast the machine is.
MAX_BATCHES = 30


def test_concurrent_writers_and_readers(server, collection):
    stop = threading.Event()
    failures: list[str] = []
    acked: dict[int, list[int]] = {w: [] for w in range(WRITERS)}  # writer -> acknowledged batch numbers
    deleted: dict[int, set[int]] = {w: set() for w in range(WRITERS)}

    def ids(writer: int, batch: int) -> list[str]:
        return [f"w{writer}-b{batch}-{j}" for j in range(BATCH)]

    def writer(w: int) -> None:
        rng = random.Random(w)
        with SearchClient(server.address, timeout=60) as client:
            batch = 0
            while not stop.is_set() and batch < MAX_BATCHES:
                docs = [
                    Document(
                        i,
                        f"writer {w} batch {batch} item {i[-1]} {rng.choice(['wine', 'bread', 'rain'])}",
                        {"writer": str(w), "batch": str(batch)},
                    )
                    for i in ids(w, batch)
                ]
                client.upsert(docs, collection=collection)
                acked[w].append(batch)
                if batch % 5 == 4:
                    victim = rng.choice(acked[w][:-1])
                    if victim not in deleted[w]:
                        assert client.delete(ids(w, victim), collection=collection) == BATCH
                        deleted[w].add(victim)
                batch += 1

    def reader(r: int) -> None:
        rng = random.Random(100 + r)
        with SearchClient(server.address, timeout=60) as client:
            while not stop.is_set():
                w = rng.randrange(WRITERS)
                batch = rng.randrange(max(1, len(acked[w]) + 1))
                found = client.get(ids(w, batch), collection=collection)
                if len(found) not in (0, BATCH):
                    failures.append(f"half a batch visible: w{w} b{batch}: {len(found)}")
                gone_before = set(deleted[w])  # deletes acknowledged before this search began
                hits = client.search("wine", collection=collection, top_k=20, filter={"writer": str(w)})
                for h in hits:
                    if h.metadata["writer"] != str(w):
                        failures.append(f"filter leaked {h.id}")
                    if int(h.metadata["batch"]) in gone_before:
                        failures.append(f"search found {h.id} after its delete was acknowledged")
                # The index side of "no half batch": a search confined to one batch finds all of it or none.
                whole = client.search(
                    "wine",
                    collection=collection,
                    top_k=20,
                    min_score=-1.0,  # every document of the batch, however far from the query
                    filter={"writer": str(w), "batch": str(batch)},
                )
                if len(whole) not in (0, BATCH):
                    failures.append(f"half a batch searchable: w{w} b{batch}: {len(whole)}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    errors: list[BaseException] = []

    def guarded(target):
        def run(*args):
            try:
                target(*args)
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)
                stop.set()

        return run

    for t in threads:
        t._target = guarded(t._target)
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not failures, failures[:5]

    client = server.client
    live = {i for w in range(WRITERS) for b in acked[w] if b not in deleted[w] for i in ids(w, b)}
    gone = {i for w in range(WRITERS) for b in deleted[w] for i in ids(w, b)}
    assert sum(len(a) for a in acked.values()) >= WRITERS, "writers hardly wrote; the test proved little"
    counts = {c.name: c.document_count for c in client.list_collections()}
    assert counts[collection] == len(live)
    found = []
    ordered = sorted(live)
    for start in range(0, len(ordered), 500):
        found += client.get(ordered[start : start + 500], collection=collection)
    assert {d.id for d in found} == live
    for d in found:
        w, b = d.id.split("-")[0][1:], d.id.split("-")[1][1:]
        assert d.text.startswith(f"writer {w} batch {b} ") and d.metadata == {"writer": w, "batch": b}
    assert client.get(sorted(gone)[:500], collection=collection) == []
    # The index agrees with the database: a search over everything returns only live documents.
    assert len(live) < 1000
    everything = client.search("writer batch item", collection=collection, top_k=1000)
    assert {h.id for h in everything} == live
