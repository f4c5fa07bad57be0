"""The Milvus store against the store contract: a `milvus-lite server` on a free port (the network path that a
Milvus standalone or cluster is reached by) and, once, a local Milvus Lite `.db` file."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus store needs the `milvus` extra: pip install './server[milvus]'")

from conftest import MilvusLiteServer, free_port  # noqa: E402
from semsearch_server.domain import CollectionSettings, Document  # noqa: E402
from semsearch_server.errors import Unavailable  # noqa: E402
from semsearch_server.filtering import All, Condition, Op  # noqa: E402
from semsearch_server.index.milvus_filters import superset_expression  # noqa: E402
from semsearch_server.index.milvus_provider import MilvusStoreProvider  # noqa: E402
from store_contract import FINGERPRINT, HOSTILE, StoreContract, embedded, unit  # noqa: E402


class TestMilvusServer(StoreContract):
    @pytest.fixture
    def provider_factory(self, milvus_server):
        prefix = f"t{uuid.uuid4().hex[:8]}_"
        return lambda: MilvusStoreProvider(milvus_server, prefix=prefix)

    def test_two_replicas_read_their_writes(self, provider_factory):
        a, b = provider_factory(), provider_factory()
        name = "shared"
        store_a = a.create(name, CollectionSettings(), FINGERPRINT)
        store_b = b.open(name, FINGERPRINT)
        rng = np.random.default_rng(10)
        for i in range(5):
            vec = unit(rng, 1)
            store_a.upsert([embedded(f"d{i}", f"written through a {i}", vec)])
            # no sleep: an acknowledged write is visible to the other replica's next read
            assert store_b.search_dense(vec, 1, {})[0][0].doc_id == f"d{i}"
            assert store_b.get([f"d{i}"])[0].text == f"written through a {i}"
        store_b.delete(["d0"])
        assert store_a.get(["d0"]) == [] and store_a.count() == 4

    def test_uncommitted_write_is_invisible_and_repaired(self, provider_factory):
        """A crash between the rows and the commit marker leaves the old document whole."""
        provider = provider_factory()
        store = provider.create("crash", CollectionSettings(), FINGERPRINT)
        rng = np.random.default_rng(11)
        old = unit(rng, 2)
        store.upsert([embedded("doc", "old text here", old)])
        # the rows of a newer write, without its marker (what a crash after inserting them leaves)
        version = int(time.time_ns() // 1000) - 10**9 * 1000  # older than STALE_SECONDS: repairable
        new = unit(rng, 1)
        store._client.insert(
            store._collection,
            [
                {
                    "pk": f"{version + 10**12}:0:doc",
                    "doc_id": "doc",
                    "version": version + 10**12,
                    "passage_index": 0,
                    "start": 0,
                    "end": 3,
                    "text": "new",
                    "meta": {},
                    "vector": new[0].tolist(),
                }
            ],
        )
        assert store.get(["doc"])[0].text == "old text here"
        passages, _ = store.get_passages(["doc"])["doc"]
        assert len(passages) == 2
        assert store.search_dense(new, 5, {})[0][0].score == pytest.approx(float((old @ new[0]).max()), abs=1e-5)
        assert store.search_lexical(["new"], 5, {})[0] == []
        assert store.count() == 1

    def test_crash_between_heads_and_marker_leaves_the_old_document(self, provider_factory):
        """Heads are written before the commit marker and name the previous version: a crash in between
        leaves get and search on the old document, and the next write replaces it cleanly."""
        store = provider_factory().create("heads", CollectionSettings(), FINGERPRINT)
        rng = np.random.default_rng(12)
        old, new = unit(rng, 1), unit(rng, 2)
        store.upsert([embedded("doc", "old text", old, {"v": "1"})])
        store._client = _CrashingClient(store._client, crash_on="marker")
        with pytest.raises(Exception, match="crash"):
            store.upsert([embedded("doc", "new text in two passages", new, {"v": "2"})])
        other = provider_factory().open("heads", FINGERPRINT)  # another replica, or the restart
        heads = other._heads(["doc"])
        assert [v for v, _ in heads["doc"].versions][1:] != []  # the head names the new and the old version
        assert other.get(["doc"]) == [Document("doc", "old text", {"v": "1"})]
        hit = other.search_dense(new[0], 1, {}, documents=True)[0][0]
        assert hit.document.text == "old text" and hit.score == pytest.approx(float(old[0] @ new[0]), abs=1e-5)
        assert other.count() == 1
        newer = unit(rng, 1)
        other.upsert([embedded("doc", "newer", newer)])
        assert other.get(["doc"])[0].text == "newer"
        assert len(other.get_passages(["doc"])["doc"][0]) == 1
        rows = other._query('doc_id == "doc" and passage_index >= 0', ["version"])
        # the old version's rows and the uncommitted ones are gone, not only hidden
        assert {int(r["version"]) for r in rows} == {v for v, _ in other._heads(["doc"])["doc"].versions[:1]}
        assert other.delete(["doc"]) == 1 and other.get(["doc"]) == [] and other.count() == 0

    def test_crash_after_marker_shows_the_new_document_everywhere(self, provider_factory):
        """A crash after the commit marker, before the old rows are deleted: get and search agree on the new
        version; reopening removes the superseded rows."""
        store = provider_factory().create("after", CollectionSettings(), FINGERPRINT)
        rng = np.random.default_rng(13)
        old, new = unit(rng, 3), unit(rng, 1)
        store.upsert([embedded("doc", "old text", old)])
        store._client = _CrashingClient(store._client, crash_on="delete")
        with pytest.raises(Exception, match="crash"):
            store.upsert([embedded("doc", "new text", new)])
        other = provider_factory().open("after", FINGERPRINT)
        assert other.get(["doc"])[0].text == "new text"
        hit = other.search_dense(old[1], 1, {}, documents=True)[0][0]
        assert hit.document.text == "new text" and hit.score == pytest.approx(float(new[0] @ old[1]), abs=1e-5)
        assert len(other.get_passages(["doc"])["doc"][0]) == 1
        assert len(other._query('doc_id == "doc" and passage_index >= 0', ["pk"])) == 1  # repaired on open

    def test_a_head_left_behind_by_an_older_writer_is_repaired_on_open(self, provider_factory):
        """Heads used to be written after the marker: a crash in between left a head naming the old version
        while a newer one was committed. Opening the collection moves such heads forward."""
        store = provider_factory().create("behind", CollectionSettings(), FINGERPRINT)
        rng = np.random.default_rng(14)
        store.upsert([embedded("doc", "old text", unit(rng, 1))])
        version = store._new_version()
        row = {"doc_id": "doc", "version": version, "start": 0, "end": 8, "text": "", "meta": {}}
        vec = unit(rng, 1)[0].tolist()
        store._client.insert(
            store._collection,
            [
                {**row, "pk": f"{version}:0:doc", "passage_index": 0, "text": "new text", "vector": vec},
                {**row, "pk": f"{version}:marker", "doc_id": "", "passage_index": -1, "vector": [0.0] * len(vec)},
            ],
        )
        other = provider_factory().open("behind", FINGERPRINT)
        assert other.get(["doc"])[0].text == "new text"
        assert other.search_dense(np.asarray(vec), 1, {}, documents=True)[0][0].document.text == "new text"

    def test_a_collection_from_before_the_meta_partition_opens_and_moves_heads_into_it(self, provider_factory):
        """Collections created before heads and markers had their own partition keep working: the partition is
        added on open, and a document's next write moves its head there (one head row, not two)."""
        provider = provider_factory()
        store = provider.create("older", CollectionSettings(), FINGERPRINT)
        client, full = store._client, store._collection
        client.release_collection(full)
        client.drop_partition(full, "meta")
        client.load_collection(full)
        rng = np.random.default_rng(16)
        vec = unit(rng, 1)[0].tolist()
        row = {"doc_id": "doc", "version": 7, "start": 0, "end": 8, "text": "", "meta": {}, "vector": vec}
        zero = [0.0] * len(vec)
        client.insert(  # what the earlier layout wrote, all in the default partition
            full,
            [
                {**row, "pk": "7:0:doc", "passage_index": 0, "text": "old text", "meta": {"k": "v"}},
                {**row, "pk": "7:marker", "doc_id": "", "passage_index": -1, "vector": zero},
                {**row, "pk": "h:doc", "passage_index": -2, "end": 1, "vector": zero},
            ],
        )
        other = provider_factory().open("older", FINGERPRINT)
        assert other._client.has_partition(full, "meta")
        assert other.get(["doc"]) == [Document("doc", "old text", {"k": "v"})]
        assert other.search_dense(np.asarray(vec), 1, {}, documents=True)[0][0].document.text == "old text"
        other.upsert([embedded("doc", "new text", unit(rng, 1))])
        assert other.get(["doc"])[0].text == "new text"
        assert len(other._query('pk == "h:doc"', ["version"])) == 1
        assert other.delete(["doc"]) == 1 and other.count() == 0

    def test_get_and_delete_read_by_primary_key(self, provider_factory):
        """No doc_id expression (a scan of the collection in Milvus Lite): heads, rows and markers by key."""
        store = provider_factory().create("keys", CollectionSettings(), FINGERPRINT)
        rng = np.random.default_rng(15)
        store.upsert([embedded(f"d{i}", f"text {i}", unit(rng, 2)) for i in range(5)])
        store._versions = type(store._versions)()  # forget which versions are committed
        spy = _CrashingClient(store._client, crash_on=None)
        store._client = spy
        assert [d.text for d in store.get(["d3", "nope", "d1"])] == ["text 3", "text 1"]
        assert store.delete(["d1", "nope"]) == 1
        assert spy.filters and all(f.startswith("pk in [") for f in spy.filters), spy.filters
        assert [d.id for d in store.get(["d0", "d1", "d2"])] == ["d0", "d2"]

    def test_passages_and_their_scores_read_by_primary_key(self, provider_factory):
        """Explain's passages, hybrid's dense scores and lexical hits' spans: the current version's rows by
        key through the heads, as Get reads (no doc_id scan), after a replacement that changed the count."""
        store = provider_factory().create("passage-keys", CollectionSettings(), FINGERPRINT)
        rng = np.random.default_rng(16)
        store.upsert([embedded("a", "first text of three passages", unit(rng, 3)), embedded("b", "two", unit(rng, 2))])
        newer = unit(rng, 2)
        store.upsert([embedded("a", "now two passages", newer)])
        store._versions = type(store._versions)()
        spy = _CrashingClient(store._client, crash_on=None)
        store._client = spy
        passages = store.get_passages(["a", "nope", "b"])
        assert sorted(passages) == ["a", "b"]
        spans, vectors = passages["a"]
        assert [p.index for p in spans] == [0, 1] and spans[-1].end == len("now two passages")
        np.testing.assert_allclose(vectors, newer, atol=1e-6)
        best = store.dense_scores(newer[1], ["a"])["a"]
        assert best.passage.index == 1 and abs(best.score - 1) < 1e-5
        assert [p.index for p in store._spans_of(["b"])["b"]] == [0, 1]
        assert spy.filters and all(f.startswith("pk in [") for f in spy.filters), spy.filters

    def test_filter_expression_is_literal(self):
        evil = 'meta["k"] == "\\" or 1==1 or \\""'
        assert (
            superset_expression({"k": '" or 1==1 or "'})
            == f'({evil} or json_contains(meta["k"], "\\" or 1==1 or \\""))'
        )
        assert superset_expression({'a"b': "\\"}).startswith('(meta["a\\"b"] == "\\\\" or ')
        assert len(HOSTILE) > 5

    def test_the_superset_expression_keeps_exactly_the_hostile_value_it_names(self, store):
        """What Milvus itself keeps for each expression (before the exact test): a quote, backslash or
        newline in a key or value is a literal, so `" or 1==1 or "` keeps only the document holding it, as a
        string or as a list element, and IN keeps the union."""
        rng = np.random.default_rng(17)
        docs = [embedded(f"h{i}", "t", unit(rng, 1), {"k": v, 'key"\\': [v, "other"]}) for i, v in enumerate(HOSTILE)]
        docs.append(embedded("plain", "t", unit(rng, 1), {"k": 1, 'key"\\': True}))
        store.upsert(docs)

        def kept(tree) -> set[str]:
            expr = f"passage_index == 0 and {superset_expression(tree)}"
            return {r["doc_id"] for r in store._query(expr, ["doc_id"])}

        for i, v in enumerate(HOSTILE):
            for key in ("k", 'key"\\'):
                assert kept(Condition(key, Op.EQ, v)) == {f"h{i}"}, (key, v)
                assert store.count(Condition(key, Op.EQ, v)) == 1
        assert kept(Condition("k", Op.IN, (HOSTILE[0], HOSTILE[1]))) == {"h0", "h1"}
        assert kept(All((Condition("k", Op.EQ, HOSTILE[0]), Condition('key"\\', Op.EQ, "other")))) == {"h0"}
        assert store.count(Condition("k", Op.EQ, 1)) == 1

    def test_unreachable_milvus_is_unavailable(self):
        with pytest.raises(Unavailable, match="unreachable"):
            MilvusStoreProvider(f"http://127.0.0.1:{free_port()}", timeout=1.0).names()


