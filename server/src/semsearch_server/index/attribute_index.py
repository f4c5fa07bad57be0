"""Fast in-memory evaluation of attribute filters over every document of a collection (numpy, columnar).

The reference semantics are filtering/evaluate.py; this module must agree with it exactly (the tests compare
the two on random documents and trees), including int-vs-double comparisons beyond 2**53.

Layout. Each label gets a dense *slot* (its position in the arrays below) the first time it is seen, and keeps
it. Per (key, kind) a column holds rows (slot, generation, value): a scalar gives one row, a list one row per
element; per key a presence column holds one row per document that has the key (EXISTS, empty lists). Kinds are
int (int64), double (float64), bool (int8), timestamp (int64 microseconds) and string (dictionary-encoded:
sorted distinct values plus int32 codes, so long strings never sit in fixed-width arrays).

Writes are cheap: `put` only records the attributes as pending (a later put of the same label simply replaces
them) and bumps the slot's generation when it replaces a live document, which makes all its frozen rows dead;
`remove` bumps it too. The first evaluation after writes splits the pending documents into per-column chunks;
a column's chunks are sorted into an immutable *segment* (rows ordered by value, so EQ / IN / ranges are
`searchsorted` and cost what they select) the first time a filter needs that column. Segments are merged
log-structured (a new one folds into its predecessor while they are of similar size) and dead rows are dropped
when merging, or when more than half of a segment is dead.

A condition becomes a boolean mask over slots; all / any / not are mask operations; NE and NOT_IN are the
complement of EQ and IN within the live documents, as in the reference.

Thread-safety: the caller serialises writes against everything else (the store's readers-writer lock);
evaluations may run concurrently, and the lazy freezing they trigger is done under an internal lock and
publishes new immutable segments, so a concurrent evaluation never sees a half-built column.

No copy of the attributes is kept once they are frozen (there is no `get`): the store reads them from its
database. Slots of removed labels are not reused by other labels (they stay reserved for a re-put of the same
label), which is fine for labels in the low millions.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import chain

import numpy as np

from semsearch_server.filtering.model import All, AnyOf, Condition, Filter, Not, Op
from semsearch_server.filtering.values import INT64_MAX, INT64_MIN, Attributes, to_micros

_INT, _FLOAT, _BOOL, _TS, _STR, _PRESENT = range(6)
_KIND_OF_TYPE: dict[type, int] = {int: _INT, float: _FLOAT, bool: _BOOL, datetime: _TS, str: _STR}
_MERGE_FACTOR = 4  # a new segment merges into the previous one while that is less than 4x its size
_FEW_CODES = 16  # CONTAINS matching at most this many distinct strings scatters their row ranges directly
_INF = math.inf
_MISSING = object()
_VERSIONS = itertools.count(1)


def _classify(value: object) -> tuple[int, object]:
    """Slow path for values of subclasses (IntEnum, str subclasses, ...): their kind and plain value."""
    if isinstance(value, bool):
        return _BOOL, bool(value)
    if isinstance(value, int):
        return _INT, int(value)
    if isinstance(value, float):
        return _FLOAT, float(value)
    if isinstance(value, str):
        return _STR, str(value)
    if isinstance(value, datetime):
        return _TS, value
    raise TypeError(f"not an attribute value: {value!r}")


class _Segment:
    """Immutable run of rows sorted by value (strings: by code). `live` is None when every row was live at
    generation-check time `stamp`, else a row mask."""

    __slots__ = ("slots", "gens", "values", "uniques", "live", "stamp")

    def __init__(self, slots, gens, values, uniques, live, stamp) -> None:
        self.slots: np.ndarray = slots
        self.gens: np.ndarray = gens
        self.values: np.ndarray | None = values
        self.uniques: list[str] | None = uniques
        self.live: np.ndarray | None = live
        self.stamp: int = stamp

    def __len__(self) -> int:
        return len(self.slots)

    def kept(self, keep: np.ndarray, stamp: int) -> _Segment:
        """The rows selected by `keep` (order, and so sortedness, preserved)."""
        values = None if self.values is None else self.values[keep]
        return _Segment(self.slots[keep], self.gens[keep], values, self.uniques, None, stamp)


def _build_segment(kind: int, slots: np.ndarray, gens: np.ndarray, values, stamp: int) -> _Segment:
    """Sorts raw rows by value into a segment (values: ndarray, or for strings a list of str)."""
    if kind == _PRESENT:
        return _Segment(slots, gens, None, None, None, stamp)
    uniques = None
    if kind == _STR:
        uniques = sorted(set(values))
        position = {u: i for i, u in enumerate(uniques)}
        values = np.fromiter((position[v] for v in values), dtype=np.int32, count=len(values))
    order = np.argsort(values, kind="stable")
    return _Segment(slots[order], gens[order], values[order], uniques, None, stamp)


def _merge_segments(kind: int, parts: list[_Segment], stamp: int) -> _Segment:
    """One segment holding the rows of `parts` (all live, already filtered)."""
    slots = np.concatenate([p.slots for p in parts])
    gens = np.concatenate([p.gens for p in parts])
    if kind == _PRESENT:
        return _Segment(slots, gens, None, None, None, stamp)
    if kind != _STR:
        values = np.concatenate([p.values for p in parts])
        order = np.argsort(values, kind="stable")
        return _Segment(slots[order], gens[order], values[order], None, None, stamp)
    merged = sorted(set().union(*(p.uniques for p in parts)))
    position = {u: i for i, u in enumerate(merged)}
    codes = np.concatenate(
        [np.array([position[u] for u in p.uniques], dtype=np.int32)[p.values] for p in parts if len(p)]
        or [np.zeros(0, np.int32)]
    )
    used = np.unique(codes)
    if len(used) < len(merged):  # drop strings no live row uses any more
        merged = [merged[i] for i in used.tolist()]
        codes = np.searchsorted(used, codes).astype(np.int32)
    order = np.argsort(codes, kind="stable")
    return _Segment(slots[order], gens[order], codes[order], merged, None, stamp)


class _Column:
    """The rows of one (key, kind): published segments plus raw chunks not yet sorted."""

    __slots__ = ("kind", "segments", "raw", "ready_at")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.segments: tuple[_Segment, ...] = ()
        self.raw: list[tuple[np.ndarray, np.ndarray, object]] = []
        self.ready_at = -1  # the index's write count when segments were last brought up to date


def _int_bounds(op: Op, v: int | float) -> tuple[int, int] | None:
    """Inclusive int64 bounds [a, b] of the int column values x with `x op v` (exact for a double v)."""
    lo: int | None = None
    hi: int | None = None
    if isinstance(v, int):
        if op is Op.EQ:
            lo = hi = v
        elif op is Op.LT:
            hi = v - 1
        elif op is Op.LTE:
            hi = v
        elif op is Op.GT:
            lo = v + 1
        else:
            lo = v
    else:
        if op is Op.EQ:
            if not v.is_integer():
                return None
            lo = hi = int(v)
        elif op is Op.LT:  # x < d  <=>  x < ceil(d)
            hi = math.ceil(v) - 1
        elif op is Op.LTE:
            hi = math.floor(v)
        elif op is Op.GT:
            lo = math.floor(v) + 1
        else:
            lo = math.ceil(v)
    a = INT64_MIN if lo is None else max(lo, INT64_MIN)
    b = INT64_MAX if hi is None else min(hi, INT64_MAX)
    return (a, b) if a <= b else None


def _float_bounds(op: Op, v: int | float) -> tuple[float, float] | None:
    """Inclusive float64 bounds [a, b] of the double column values x with `x op v`, exact for an int v that no
    double represents: then x < v iff x <= the largest double below v."""
    f = float(v)
    if f == v:  # Python compares int and float exactly
        if op is Op.EQ:
            return (f, f)
        if op is Op.LT:
            return (-_INF, math.nextafter(f, -_INF))
        if op is Op.LTE:
            return (-_INF, f)
        if op is Op.GT:
            return (math.nextafter(f, _INF), _INF)
        return (f, _INF)
    below = f if f < v else math.nextafter(f, -_INF)
    above = math.nextafter(below, _INF)
    if op is Op.EQ:
        return None
    if op in (Op.LT, Op.LTE):
        return (-_INF, below)
    return (above, _INF)


class AttributeIndex:
    """Every live document's attributes, for evaluating filters over the whole collection at once."""

    def __init__(self) -> None:
        self._slot_of: dict[int, int] = {}
        self._label_of = np.zeros(0, dtype=np.int64)
        self._live = np.zeros(0, dtype=bool)
        self._gen = np.zeros(0, dtype=np.int64)
        self._nslots = 0
        self._max_label = -1
        self._ordered = True  # slots were handed out in increasing label order: results need no sort
        self._count = 0
        self._pending: dict[int, Attributes] = {}
        self._columns: dict[str, dict[int, _Column]] = {}
        self._kills = 0  # generation bumps so far: a segment checked at this stamp needs no new check
        self._writes = 0
        self._lock = threading.Lock()
        # Renewed by every write, unique across indexes: what cached filter answers are checked against.
        self.version = next(_VERSIONS)

    # -- writes (the caller makes them exclusive) --------------------------------------------------------------

    def _reserve(self, total: int) -> None:
        capacity = len(self._live)
        if total <= capacity:
            return
        capacity = max(total, 2 * capacity, 1024)
        for name in ("_label_of", "_live", "_gen"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self._nslots] = old[: self._nslots]
            setattr(self, name, new)

    def _new_slot(self, label: int) -> int:
        if label < 0:
            raise ValueError(f"labels are non-negative, not {label}")
        slot = self._nslots
        self._reserve(slot + 1)
        self._nslots = slot + 1
        self._slot_of[label] = slot
        self._label_of[slot] = label
        if label < self._max_label:
            self._ordered = False
        self._max_label = max(self._max_label, label)
        return slot

    def put(self, label: int, attributes: Attributes) -> None:
        """Adds the document, or replaces the attributes of the one with this label. The mapping is kept (not
        copied) until the next evaluation: do not mutate it."""
        self._writes += 1
        self.version = next(_VERSIONS)
        slot = self._slot_of.get(label)
        if slot is None:
            slot = self._new_slot(label)
        elif self._live[slot]:
            self._gen[slot] += 1  # every frozen row of the old version is now dead
            self._kills += 1
            self._count -= 1
        self._live[slot] = True
        self._count += 1
        self._pending[slot] = attributes

    def put_many(self, items: Iterable[tuple[int, Attributes]]) -> None:
        """put for many documents at once (array updates batched; the split into columns happens lazily)."""
        items = list(items)
        if any(label < 0 for label, _ in items):  # checked first, so a bad batch changes nothing
            raise ValueError("labels are non-negative")
        self._writes += 1
        self.version = next(_VERSIONS)
        slot_of, pending = self._slot_of, self._pending
        new_labels: list[int] = []
        existing: list[int] = []
        next_slot = self._nslots
        for label, attributes in items:
            slot = slot_of.get(label)
            if slot is None:
                slot = slot_of[label] = next_slot
                next_slot += 1
                new_labels.append(label)
            else:
                existing.append(slot)
            pending[slot] = attributes
        if existing:
            old = np.unique(np.array([s for s in existing if s < self._nslots], dtype=np.int64))
            was_live = self._live[old]
            self._gen[old[was_live]] += 1
            self._kills += int(np.count_nonzero(was_live))
            self._live[old] = True
            self._count += len(old) - int(np.count_nonzero(was_live))
        if new_labels:
            labels = np.array(new_labels, dtype=np.int64)
            start = self._nslots
            self._reserve(next_slot)
            self._label_of[start:next_slot] = labels
            self._live[start:next_slot] = True
            self._nslots = next_slot
            self._count += len(new_labels)
            if labels[0] < self._max_label or (len(labels) > 1 and np.any(np.diff(labels) < 0)):
                self._ordered = False
            self._max_label = max(self._max_label, int(labels.max()))

    def remove(self, label: int) -> None:
        """Removes the document; an unknown (or already removed) label is a no-op."""
        slot = self._slot_of.get(label)
        if slot is None or not self._live[slot]:
            return
        self._writes += 1
        self.version = next(_VERSIONS)
        self._live[slot] = False
        self._gen[slot] += 1
        self._kills += 1
        self._count -= 1
        self._pending.pop(slot, None)

    def remove_many(self, labels: Iterable[int]) -> None:
        for label in labels:
            self.remove(label)

    def __len__(self) -> int:
        return self._count

    # -- freezing (under the internal lock) --------------------------------------------------------------------

    def _column(self, key: str, kind: int) -> _Column:
        by_kind = self._columns.get(key)
        if by_kind is None:
            by_kind = self._columns[key] = {}
        column = by_kind.get(kind)
        if column is None:
            column = by_kind[kind] = _Column(kind)
        return column

    def _split_pending(self) -> None:
        """Splits the pending documents into raw per-column chunks: the one Python pass over every value."""
        pending, self._pending = self._pending, {}
        docs = list(pending.values())
        keys: set[str] = set()
        for attributes in docs:
            keys.update(attributes)
        total = sum(map(len, docs))
        if len(keys) * len(docs) <= 3 * total:  # dense keys: one list comprehension per key is fastest
            self._split_by_key(np.fromiter(pending, dtype=np.int64, count=len(docs)), docs, keys)
        else:  # many sparse keys: one pass over the documents
            self._split_by_document(pending)

    def _split_by_key(self, slots: np.ndarray, docs: list[Attributes], keys: set[str]) -> None:
        missing = _MISSING
        for key in keys:
            values = [attributes.get(key, missing) for attributes in docs]
            types = set(map(type, values))
            key_slots = slots
            if type(missing) in types:
                types.discard(type(missing))
                keep = [i for i, v in enumerate(values) if v is not missing]
                values = [values[i] for i in keep]
                key_slots = slots[np.array(keep, dtype=np.int64)]
            self._add_presence(key, key_slots)
            self._add_values(key, key_slots, values, types)

    def _add_values(self, key: str, slots: np.ndarray, values: list, types: set[type]) -> None:
        """Rows for one key's values (scalars or lists, any mix) at the given slots."""
        if len(types) > 1:
            for typ in types:
                picked = [i for i, v in enumerate(values) if type(v) is typ]
                self._add_values(key, slots[np.array(picked, dtype=np.int64)], [values[i] for i in picked], {typ})
            return
        (typ,) = types or {type(None)}
        if not values:
            return
        kind = _KIND_OF_TYPE.get(typ)
        if kind is not None:
            self._add_rows(key, kind, slots, values)
        elif typ is tuple or typ is list or isinstance(values[0], tuple | list):
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            elements = list(chain.from_iterable(values))
            self._add_values(key, np.repeat(slots, lengths), elements, set(map(type, elements)))
        else:
            classified = [_classify(v) for v in values]
            for kind in {k for k, _ in classified}:
                picked = [i for i, (k, _) in enumerate(classified) if k == kind]
                self._add_rows(key, kind, slots[np.array(picked, dtype=np.int64)], [classified[i][1] for i in picked])

    def _split_by_document(self, pending: dict[int, Attributes]) -> None:
        buckets: dict[tuple[str, type], tuple[list[int], list[object]]] = {}
        get = buckets.get
        for slot, attributes in pending.items():
            for key, value in attributes.items():
                bucket = get((key, type(value)))
                if bucket is None:
                    bucket = buckets[key, type(value)] = ([], [])
                bucket[0].append(slot)
                bucket[1].append(value)
        by_key: dict[str, list[tuple[type, list[int], list[object]]]] = {}
        for (key, typ), (slot_list, values) in buckets.items():
            by_key.setdefault(key, []).append((typ, slot_list, values))
        for key, parts in by_key.items():
            self._add_presence(key, np.concatenate([np.array(p[1], dtype=np.int64) for p in parts]))
            for typ, slot_list, values in parts:
                self._add_values(key, np.array(slot_list, dtype=np.int64), values, {typ})

    def _add_presence(self, key: str, slots: np.ndarray) -> None:
        if len(slots):
            self._column(key, _PRESENT).raw.append((slots, self._gen[slots], None))

    def _add_rows(self, key: str, kind: int, slots: np.ndarray, values: list) -> None:
        if kind == _INT:
            data: object = np.array(values, dtype=np.int64)
        elif kind == _FLOAT:
            data = np.array(values, dtype=np.float64)
        elif kind == _BOOL:
            data = np.array(values, dtype=np.int8)
        elif kind == _TS:
            data = np.array([to_micros(v) for v in values], dtype=np.int64)
        else:
            data = values
        self._column(key, kind).raw.append((slots, self._gen[slots], data))

    def _ready(self, column: _Column) -> None:
        """Sorts the column's raw chunks into a segment, merges, and re-checks liveness after removals."""
        if column.ready_at == self._writes:
            return
        stamp, gen = self._kills, self._gen
        segments = list(column.segments)
        if column.raw:
            slots = np.concatenate([r[0] for r in column.raw])
            gens = np.concatenate([r[1] for r in column.raw])
            if column.kind == _PRESENT:
                values = None
            elif column.kind == _STR:
                values = [v for r in column.raw for v in r[2]]  # type: ignore[attr-defined]
            else:
                values = np.concatenate([r[2] for r in column.raw])  # type: ignore[misc]
            keep = gens == gen[slots]
            if not keep.all():
                slots, gens = slots[keep], gens[keep]
                if values is not None:
                    values = (
                        [v for v, k in zip(values, keep.tolist(), strict=True) if k]
                        if column.kind == _STR
                        else values[keep]
                    )
            column.raw = []
            if len(slots):
                segments.append(_build_segment(column.kind, slots, gens, values, stamp))
        refreshed: list[_Segment] = []
        for segment in segments:
            if segment.stamp != stamp:
                alive = segment.gens == gen[segment.slots]
                live_rows = int(np.count_nonzero(alive))
                if live_rows == len(segment):
                    segment = _Segment(segment.slots, segment.gens, segment.values, segment.uniques, None, stamp)
                elif 2 * live_rows < len(segment):
                    segment = segment.kept(alive, stamp)
                else:
                    segment = _Segment(segment.slots, segment.gens, segment.values, segment.uniques, alive, stamp)
            if len(segment):
                refreshed.append(segment)
        while len(refreshed) >= 2 and len(refreshed[-2]) < _MERGE_FACTOR * len(refreshed[-1]):
            last, previous = refreshed.pop(), refreshed.pop()
            parts = [s if s.live is None else s.kept(s.live, stamp) for s in (previous, last)]
            refreshed.append(_merge_segments(column.kind, parts, stamp))
        column.segments = tuple(refreshed)  # published whole: a concurrent reader sees the old or the new
        column.ready_at = self._writes

    def _prepare(self, tree: Filter | None) -> None:
        with self._lock:
            if self._pending:
                self._split_pending()
            if tree is None:
                return
            stack = [tree]
            while stack:
                node = stack.pop()
                if isinstance(node, Condition):
                    for column in self._columns.get(node.field, {}).values():
                        self._ready(column)
                elif isinstance(node, Not):
                    stack.append(node.child)
                else:
                    stack.extend(node.children)

    # -- evaluation (concurrent) -------------------------------------------------------------------------------

    def evaluate(self, tree: Filter | None) -> np.ndarray:
        """Sorted int64 labels of the live documents that match (None matches all)."""
        self._prepare(tree)
        n = self._nslots
        mask = self._live[:n] if tree is None else self._mask(tree, n)
        labels = self._label_of[np.flatnonzero(mask)]
        return labels if self._ordered else np.sort(labels)

    def count(self, tree: Filter | None) -> int:
        if tree is None:
            return self._count
        self._prepare(tree)
        return int(np.count_nonzero(self._mask(tree, self._nslots)))

    def labels(self) -> np.ndarray:
        """Every live label, sorted."""
        return self.evaluate(None)

    def _mask(self, node: Filter, n: int) -> np.ndarray:
        if isinstance(node, Condition):
            return self._condition(node, n)
        if isinstance(node, All):
            mask = self._live[:n].copy()
            for child in node.children:
                if not mask.any():
                    break
                mask &= self._mask(child, n)
            return mask
        if isinstance(node, AnyOf):
            mask = np.zeros(n, dtype=bool)
            for child in node.children:
                mask |= self._mask(child, n)
            return mask
        if isinstance(node, Not):
            return self._live[:n] & ~self._mask(node.child, n)
        raise TypeError(f"not a filter: {node!r}")

    def _condition(self, c: Condition, n: int) -> np.ndarray:
        if c.op is Op.NE:
            return self._live[:n] & ~self._condition(Condition(c.field, Op.EQ, c.value), n)
        if c.op is Op.NOT_IN:
            return self._live[:n] & ~self._condition(Condition(c.field, Op.IN, c.value), n)
        mask = np.zeros(n, dtype=bool)
        columns = self._columns.get(c.field)
        if not columns or c.op is None:
            return mask
        if c.op is Op.EXISTS:
            column = columns.get(_PRESENT)
            for segment in column.segments if column else ():
                self._scatter(mask, segment, 0, len(segment))
            return mask
        if c.op is Op.CONTAINS:
            if isinstance(c.value, str) and _STR in columns:
                self._contains(mask, columns[_STR], c.value)
            return mask
        ints, floats, stamps, bools, strings = _value_intervals(c)
        for kind, intervals in ((_INT, ints), (_FLOAT, floats), (_TS, stamps), (_BOOL, bools)):
            if intervals and kind in columns:
                self._intervals(mask, columns[kind], intervals)
        if strings and _STR in columns:
            self._string_intervals(mask, columns[_STR], strings)
        return mask

    # -- estimation (concurrent) -------------------------------------------------------------------------------

    def estimate_share(self, tree: Filter) -> float | None:
        """The share of live documents the filter matches, estimated from the columns' sorted values without
        touching a row (a query planner's cardinality estimate: Qdrant's, for its full_scan_threshold): a
        condition's rows in its value intervals, conditions taken as independent (`and` multiplies shares,
        `or` adds their complements' product, `not` complements). Rows of documents since replaced, and a
        list's several elements, are counted too: an estimate, for choosing a plan, never an answer. None
        where no statistic says (`contains`)."""
        self._prepare(tree)
        if self._count == 0:
            return None
        share = self._estimate(tree)
        return None if share is None else min(1.0, max(0.0, share))

    def _estimate(self, node: Filter) -> float | None:
        if isinstance(node, Condition):
            return self._estimate_condition(node)
        if isinstance(node, Not):
            inner = self._estimate(node.child)
            return None if inner is None else 1.0 - inner
        shares = [self._estimate(child) for child in node.children]
        if any(share is None for share in shares):
            return None
        if isinstance(node, All):
            return math.prod(min(1.0, s) for s in shares)  # type: ignore[misc]
        if isinstance(node, AnyOf):
            return 1.0 - math.prod(1.0 - min(1.0, s) for s in shares)  # type: ignore[misc]
        raise TypeError(f"not a filter: {node!r}")

    def _estimate_condition(self, c: Condition) -> float | None:
        if c.op is Op.NE or c.op is Op.NOT_IN:
            positive = self._estimate_condition(Condition(c.field, Op.EQ if c.op is Op.NE else Op.IN, c.value))
            return None if positive is None else 1.0 - min(1.0, positive)
        columns = self._columns.get(c.field)
        if not columns or c.op is None:
            return 0.0
        if c.op is Op.CONTAINS:
            return None
        if c.op is Op.EXISTS:
            column = columns.get(_PRESENT)
            return sum(len(s) for s in column.segments) / self._count if column else 0.0
        rows = 0
        ints, floats, stamps, bools, strings = _value_intervals(c)
        for kind, intervals in ((_INT, ints), (_FLOAT, floats), (_TS, stamps), (_BOOL, bools)):
            if intervals and kind in columns:
                dtype = np.float64 if kind == _FLOAT else np.int64
                lows = np.array([a for a, _ in intervals], dtype=dtype)
                highs = np.array([b for _, b in intervals], dtype=dtype)
                for segment in columns[kind].segments:
                    ends = np.searchsorted(segment.values, highs, side="right")
                    rows += int(np.maximum(0, ends - np.searchsorted(segment.values, lows, side="left")).sum())
        if strings and _STR in columns:
            for segment in columns[_STR].segments:
                for lo, hi in _string_ranges(segment, strings):
                    rows += hi - lo
        return rows / self._count

    # -- evaluation helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _scatter(mask: np.ndarray, segment: _Segment, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        slots = segment.slots[lo:hi]
        if segment.live is not None:
            slots = slots[segment.live[lo:hi]]
        mask[slots] = True

    def _intervals(self, mask: np.ndarray, column: _Column, intervals: list) -> None:
        dtype = np.float64 if column.kind == _FLOAT else np.int64
        lows = np.array([a for a, _ in intervals], dtype=dtype)
        highs = np.array([b for _, b in intervals], dtype=dtype)
        for segment in column.segments:
            starts = np.searchsorted(segment.values, lows, side="left")
            ends = np.searchsorted(segment.values, highs, side="right")
            for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
                self._scatter(mask, segment, lo, hi)

    def _string_intervals(self, mask: np.ndarray, column: _Column, intervals: list) -> None:
        for segment in column.segments:
            for lo, hi in _string_ranges(segment, intervals):
                self._scatter(mask, segment, lo, hi)

    def _contains(self, mask: np.ndarray, column: _Column, needle: str) -> None:
        for segment in column.segments:
            hits = [i for i, u in enumerate(segment.uniques or ()) if needle in u]
            if not hits:
                continue
            if len(hits) <= _FEW_CODES:
                starts = np.searchsorted(segment.values, hits, side="left")
                ends = np.searchsorted(segment.values, hits, side="right")
                for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
                    self._scatter(mask, segment, lo, hi)
                continue
            table = np.zeros(len(segment.uniques or ()), dtype=bool)
            table[hits] = True
            selected = table[segment.values]
            if segment.live is not None:
                selected &= segment.live
            mask[segment.slots[selected]] = True


