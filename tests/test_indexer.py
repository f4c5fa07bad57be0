"""`semsearch index`: formats, metadata, bad lines, duplicates, retries and resuming after a SIGKILL.

Documents come from tests/fixtures/sts-sample.tsv (300 lines of STS-B dev; licence in STS-LICENSE.txt).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from semsearch.cli import main
from semsearch.readers import numbered_lines, read_rows

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def sts_rows() -> list[list[str]]:
    """genre, filename, year, id, score, sentence1, sentence2 (no csv quoting: some texts hold '"')."""
    lines = (FIXTURES / "sts-sample.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[:7] for line in lines]


def unique_sentences(count: int) -> list[tuple[str, str, list[str]]]:
    """(id, sentence1, row) for the first `count` rows with a sentence1 not seen before."""
    out, seen = [], set()
    for n, row in enumerate(sts_rows()):
        if row[5] not in seen:
            seen.add(row[5])
            out.append((f"sts-{n}", row[5], row))
    return out[:count]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return path


def index(capsys, *args: str) -> tuple[int, dict, str]:
    """Runs `semsearch index ... --json`; returns (exit code, summary, stderr)."""
    capsys.readouterr()
    code = main(["index", *args, "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def stored(client, collection: str, ids: list[str]) -> dict:
    return {d.id: d for d in client.get(ids, collection=collection)}


def count(client, collection: str) -> int:
    return next(c.document_count for c in client.list_collections() if c.name == collection)


# -- readers (no server) -------------------------------------------------------------------------------
def test_csv_records_spanning_lines_keep_their_first_line_number():
    data = b'id,text\n1,"two\nlines"\n2,"say ""hi"""\n\n3,plain\n'
    rows = list(read_rows(numbered_lines(io.BytesIO(data)), "csv"))
    assert [(r.line, r.fields) for r in rows if not r.blank] == [
        (2, {"id": "1", "text": "two\nlines"}),
        (4, {"id": "2", "text": 'say "hi"'}),
        (6, {"id": "3", "text": "plain"}),
    ]


def test_tsv_quotes_are_ordinary_characters_and_bom_is_dropped():
    data = '\ufeffid\ttext\n1\tshe said "yes\n2\tbad\textra\n'.encode()
    rows = list(read_rows(numbered_lines(io.BytesIO(data)), "tsv"))
    assert rows[0].fields == {"id": "1", "text": 'she said "yes'}
    assert rows[1].error == "3 fields, the header has 2"


# -- formats -------------------------------------------------------------------------------------------
def test_jsonl_metadata_conversion_and_search(client, collection, server, tmp_path, capsys):
    docs = unique_sentences(80)
    records = [{"id": i, "text": t, "genre": r[0], "score": float(r[4]), "gold": n % 2 == 0}
               for n, (i, t, r) in enumerate(docs)]  # fmt: skip
    path = write_jsonl(tmp_path / "sts.jsonl", records)
    code, summary, err = index(
        capsys,
        str(path),
        "--address",
        server.address,
        "-c",
        collection,
        "--batch-size",
        "16",
    )
    assert code == 0, err
    assert (summary["indexed"], summary["failed"], summary["duplicates"]) == (80, 0, 0)
    assert "doc/s" in err  # the progress bar
    got = stored(client, collection, [i for i, _, _ in docs])
    # JSON's kinds are the attributes' kinds: a number stays a number, a boolean a boolean.
    assert dict(got["sts-0"].metadata) == {"genre": docs[0][2][0], "score": float(docs[0][2][4]), "gold": True}
    assert client.count(collection=collection, where="gold == true") == 40
    for doc_id, text, _ in docs[:3]:
        assert client.search(text, collection=collection, top_k=1)[0].id == doc_id