class _CrashingClient:
    """A Milvus client that fails at one step of a write, as a process killed there would stop (the rows
    written before it stay); records the filter of every query and delete."""

    def __init__(self, client, crash_on: str | None) -> None:
        self._client, self._crash_on, self.filters = client, crash_on, []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def insert(self, collection, rows, **kwargs):
        if self._crash_on == "marker" and any(r["passage_index"] == -1 for r in rows):
            raise RuntimeError("crash before the commit marker")
        return self._client.insert(collection, rows, **kwargs)

    def delete(self, collection, filter):
        self.filters.append(filter)
        if self._crash_on == "delete":
            raise RuntimeError("crash before the old rows are deleted")
        return self._client.delete(collection, filter=filter)

    def query(self, collection, filter, **kwargs):
        self.filters.append(filter)
        return self._client.query(collection, filter=filter, **kwargs)

    def query_iterator(self, collection, filter, **kwargs):
        self.filters.append(filter)
        return self._client.query_iterator(collection, filter=filter, **kwargs)


class TestMilvusLiteFile(StoreContract):
    @pytest.fixture
    def provider_factory(self, tmp_path):
        providers: list[MilvusStoreProvider] = []

        def make():
            # one process may hold a .db file: the previous provider is closed first (a restart)
            while providers:
                providers.pop().close()
            providers.append(MilvusStoreProvider(str(tmp_path / "lite.db")))
            return providers[-1]

        yield make
        for p in providers:
            p.close()


