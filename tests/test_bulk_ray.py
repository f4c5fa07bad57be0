"""`semsearch index --engine ray`: Ray Data embeds, Milvus stores, a semsearch replica on that Milvus serves.

One local Ray for the module (1 embedding actor of 1 CPU, plus the CPU its read task needs), a
`milvus-lite server` (the network path a Milvus deployment is reached by) and a real server process on it
with the default embedding backend: the reference the Ray actors' vectors must match. Documents come from
tests/fixtures/sts-sample.tsv (STS-B dev; licence in STS-LICENSE.txt).
"""

from __future__ import annotations

import csv
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Ray path writes into Milvus: pip install './server[ray]'")
pytest.importorskip("ray", reason="the Ray path needs the ray extra: pip install './server[ray]'")

from semsearch.cli import main  # noqa: E402
from semsearch_server.domain import CollectionSettings, ModelFingerprint  # noqa: E402
from semsearch_server.index.milvus_provider import MilvusStoreProvider  # noqa: E402
from semsearch_server.testing import ServerProcess  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def local_ray():
    """One Ray for the module, sized as the command sizes its own: 1 actor CPU + 1 for reading."""
    import ray
    from semsearch_server.bulk import local_ray_cpus

    ray.init(num_cpus=local_ray_cpus(1, 1.0), include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def replica(milvus_server, tmp_path_factory):
    """A semsearch server on the Lite server (--store milvus), with the default backend."""
    prefix = f"b{uuid.uuid4().hex[:8]}_"
    data = tmp_path_factory.mktemp("replica")
    srv = ServerProcess(data, "--store", "milvus", "--milvus-uri", milvus_server, "--milvus-prefix", prefix)
    srv.start()
    srv.prefix = prefix
    srv.uri = milvus_server
    yield srv
    srv.stop()


def sts_documents(count: int) -> list[dict]:
    """Distinct STS sentences as {id, text, genre} records, and two long texts of many sentences."""
    rows = [line.split("\t")[:7] for line in (FIXTURES / "sts-sample.tsv").read_text("utf-8").splitlines()]
    seen: dict[str, dict] = {}
    for row in rows:
        if row[5] not in seen and len(seen) < count:
            seen[row[5]] = {"id": f"s{len(seen)}", "text": row[5], "genre": row[0]}
    docs = list(seen.values())
    long_text = " ".join(r[6] for r in rows[:80])
    docs.append({"id": "long-1", "text": long_text, "genre": "long"})
    docs.append({"id": "long-2", "text": " ".join(r[5] for r in rows[100:160]), "genre": "long"})
    return docs


def run_index(replica, collection: str, path: Path, *extra: str, capsys=None) -> tuple[int, dict | None, str]:
    argv = ["index", str(path), "--engine", "ray", "--milvus-uri", replica.uri, "--milvus-prefix", replica.prefix,
            "-c", collection, "--workers", "1", "--worker-cpus", "1", "--json", "--quiet", *extra]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def stored(replica, collection: str, ids: list[str]):
    """Each document's (passages, vectors) as Milvus holds them, read through the Milvus store."""
    provider = MilvusStoreProvider(replica.uri, prefix=replica.prefix)
    try:
        store = provider.open_for_reindex(collection, None)
        return store.get_passages(ids), {d.id: d for d in store.get(ids)}
    finally:
        provider.close()


def test_bulk_index_is_served_matches_the_server_and_reruns_idempotently(replica, local_ray, tmp_path, capsys):
    docs = sts_documents(120)
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps(d) for d in docs]
    lines.insert(10, "")  # a blank line: skipped
    lines.append(json.dumps({"id": "s3", "text": "the last record with an id wins", "genre": "dup"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    csv_path = tmp_path / "more.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "source"])
        writer.writerows([[f"c{i}", f'A table row, number {i}, says "hello", world', "csv"] for i in range(5)])

    with replica.client() as client:
        client.create_collection("bulk")
        code, summary, err = run_index(replica, "bulk", path, capsys=capsys)
        assert code == 0, err
        assert (summary["indexed"], summary["duplicates"], summary["skipped"]) == (
            len(docs),
            1,
            1,
        )  # the repeated id is sent once
        code, summary, err = run_index(replica, "bulk", csv_path, capsys=capsys)
        assert code == 0 and summary["indexed"] == 5, err
        expected_count = len(docs) + 5

        # the replica serves what Ray wrote: counts, exact hits, metadata filters, passages
        status = {c.name: c for c in client.list_collections()}["bulk"]
        assert status.document_count == expected_count
        hit = client.search(docs[7]["text"], collection="bulk", top_k=1)[0]
        assert hit.id == docs[7]["id"] and hit.score > 0.999
        assert client.search("hello world", collection="bulk", top_k=3, filter={"source": "csv"})[0].id.startswith("c")
        assert client.get(["s3"], collection="bulk")[0].text == "the last record with an id wins"
        long_hit = client.search(docs[-2]["text"][-200:], collection="bulk", top_k=1)[0]
        assert long_hit.id == "long-1" and long_hit.passage.index > 0

        # the server's own vectors for the same documents (through UpsertStream, as the gRPC indexer sends)
        from semsearch import Document

        client.create_collection("reference")
        reference_docs = [Document(d["id"], d["text"], {"genre": d["genre"]}) for d in docs]
        client.upsert_stream([reference_docs[i : i + 64] for i in range(0, len(reference_docs), 64)], "reference")

    ids = [d["id"] for d in docs if d["id"] != "s3"]
    ours, texts = stored(replica, "bulk", ids)
    theirs, _ = stored(replica, "reference", ids)
    assert set(ours) == set(ids) == set(theirs)
    assert len(ours["long-1"][0]) > 1 and len(ours["long-2"][0]) > 1
    cosines = []
    for doc_id in ids:
        (p_ours, v_ours), (p_theirs, v_theirs) = ours[doc_id], theirs[doc_id]
        assert p_ours == p_theirs, doc_id  # the same passage split
        cosines.extend(np.sum(v_ours * v_theirs, axis=1))
    assert min(cosines) >= 0.9999, min(cosines)
    assert texts["s7"].metadata == {"genre": docs[7]["genre"]}

    # a re-run writes the same collection again (upsert replaces by id); --resume skips what is done
    code, summary, err = run_index(replica, "bulk", path, capsys=capsys)
    assert code == 0 and summary["indexed"] == len(docs), err
    again, texts_again = stored(replica, "bulk", ids)
    assert texts_again == texts
    for doc_id in ids:
        assert again[doc_id][0] == ours[doc_id][0]
        assert np.allclose(again[doc_id][1], ours[doc_id][1], atol=1e-6)
    code, summary, err = run_index(replica, "bulk", path, "--resume", capsys=capsys)
    assert code == 0 and summary["indexed"] == 0, err
    with replica.client() as client:
        assert {c.name: c for c in client.list_collections()}["bulk"].document_count == expected_count


def test_a_bad_record_stops_after_writing_what_came_before_and_resume_skips_it(replica, local_ray, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    good = [{"id": f"g{i}", "text": f"good record {i} about trains"} for i in range(6)]
    lines = [json.dumps(d) for d in good[:4]] + ['{"id": "x", "text": '] + [json.dumps(d) for d in good[4:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with replica.client() as client:
        client.create_collection("badinput")
    code, summary, err = run_index(replica, "badinput", path, capsys=capsys)
    assert code == 4 and "bad.jsonl:5: invalid JSON" in err
    assert summary["indexed"] == 4
    checkpoint = json.loads(Path(str(path) + ".semsearch-checkpoint.json").read_text())
    assert checkpoint["files"][0]["last_line"] == 4
    code, summary, err = run_index(replica, "badinput", path, "--resume", "--skip-bad", capsys=capsys)
    assert code == 0, err
    assert (summary["indexed"], summary["failed"], summary["already_done"]) == (2, 1, 0)
    _, texts = stored(replica, "badinput", [d["id"] for d in good])
    assert sorted(texts) == sorted(d["id"] for d in good)


def test_a_collection_of_another_model_is_refused_before_anything_runs(replica, tmp_path, capsys):
    provider = MilvusStoreProvider(replica.uri, prefix=replica.prefix)
    try:
        foreign = ModelFingerprint("other-model", "f" * 64, 384, "mean", True, 256, "torch")
        provider.create("foreign", CollectionSettings(), foreign)
        path = tmp_path / "few.jsonl"
        path.write_text(json.dumps({"id": "a", "text": "a sentence"}) + "\n", encoding="utf-8")
        code, summary, err = run_index(replica, "foreign", path, capsys=capsys)
        assert code == 1
        assert "FAILED_PRECONDITION" in err and "'foreign'" in err and "other-model" in err
        assert summary["indexed"] == 0
        assert provider.open_for_reindex("foreign", None).count() == 0
    finally:
        provider.delete("foreign", None)
        provider.close()


def test_a_missing_collection_and_missing_milvus_uri_are_explained(replica, tmp_path, capsys):
    path = tmp_path / "few.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "a sentence"}) + "\n", encoding="utf-8")
    code, _, err = run_index(replica, "nosuch", path, capsys=capsys)
    assert code == 1 and "'nosuch' not found" in err and "semsearch collections create nosuch" in err
    with pytest.raises(SystemExit):
        main(["index", str(path), "--engine", "ray", "-c", "x"])
    assert "--milvus-uri" in capsys.readouterr().err


def test_without_the_server_package_the_client_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "semsearch_server.bulk", None)  # as if it were not installed
    path = tmp_path / "few.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "a sentence"}) + "\n", encoding="utf-8")
    assert main(["index", str(path), "--engine", "ray", "--milvus-uri", "http://127.0.0.1:1", "-c", "x"]) == 1
    assert "semsearch-server[ray]" in capsys.readouterr().err