def _string_bounds(op: Op, v: str) -> tuple[str | None, bool, str | None, bool]:
    """(low, low inclusive, high, high inclusive) of the strings x with `x op v` (code point order)."""
    if op is Op.EQ:
        return (v, True, v, True)
    if op is Op.LT:
        return (None, False, v, False)
    if op is Op.LTE:
        return (None, False, v, True)
    if op is Op.GT:
        return (v, False, None, False)
    return (v, True, None, False)


def _value_intervals(c: Condition) -> tuple[list, list, list, list, list]:
    """The value intervals a comparison, `==` or `in` condition selects in each kind's column: ints, floats,
    timestamps (as micros), bools (as 0/1) and strings (low, low inclusive, high, high inclusive)."""
    if c.op is Op.IN:
        values = c.value if isinstance(c.value, tuple | list) else ()
        op = Op.EQ
    else:
        values, op = (c.value,), c.op
    ints: list[tuple[int, int]] = []
    floats: list[tuple[float, float]] = []
    stamps: list[tuple[int, int]] = []
    bools: list[tuple[int, int]] = []
    strings: list[tuple[str | None, bool, str | None, bool]] = []
    for v in values:
        if isinstance(v, bool):
            if op is Op.EQ:
                bools.append((int(v), int(v)))
        elif isinstance(v, int | float):
            if (bounds := _int_bounds(op, v)) is not None:
                ints.append(bounds)
            if (float_bounds := _float_bounds(op, v)) is not None:
                floats.append(float_bounds)
        elif isinstance(v, datetime):
            if (bounds := _int_bounds(op, to_micros(v))) is not None:
                stamps.append(bounds)
        elif isinstance(v, str):
            strings.append(_string_bounds(op, v))
    return ints, floats, stamps, bools, strings


def _string_ranges(segment: _Segment, intervals: list) -> Iterator[tuple[int, int]]:
    """The (lo, hi) row ranges of a string segment that fall in each interval (empty ones left out)."""
    uniques = segment.uniques or []
    for low, low_inclusive, high, high_inclusive in intervals:
        if low is None:
            c0 = 0
        else:
            c0 = bisect.bisect_left(uniques, low) if low_inclusive else bisect.bisect_right(uniques, low)
        if high is None:
            c1 = len(uniques)
        else:
            c1 = bisect.bisect_right(uniques, high) if high_inclusive else bisect.bisect_left(uniques, high)
        if c1 > c0:
            lo = int(np.searchsorted(segment.values, c0, side="left"))
            hi = int(np.searchsorted(segment.values, c1, side="left"))
            yield lo, hi