def test_milvus_lost_while_serving_is_unavailable_then_recovers(tmp_path):
    """A Milvus that goes away: Unavailable (not an internal error); the same provider serves when it returns."""
    milvus = MilvusLiteServer(tmp_path / "milvus").start()
    try:
        provider = MilvusStoreProvider(milvus.uri, timeout=3.0)
        store = provider.create("lost", CollectionSettings(), FINGERPRINT)
        vec = unit(np.random.default_rng(12), 1)
        store.upsert([embedded("a", "kept across the outage", vec)])
        milvus.kill()
        with pytest.raises(Unavailable, match="unreachable"):
            store.search_dense(vec, 1, {})
        with pytest.raises(Unavailable):
            store.upsert([embedded("b", "not acknowledged", vec)])
        milvus.start()
        reopened = provider.open("lost", FINGERPRINT)  # the registry reopens a collection after an outage
        assert reopened.search_dense(vec, 1, {})[0][0].doc_id == "a"
        assert reopened.get(["a"])[0].text == "kept across the outage"
        assert store.get(["a"])[0].text == "kept across the outage"  # the open store reconnects too
        assert store.get(["b"]) == []
    finally:
        milvus.kill()


def test_the_service_serves_every_mode_on_milvus_and_two_replicas_share_it(
    milvus_server, tmp_path, embedder, explainer
):
    """The whole service (--store milvus) on the Lite server: writes through one replica, reads through another."""
    from conftest import InProcessServer
    from semsearch import Document

    prefix = f"svc{uuid.uuid4().hex[:6]}_"
    options = {"store": "milvus", "milvus_uri": milvus_server, "milvus_prefix": prefix}
    one = InProcessServer(tmp_path / "one", embedder, explainer, **options)
    two = InProcessServer(tmp_path / "two", embedder, explainer, **options)
    try:
        one.client.create_collection("wines", passages=False)
        docs = [
            Document("c1", "I eat salmon", {"kind": "eat"}),
            Document("c3", "I drink red-wine", {"kind": "drink"}),
            Document("c4", "I drink water", {"kind": "drink"}),
            Document("c5", "I drink a white-wine mix", {"kind": "drink"}),
        ]
        assert one.client.upsert(docs, collection="wines") == 4
        assert "wines" in {c.name for c in two.client.list_collections()}
        for mode in ("dense", "lexical", "hybrid"):
            hits = two.client.search("I drink water with wine", collection="wines", mode=mode, top_k=4)
            assert {h.id for h in hits[:3]} == {"c3", "c4", "c5"}, (mode, [h.id for h in hits])
        filtered = two.client.search("wine", collection="wines", filter={"kind": 'drink" or 1==1 or "'})
        assert filtered == []
        result = two.client.explain("I drink water with wine", doc_id="c3", collection="wines", mode="dense", top_k=2)
        assert result.ranking.rank in (1, 2, 3)
        assert abs(sum(s.contribution for s in result.doc_segments) - result.score) < 1e-4
        assert one.client.delete(["c1"], collection="wines") == 1
        assert two.client.get(["c1", "c4"], collection="wines")[0].id == "c4"
    finally:
        one.stop()
        two.stop()


@pytest.mark.slow
def test_a_replica_started_before_milvus_waits_not_serving_then_serves(tmp_path):
    from semsearch_server.testing import ServerProcess

    port = free_port()
    server = ServerProcess(
        tmp_path / "replica", "--backend", "torch", "--store", "milvus", "--milvus-uri", f"http://127.0.0.1:{port}"
    )
    milvus = None
    try:
        server.start(wait_serving=False)
        deadline = time.monotonic() + 180
        while "NOT_SERVING, retrying" not in server.output():
            assert time.monotonic() < deadline, server.output()[-2000:]
            time.sleep(0.5)
        with server.client(timeout=5) as client:
            assert client.health() == "NOT_SERVING"
        milvus = MilvusLiteServer(tmp_path / "milvus", port).start()
        server.wait_serving(120)
        with server.client() as client:
            assert client.upsert([("a", "the night train to Vienna")]) == 1
            assert client.search("train", mode="lexical")[0].id == "a"
    finally:
        server.stop()
        if milvus is not None:
            milvus.kill()
