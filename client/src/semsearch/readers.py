"""Input formats of `semsearch index`: JSON Lines, CSV, TSV and plain text, gzip or not, files or stdin.

Every reader is a generator over the input's lines, so a file of any size is read in constant memory.
Readers never raise on bad data: a record that cannot be parsed comes out as a `Row` with `error` set,
so the caller decides whether to stop or skip (and can skip rows it has already indexed unparsed).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import string
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from semsearch.types import Document

FORMATS = ("jsonl", "csv", "tsv", "text")
STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"
_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "text", ".text": "text",
}  # fmt: skip


@dataclass
class Row:
    """One input record. `line` is its first physical line (1-based), `raw` its text as read."""

    line: int
    raw: str
    fields: dict[str, Any] | None = None  # None for plain text
    error: str | None = None

    @property
    def blank(self) -> bool:
        return self.error is None and not self.raw.strip()


class BadRecord(ValueError):
    """A record that cannot become a document (bad syntax, missing field, nested metadata...)."""


@dataclass(frozen=True)
class DocumentSpec:
    """How records become documents.

    Attributes:
        id_field, text_field: field names (JSONL, CSV, TSV).
        text_template: e.g. ``"{title} {text}"``; replaces text_field when set.
        metadata_fields: fields kept as metadata; None means every field not used for id or text.
        id_prefix: plain text ids are ``<id_prefix><line number>``.
        typed: JSON's kinds become the attributes' kinds (a number stays a number, a list a list); False
            turns every value into a string, as before attributes had kinds. CSV and TSV fields are strings.
        timestamp_fields: fields that hold timestamps (RFC 3339 strings, such as 2024-01-31T12:00:00Z, or a
            date such as 2024-01-31; naive ones are UTC), stored as timestamps.
    """

    id_field: str = "id"
    text_field: str = "text"
    text_template: str | None = None
    metadata_fields: tuple[str, ...] | None = None
    id_prefix: str = ""
    typed: bool = True
    timestamp_fields: frozenset[str] = frozenset()
    _template_fields: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {n for _, n, _, _ in string.Formatter().parse(self.text_template or "") if n}
        object.__setattr__(self, "_template_fields", frozenset(names))

    def to_document(self, row: Row) -> Document:
        """The row as a Document; raises BadRecord with a message naming the problem."""
        if row.error is not None:
            raise BadRecord(row.error)
        if row.blank:
            raise BadRecord("blank line")
        if row.fields is None:  # plain text: the line is the document
            return _checked(Document(f"{self.id_prefix}{row.line}", row.raw.rstrip("\r\n")))
        values = row.fields
        doc_id = _string(values, self.id_field, required=True)
        if self.text_template is not None:
            missing = sorted(self._template_fields - values.keys())
            if missing:
                raise BadRecord(f"text template field(s) missing: {', '.join(missing)}")
            text = self.text_template.format_map({k: _string(values, k) or "" for k in self._template_fields})
            used = {self.id_field, *self._template_fields}
        else:
            text = _string(values, self.text_field, required=True)
            used = {self.id_field, self.text_field}
        names = self.metadata_fields if self.metadata_fields is not None else [k for k in values if k not in used]
        metadata = {}
        for name in names:
            if name in self.timestamp_fields:
                value = _timestamp(values, name)
            elif self.typed:
                value = _typed(values, name)
            else:
                value = _string(values, name)
            if value is not None:
                metadata[name] = value
        return _checked(Document(doc_id, text, metadata))


def _typed(values: dict[str, Any], name: str) -> Any:
    """A field with its JSON kind: string, integer, double, boolean, or a list of those; null/absent as None."""
    value = values.get(name)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        for i, element in enumerate(value):
            if element is None or not isinstance(element, str | bool | int | float):
                raise BadRecord(
                    f"field {name!r}[{i}] is {'null' if element is None else 'a ' + type(element).__name__}; "
                    "a list may hold strings, numbers and booleans only"
                )
        return value
    raise BadRecord(f"field {name!r} is a {type(value).__name__}; only strings, numbers, booleans and lists of them")


def _timestamp(values: dict[str, Any], name: str) -> datetime | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRecord(f"field {name!r} is a timestamp field but holds {value!r}; write it as 2024-01-31T12:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRecord(
            f"field {name!r}: {value!r} is not a timestamp; write RFC 3339, such as 2024-01-31T12:00:00Z or 2024-01-31"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _string(values: dict[str, Any], name: str, required: bool = False) -> str | None:
    """A field as a string: numbers and booleans converted (JSON spelling), null/absent as None."""
    value = values.get(name)
    if value is None:
        if required:
            raise BadRecord(f"field {name!r} is missing" if name not in values else f"field {name!r} is null")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise BadRecord(f"field {name!r} is a {type(value).__name__}; only strings, numbers and booleans are allowed")


def _checked(doc: Document) -> Document:
    # The cheap part of the server's validation: catching these here names the line, not a batch.
    if not doc.id.strip():
        raise BadRecord("empty id")
    if not doc.text.strip():
        raise BadRecord("empty text")
    return doc


# -- opening -------------------------------------------------------------------------------------------
@contextmanager
def open_binary(path: str) -> Iterator[IO[bytes]]:
    """The input's bytes, gunzipped when the name ends in .gz or the data starts with gzip's magic."""
    raw: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")  # noqa: SIM115
    try:
        buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[arg-type]
        if path.endswith(".gz") or buffered.peek(2)[:2] == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=buffered) as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield buffered
    finally:
        if path != STDIN:
            raw.close()


def numbered_lines(binary: IO[bytes]) -> Iterator[tuple[int, str, bool]]:
    """(line number, text with its line ending, decoded cleanly) per line; a UTF-8 BOM is dropped."""
    for number, data in enumerate(binary, 1):
        if number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            yield number, data.decode("utf-8"), True
        except UnicodeDecodeError:
            yield number, data.decode("utf-8", errors="replace"), False


def detect_format(path: str, first_line: str, text_field: str) -> str:
    """The format from the file name (ignoring .gz), else sniffed from the first line."""
    name = path.removesuffix(".gz")
    by_name = _EXTENSIONS.get(Path(name).suffix.lower())
    if by_name:
        return by_name
    stripped = first_line.strip()
    if stripped.startswith("{"):
        return "jsonl"
    # A header naming the text field is the sign of a table; anything else is plain text.
    if text_field in stripped.split("\t"):
        return "tsv"
    if text_field in next(csv.reader([stripped]), []):
        return "csv"
    return "text"


def count_lines(path: str) -> int | None:
    """Lines of a regular uncompressed file (cheap: counts newline bytes); None when unknown."""
    if path == STDIN or path.endswith(".gz") or not os.path.isfile(path):
        return None
    count, last = 0, b"\n"
    with open(path, "rb") as fh:
        if fh.read(2) == _GZIP_MAGIC:
            return None
        fh.seek(0)
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# -- readers -------------------------------------------------------------------------------------------
def read_rows(lines: Iterable[tuple[int, str, bool]], fmt: str) -> Iterator[Row]:
    """Rows of the given format (see FORMATS); a table's header is consumed, not yielded."""
    readers = {
        "jsonl": _read_jsonl,
        "text": _read_text,
        "tsv": _read_tsv,
        "csv": _read_csv,
    }
    return readers[fmt](iter(lines))