def test_csv_gzip_tsv_and_text_in_one_run(client, collection, server, tmp_path, capsys):
    docs = unique_sentences(90)
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["doc", "genre", "year", "sentence"])
        writer.writerows([i, r[0], r[2], t] for i, t, r in docs[:30])
    with gzip.open(tmp_path / "b.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write("doc\tgenre\tyear\tsentence\n")
        fh.writelines(f"{i}\t{r[0]}\t{r[2]}\t{t}\n" for i, t, r in docs[30:60])
    texts = [t for _, t, _ in docs[60:]]
    (tmp_path / "c.txt").write_text("\n".join(texts[:10]) + "\n\n   \n" + "\n".join(texts[10:]) + "\n")
    files = [str(tmp_path / name) for name in ("a.csv", "b.tsv.gz", "c.txt")]
    code, summary, err = index(
        capsys, *files, "--address", server.address, "-c", collection,
        "--id-field", "doc", "--text-field", "sentence", "--metadata-fields", "genre",
    )  # fmt: skip
    assert code == 0, err
    assert (summary["indexed"], summary["skipped"]) == (90, 2)
    got = stored(client, collection, [i for i, _, _ in docs[:60]] + ["c.txt:1", "c.txt:13"])
    assert len(got) == 62
    assert got[docs[0][0]].text == docs[0][1] and dict(got[docs[0][0]].metadata) == {"genre": docs[0][2][0]}
    assert got[docs[45][0]].text == docs[45][1]
    assert (got["c.txt:1"].text, got["c.txt:13"].text) == (
        texts[0],
        texts[10],
    )  # lines 11-12 were blank
    assert count(client, collection) == 90


def test_stdin_gzip_sniffed_with_text_template(client, collection, server, tmp_path, capsys, monkeypatch):
    docs = unique_sentences(20)
    records = [{"id": i, "title": r[0], "body": t, "nested": {"x": 1}} for i, t, r in docs]
    payload = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    monkeypatch.chdir(tmp_path)  # the stdin checkpoint goes to the current directory
    code, summary, err = index(
        capsys, "-", "--address", server.address, "-c", collection,
        "--text-template", "{title}: {body}", "--metadata-fields", "title",
    )  # fmt: skip
    assert code == 0, err
    assert summary["indexed"] == 20
    assert stored(client, collection, [docs[0][0]])[docs[0][0]].text == f"{docs[0][2][0]}: {docs[0][1]}"
    assert (tmp_path / f"semsearch-stdin-{collection}.checkpoint.json").exists()


# -- bad input -----------------------------------------------------------------------------------------
def bad_file(tmp_path: Path) -> Path:
    good = [json.dumps({"id": i, "text": t}) for i, t, _ in unique_sentences(12)]
    lines = good[:4] + ["{not json"] + good[4:6] + ['{"id": "n", "text": "x", "meta": {"a": 1}}']
    lines += good[6:8] + ['{"id": "e", "text": "  "}'] + good[8:]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("quiet", [True, False])
def test_files_are_counted_ahead_only_for_the_progress_bar(tmp_path, capsys, monkeypatch, quiet):
    import semsearch.indexer

    counted = []
    real = semsearch.indexer.count_lines
    monkeypatch.setattr(semsearch.indexer, "count_lines", lambda path: counted.append(path) or real(path))
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": f"text {i}"} for i in range(5)])
    code, summary, _ = index(capsys, str(path), "--address", "127.0.0.1:1", "--dry-run", *(["--quiet"] * quiet))
    assert code == 0 and summary["indexed"] == 5
    assert counted == ([] if quiet else [str(path)])


def test_bad_line_stops_with_file_and_line_dry_run_needs_no_server(tmp_path, capsys):
    path = bad_file(tmp_path)
    code, summary, err = index(capsys, str(path), "--address", "127.0.0.1:1", "--dry-run")
    assert code == 4
    assert "bad.jsonl:5: invalid JSON" in err and summary["error"].startswith("bad.jsonl:5")
    code, summary, _ = index(capsys, str(path), "--address", "127.0.0.1:1", "--dry-run", "--skip-bad")
    assert code == 0 and (summary["indexed"], summary["failed"]) == (12, 3)


def test_skip_bad_lists_rejects(client, collection, server, tmp_path, capsys):
    path, rejects = bad_file(tmp_path), tmp_path / "rejects.jsonl"
    args = [
        str(path),
        "--address",
        server.address,
        "-c",
        collection,
        "--skip-bad",
        "--rejects",
        str(rejects),
    ]
    code, summary, err = index(capsys, *args)
    assert code == 0, err
    assert (summary["indexed"], summary["failed"]) == (12, 3)
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["error"][:12]) for r in listed] == [
        (5, "invalid JSON"),
        (8, "field 'meta'"),
        (11, "empty text"),
    ]
    assert listed[0]["raw"] == "{not json" and listed[0]["file"] == str(path)
    assert count(client, collection) == 12


