"""Aliases: every collection field accepts one, one namespace with collections, atomic repoints, persistence."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from semsearch import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from semsearch_server.testing import ServerProcess

pytestmark = pytest.mark.both_stores

BLUE = [(f"b{i}", f"blue document {i}: the sea and the sky on a clear day") for i in range(6)]
GREEN = [(f"g{i}", f"green document {i}: forests, grass and leaves in spring") for i in range(6)]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def two_collections(client):
    blue, green = _name("blue"), _name("green")
    client.create_collection(blue)
    client.create_collection(green)
    client.upsert(BLUE, collection=blue)
    client.upsert(GREEN, collection=green)
    yield blue, green
    for alias, target in client.list_aliases().items():
        if target in (blue, green):
            client.delete_alias(alias)
    client.delete_collection(blue)
    client.delete_collection(green)


def test_every_collection_rpc_accepts_an_alias(client, two_collections, store_kind):
    blue, green = two_collections
    alias = _name("live")
    assert client.set_alias(alias, blue) == ""
    assert client.list_aliases()[alias] == blue
    assert {h.id for h in client.search("the sea", collection=alias, top_k=20)} == {d for d, _ in BLUE}
    assert len(client.batch_search(["sky", "sea"], collection=alias)) == 2
    assert client.count(collection=alias) == len(BLUE)
    assert [d.id for d in client.get(["b1"], collection=alias)] == ["b1"]
    if store_kind == "local":  # Scroll is not on the Milvus store yet
        assert [d.id for d in client.scroll(collection=alias).documents] == sorted(d for d, _ in BLUE)
    client.upsert([("b-new", "written through the alias")], collection=alias)
    assert client.get(["b-new"], collection=blue)[0].text == "written through the alias"
    assert client.delete(["b-new"], collection=alias) == 1
    assert client.explain("the sea", doc_id="b1", collection=alias).score > 0
    # Repointing returns the previous target, and the next call sees the new one.
    assert client.set_alias(alias, green) == blue
    assert {h.id for h in client.search("the sea", collection=alias, top_k=20)} == {d for d, _ in GREEN}
    client.delete_alias(alias)
    assert alias not in client.list_aliases()
    with pytest.raises(NotFoundError):
        client.search("the sea", collection=alias)
    with pytest.raises(NotFoundError):
        client.delete_alias(alias)


def test_aliases_and_collections_share_one_namespace(client, two_collections):
    blue, green = two_collections
    alias = _name("ns")
    client.set_alias(alias, blue)
    with pytest.raises(AlreadyExistsError, match="alias"):
        client.create_collection(alias)
    with pytest.raises(AlreadyExistsError, match="collection"):
        client.set_alias(green, blue)  # an alias named like a collection
    with pytest.raises(AlreadyExistsError):
        client.set_alias("default", blue)
    with pytest.raises(InvalidArgumentError, match="is an alias"):
        client.set_alias(_name("other"), alias)  # an alias of an alias
    with pytest.raises(NotFoundError):
        client.set_alias(_name("other"), _name("missing"))
    with pytest.raises(InvalidArgumentError):
        client.set_alias("", blue)
    # Deleting a collection an alias names is refused, naming the alias; the alias stays usable.
    with pytest.raises(FailedPreconditionError, match=alias):
        client.delete_collection(blue)
    with pytest.raises(FailedPreconditionError, match="DeleteAlias"):
        client.delete_collection(alias)
    assert client.count(collection=alias) == len(BLUE)
    client.delete_alias(alias)


def test_searches_through_an_alias_see_one_collection_or_the_other_while_it_is_repointed(
    client, two_collections, store_kind
):
    """8 threads search through an alias repointed 100 times: every answer is whole, none is an error."""
    blue, green = two_collections
    blue_ids, green_ids = {d for d, _ in BLUE}, {d for d, _ in GREEN}
    alias = _name("switch")
    client.set_alias(alias, blue)
    counts = {"blue": 0, "green": 0}
    errors: list[BaseException] = []
    mixed: list[set] = []
    done = threading.Event()
    lock = threading.Lock()

    def search() -> None:
        while not done.is_set():
            try:
                hits = client.search("a document", collection=alias, top_k=20)
            except Exception as exc:  # noqa: BLE001 - every error is a failure of the test
                errors.append(exc)
                continue
            ids = {h.id for h in hits}
            with lock:
                if ids == blue_ids:
                    counts["blue"] += 1
                elif ids == green_ids:
                    counts["green"] += 1
                else:
                    mixed.append(ids)

    threads = [threading.Thread(target=search) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            client.set_alias(alias, green if i % 2 == 0 else blue)
            time.sleep(0.005)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    print(
        f"\nalias switch ({store_kind}): 100 repoints, {counts['blue']} answers from blue, "
        f"{counts['green']} from green, {len(mixed)} mixed, {len(errors)} errors"
    )
    assert not errors, errors[:3]
    assert not mixed, mixed[:3]
    assert counts["blue"] > 0 and counts["green"] > 0
    assert client.list_aliases()[alias] == blue  # the last repoint (i = 99)
    client.delete_alias(alias)


def test_an_alias_points_where_its_last_acknowledged_set_alias_left_it_after_sigkill(tmp_path):
    """A real server process: aliases are on disk before SetAlias is acknowledged. The same process is
    killed while it writes snapshots: no half-written file lists as a snapshot afterwards."""
    data = tmp_path / "data"
    proc = ServerProcess(data).start()
    try:
        with proc.client() as c:
            c.create_collection("docs_v1")
            c.create_collection("docs_v2")
            c.upsert(BLUE, collection="docs_v1")
            c.upsert(GREEN, collection="docs_v2")
            for i in range(7):
                c.set_alias("docs", "docs_v2" if i % 2 == 0 else "docs_v1")
            c.set_alias("other", "docs_v1")
            assert c.list_aliases() == {"docs": "docs_v2", "other": "docs_v1"}  # i = 6 was the last

            made: list[str] = []

            def snapshot_forever() -> None:
                with proc.client() as s:
                    try:
                        while True:
                            made.append(s.create_snapshot("docs").name)
                    except Exception:  # noqa: BLE001 - the kill ends the loop
                        return

            snapshots = threading.Thread(target=snapshot_forever)
            snapshots.start()
            while len(made) < 3:
                time.sleep(0.01)
        proc.kill()
        snapshots.join(30)
        proc.start()
        with proc.client() as c:
            assert c.list_aliases() == {"docs": "docs_v2", "other": "docs_v1"}
            assert {h.id for h in c.search("a document", collection="docs", top_k=20)} == {d for d, _ in GREEN}
            with pytest.raises(FailedPreconditionError, match="other"):
                c.delete_collection("docs_v1")
            listed = [s.name for s in c.list_snapshots()]
            assert set(made) <= set(listed)  # every acknowledged snapshot survives
            assert not [p.name for p in (data / "snapshots").iterdir() if p.name.startswith(".")]
            for i, name in enumerate(listed):  # and every listed one, acknowledged or not, is whole
                assert c.restore_snapshot(name, f"restored{i}").document_count == len(GREEN)
    finally:
        proc.stop()