def _bad_encoding(ok: bool) -> str | None:
    return None if ok else "not valid UTF-8"


def _read_text(lines: Iterator[tuple[int, str, bool]]) -> Iterator[Row]:
    for number, text, ok in lines:
        yield Row(number, text.rstrip("\r\n"), error=_bad_encoding(ok))


def _read_jsonl(lines: Iterator[tuple[int, str, bool]]) -> Iterator[Row]:
    for number, text, ok in lines:
        raw = text.rstrip("\r\n")
        row = Row(number, raw, error=_bad_encoding(ok))
        if row.error is None and raw.strip():
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                row.error = f"invalid JSON: {exc.msg} at column {exc.colno}"
            else:
                if isinstance(value, dict):
                    row.fields = value
                else:
                    row.error = f"expected a JSON object, got {type(value).__name__}"
        yield row


def _read_tsv(lines: Iterator[tuple[int, str, bool]]) -> Iterator[Row]:
    # IANA TSV has no quoting: a '"' is an ordinary character (splitting beats csv's quote rules).
    header = _header(lines)
    for number, text, ok in lines:
        raw = text.rstrip("\r\n")
        yield _table_row(number, raw, raw.split("\t") if raw.strip() else [], header, ok)


def _read_csv(lines: Iterator[tuple[int, str, bool]]) -> Iterator[Row]:
    # A quoted field may span lines: `feed` remembers each record's first line and raw text.
    pending: list[str] = []
    state = {"line": 0, "ok": True}

    def feed() -> Iterator[str]:
        for number, text, ok in lines:
            if not pending:
                state["line"] = number
            pending.append(text)
            state["ok"] = state["ok"] and ok
            yield text

    reader = csv.reader(feed())
    header = [name.strip() for name in next(reader, [])]
    while True:
        pending.clear()
        state["ok"] = True
        try:
            values, error = next(reader), None
        except StopIteration:
            return
        except csv.Error as exc:
            values, error = [], f"invalid CSV: {exc}"
        row = _table_row(state["line"], "".join(pending).rstrip("\r\n"), values, header, state["ok"])
        row.error = row.error or error
        yield row


def _header(lines: Iterator[tuple[int, str, bool]]) -> list[str]:
    first = next(lines, None)
    return [name.strip() for name in first[1].rstrip("\r\n").split("\t")] if first is not None else []


def _table_row(number: int, raw: str, values: list[str], header: list[str], ok: bool) -> Row:
    row = Row(number, raw, error=_bad_encoding(ok))
    if row.error is None and values:
        if len(values) != len(header):
            row.error = f"{len(values)} fields, the header has {len(header)}"
        else:
            row.fields = dict(zip(header, values, strict=True))
    return row