def test_server_refusal_names_the_line(collection, server, tmp_path, capsys):
    records = [{"id": i, "text": t} for i, t, _ in unique_sentences(6)]
    records[3]["text"] = "x" * 30_000  # over the server's max_text_chars
    path = write_jsonl(tmp_path / "long.jsonl", records)
    args = [
        str(path),
        "--address",
        server.address,
        "-c",
        collection,
        "--batch-size",
        "2",
    ]
    code, summary, err = index(capsys, *args)
    assert code == summary["exit_code"] == 1
    assert "long.jsonl, line 4: the server refused" in err and "30000 characters" in summary["error"]


# -- duplicates ----------------------------------------------------------------------------------------
def test_duplicate_ids_last_one_wins_across_concurrent_streams(client, collection, server, tmp_path, capsys):
    texts = [t for _, t, _ in unique_sentences(60)]
    # ids cycle over 20 values: repeats inside a batch (size 8) and across chunks in flight together.
    records = [{"id": f"d{n % 20}", "text": text} for n, text in enumerate(texts)]
    records.insert(3, {"id": "d1", "text": "an early duplicate in the same batch"})
    path = write_jsonl(tmp_path / "dups.jsonl", records)
    code, summary, err = index(
        capsys, str(path), "--address", server.address, "-c", collection,
        "--batch-size", "8", "--stream-batches", "1", "--concurrency", "3",
    )  # fmt: skip
    assert code == 0, err
    assert summary["duplicates"] == len(records) - 20
    got = stored(client, collection, [f"d{n}" for n in range(20)])
    assert {k: d.text for k, d in got.items()} == {f"d{n % 20}": texts[n] for n in range(40, 60)}
    assert count(client, collection) == 20


# -- retries and resuming ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retries_until_a_late_server_is_up(tmp_path, capsys, embedder, explainer):
    from conftest import InProcessServer

    docs = unique_sentences(30)
    path = write_jsonl(tmp_path / "late.jsonl", [{"id": i, "text": t} for i, t, _ in docs])
    port = free_port()
    result: dict = {}
    argv = [
        "index",
        str(path),
        "--address",
        f"127.0.0.1:{port}",
        "-c",
        "late",
        "--create",
        "--retries",
        "8",
        "--json",
    ]
    runner = threading.Thread(target=lambda: result.update(code=main(argv)))
    runner.start()
    time.sleep(1.5)
    late = InProcessServer(tmp_path / "data", embedder, explainer, port=port)
    try:
        runner.join(60)
        out = capsys.readouterr()
        assert result["code"] == 0, out.err
        assert "UNAVAILABLE, retry 1/8" in out.err
        assert json.loads(out.out)["indexed"] == 30
        assert count(late.client, "late") == 30
    finally:
        late.stop()


def test_sigkill_then_resume_indexes_everything_exactly_once(client, collection, server, tmp_path, capsys):
    docs = unique_sentences(300)
    path = write_jsonl(tmp_path / "big.jsonl", [{"id": i, "text": t} for i, t, _ in docs])
    checkpoint = tmp_path / "big.ckpt.json"
    common = [str(path), "--address", server.address, "-c", collection, "--checkpoint", str(checkpoint),
              "--batch-size", "10", "--stream-batches", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "semsearch.cli", "index", *common, "--rate-limit", "60", "--quiet"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline, done = time.monotonic() + 30, 0
    while done < 60 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if checkpoint.exists():
            done = json.loads(checkpoint.read_text())["files"][0]["last_line"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    saved = json.loads(checkpoint.read_text())["files"][0]
    assert 60 <= saved["last_line"] < len(docs) and not saved["complete"]
    assert count(client, collection) >= saved["last_line"]

    code, summary, err = index(capsys, *common, "--resume")
    assert code == 0, err
    assert summary["already_done"] == saved["last_line"]
    assert summary["indexed"] == len(docs) - saved["last_line"]
    assert count(client, collection) == len(docs)
    got = stored(client, collection, [i for i, _, _ in docs])
    assert {k: d.text for k, d in got.items()} == {i: t for i, t, _ in docs}
    assert json.loads(checkpoint.read_text())["files"][0]["complete"]
    # Running again with --resume finds nothing left to do.
    code, summary, _ = index(capsys, *common, "--resume")
    assert (code, summary["indexed"]) == (0, 0)


# -- a read-only input (the compose indexer profile mounts its input read-only) ----------------------
@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only file system: a read-only bind mount as root, permissions otherwise."""
    source, mounted = tmp_path / "source", tmp_path / "read-only"
    source.mkdir()
    mounted.mkdir()
    if os.geteuid() != 0:
        yield source, source
        source.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mounted)], capture_output=True).returncode:
        pytest.skip("a read-only bind mount needs CAP_SYS_ADMIN")
    try:
        yield source, mounted
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_read_only_input_needs_a_state_dir_and_indexes_with_one(
    client, collection, server, tmp_path, capsys, read_only_dir
):
    source, read_only = read_only_dir
    docs = unique_sentences(20)
    write_jsonl(source / "docs.jsonl", [{"id": i, "text": t} for i, t, _ in docs])
    if os.geteuid() != 0:
        source.chmod(0o555)
    path = str(read_only / "docs.jsonl")
    with pytest.raises(OSError):  # the premise: nothing can be written next to the input
        (read_only / "probe").write_text("")
    with pytest.raises(SystemExit) as info:
        main(["index", path, "--address", server.address, "-c", collection])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "--state-dir" in err
    assert count(client, collection) == 0  # refused before anything was sent

    state = tmp_path / "state"
    state.mkdir()
    code, summary, err = index(capsys, path, "--address", server.address, "-c", collection, "--state-dir", str(state))
    assert code == 0, err
    assert summary["indexed"] == 20 and summary["checkpoint"] == str(state / "docs.jsonl.semsearch-checkpoint.json")
    assert json.loads((state / "docs.jsonl.semsearch-checkpoint.json").read_text())["files"][0]["complete"]
    code, summary, err = index(
        capsys, path, "--address", server.address, "-c", collection, "--state-dir", str(state), "--resume"
    )
    assert code == 0 and summary["indexed"] == 0, err  # the resume found its checkpoint in the state dir


def test_lines_with_control_characters_are_indexed_as_written(client, collection, server, tmp_path, capsys):
    # Real files carry stray controls (STS's "Treasury\x12s" is one); the indexer must not stop on them.
    texts = [
        "Treasury\x12s long-range plan is to provide retail buyers the ability to manage holdings online.",
        "a NUL\x00 inside, a bell\x07, an escape \x1b[31m, separators \x1c\x1d\x1e and DEL\x7f",
        "RTL \u200fmark\u200e, ZWJ \U0001f468\u200d\U0001f469, lone \u0301mark, four-byte \U00020000",
    ]
    (tmp_path / "c.txt").write_bytes(("\n".join(texts) + "\n").encode("utf-8"))
    code, summary, err = index(capsys, str(tmp_path / "c.txt"), "--address", server.address, "-c", collection)
    assert code == 0, err
    assert (summary["indexed"], summary["skipped"]) == (3, 0)
    got = stored(client, collection, [f"c.txt:{n}" for n in (1, 2, 3)])
    assert [got[f"c.txt:{n}"].text for n in (1, 2, 3)] == texts
