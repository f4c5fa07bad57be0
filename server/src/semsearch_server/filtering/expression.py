"""The text form of a filter (`where.expression`, the CLI's `--where`), parsed with lark (expression.lark).

    year >= 2020 and lang in ["en", "de"] and not exists(draft)
    (tags == "ml" or title contains "wine") and published < timestamp("2024-01-01T00:00:00Z")
    `odd key` != 1

Keywords are lower-case only (`AND` is a field name, and then a syntax error). Besides `exists(field)` and
`timestamp("...")` the text form has `all(...)` and `any(...)`, so that every tree - an empty `all`, a one-child
`any` - has a text (`to_text`) that parses back to it. Every error is InvalidArgument naming the place and the
1-based column; no lark exception escapes.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from importlib import resources

import lark
from lark import Token, Tree

from semsearch_server.errors import InvalidArgument
from semsearch_server.filtering.model import (
    KEYWORDS,
    All,
    AnyOf,
    Condition,
    Filter,
    Not,
    Op,
    describe,
    validate_filter,
)
from semsearch_server.filtering.values import INT64_MAX, INT64_MIN, AttributeValue

# Deeper nesting than validate_filter allows is refused while building, before Python's recursion limit.
_BUILD_DEPTH_LIMIT = 64

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")
_SIMPLE_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")

# How an error message names what the parser would have accepted, in this order.
_EXPECTED_NAMES = [
    ({"NUMBER", "STRING", "TRUE", "FALSE"}, "a value"),
    ({"CMP", "CONTAINS"}, "an operator (==, !=, <, <=, >, >=, in, not in, contains)"),
    ({"IN"}, '"in"'),
    ({"NOT", "QUOTED"}, "a condition"),
    ({"_AND", "_OR"}, '"and", "or"'),
    ({"_COMMA"}, '","'),
    ({"_RSQB"}, '"]"'),
    ({"_RPAR"}, '")"'),
    ({"_LSQB"}, '"["'),
    ({"$END"}, "the end of the expression"),
]


@cache
def _parser() -> lark.Lark:
    grammar = resources.files("semsearch_server.filtering").joinpath("expression.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def to_text(tree: Filter) -> str:
    """The canonical text of a tree: `parse(to_text(t))` equals `t`, places aside."""
    return describe(tree)


def parse(text: str, place: str = "where.expression") -> Filter:
    """The filter tree the text describes, validated; each node's place is `"{place} at column N"`."""
    if not text.strip():
        raise InvalidArgument(f"{place}: empty expression; write a condition such as year >= 2020")
    try:
        syntax = _parser().parse(text)
    except lark.exceptions.UnexpectedCharacters as exc:
        raise InvalidArgument(_unexpected_character(text, exc, place)) from None
    except lark.exceptions.UnexpectedToken as exc:
        raise InvalidArgument(_unexpected_token(text, exc, place)) from None
    except lark.exceptions.LarkError:
        raise InvalidArgument(f"{place}: cannot parse the expression") from None
    tree = _Builder(place).expression(syntax, 0)
    validate_filter(tree)
    return tree


def _describe_expected(names: set[str] | frozenset[str]) -> str:
    names = set(names)
    if "CMP" in names:  # right after a field: the operator is what is missing
        return _EXPECTED_NAMES[1][1]
    if "NUMBER" in names:
        return "a value"
    phrases = [phrase for terminals, phrase in _EXPECTED_NAMES if terminals & names]
    if "NAME" in names and not phrases:
        phrases.append("a field")
    if not phrases:
        return "something else"
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _unexpected_token(text: str, exc: lark.exceptions.UnexpectedToken, place: str) -> str:
    token = exc.token
    names = set(exc.accepts or exc.expected)
    if names == {"_LPAR"}:  # a bare word where a value belongs: the grammar took it for a function name
        pos = token.start_pos if token.type != "$END" and token.start_pos is not None else len(text)
        word = re.search(r"[A-Za-z_][A-Za-z0-9_.\-]*\s*$", text[:pos])
        if word:
            return (
                f"{place}: {word.group().strip()} at column {word.start() + 1} is not a value; expected a number, "
                'a quoted string, true, false, a list or timestamp("...")'
            )
    expected = _describe_expected(names)
    if token.type == "$END":
        return f"{place}: unexpected end of expression at column {len(text) + 1}; expected {expected}"
    column = (token.start_pos or 0) + 1
    shown = token.value if len(token.value) <= 40 else token.value[:40] + "..."
    return f'{place}: unexpected "{shown}" at column {column}; expected {expected}'


def _unexpected_character(text: str, exc: lark.exceptions.UnexpectedCharacters, place: str) -> str:
    pos = exc.pos_in_stream
    column = pos + 1
    char = text[pos] if pos < len(text) else ""
    if char in "\"'":
        return f"{place}: unterminated string at column {column}; close it with {char}"
    if char == "`":
        return f"{place}: unterminated backquoted field at column {column}; close it with `"
    hint = ""
    if char == "=":
        hint = " (compare with ==)"
    elif char == "&":
        hint = " (write and)"
    elif char == "|":
        hint = " (write or)"
    elif char == "!":
        hint = " (write != or not)"
    allowed = _describe_expected(exc.allowed or set())
    return f"{place}: unexpected character {char!r} at column {column}{hint}; expected {allowed}"


class _Builder:
    """Turns lark's syntax tree into the filter tree, checking what the grammar alone cannot."""

    def __init__(self, place: str) -> None:
        self.place = place

    def _at(self, column: int) -> str:
        return f"{self.place} at column {column}"

    @staticmethod
    def _column(node: Tree | Token) -> int:
        if isinstance(node, Token):
            return (node.start_pos or 0) + 1
        return (node.meta.start_pos or 0) + 1

    def expression(self, node: Tree | Token, depth: int) -> Filter:
        column = self._column(node)
        if depth > _BUILD_DEPTH_LIMIT:
            raise InvalidArgument(f"{self.place}: the expression is nested too deeply at column {column}")
        if isinstance(node, Token):  # a bare field where a condition belongs
            raise InvalidArgument(
                f"{self.place}: field {node.value} at column {column} needs an operator; "
                "expected a condition such as field == value or exists(field)"
            )
        kind = node.data
        where = self._at(column)
        if kind == "or_expr":
            return AnyOf(tuple(self.expression(c, depth + 1) for c in node.children), place=where)
        if kind == "and_expr":
            return All(tuple(self.expression(c, depth + 1) for c in node.children), place=where)
        if kind == "negation":
            return Not(self.expression(node.children[1], depth + 1), place=where)
        if kind == "call":
            return self._call(node, depth, where)
        field = self._field(node.children[0])
        value = self._value(node.children[-1], 0)
        if kind == "compare":
            return Condition(field, Op(node.children[1].value), value, place=where)
        op = {"in_list": Op.IN, "not_in_list": Op.NOT_IN, "contains": Op.CONTAINS}[kind]
        return Condition(field, op, value, place=where)

    def _call(self, node: Tree, depth: int, where: str) -> Filter:
        name_token, *args = node.children
        name, column = name_token.value, self._column(name_token)
        if name == "exists":
            if len(args) != 1 or not isinstance(args[0], Token):
                raise InvalidArgument(f"{self.place}: exists at column {column} takes one field, as in exists(draft)")
            return Condition(self._field(args[0]), Op.EXISTS, None, place=where)
        if name in ("all", "any"):
            children = tuple(self.expression(a, depth + 1) for a in args)
            return All(children, place=where) if name == "all" else AnyOf(children, place=where)
        raise InvalidArgument(
            f"{self.place}: unknown function {name} at column {column}; the functions are exists, all and any"
        )

    def _field(self, token: Token) -> str:
        if token.type == "QUOTED":
            return token.value[1:-1].replace("``", "`")
        if token.value in KEYWORDS:
            raise InvalidArgument(
                f"{self.place}: {token.value} at column {self._column(token)} is a keyword; "
                f"write `{token.value}` in backquotes to use it as a field"
            )
        return token.value

    def _value(self, node: Tree | Token, depth: int) -> AttributeValue:
        column = self._column(node)
        if isinstance(node, Token):
            if node.type == "NUMBER":
                return self._number(node.value, column)
            if node.type == "STRING":
                return self._string(node.value, column)
            if node.type == "TRUE":
                return True
            if node.type == "FALSE":
                return False
            raise InvalidArgument(f'{self.place}: unexpected "{node.value}" at column {column}; expected a value')
        if node.data == "list":
            if depth > 0:
                raise InvalidArgument(f"{self.place}: nested list at column {column}; a list holds scalars only")
            return tuple(self._value(c, depth + 1) for c in node.children)  # type: ignore[misc]
        name_token, *args = node.children
        if name_token.value != "timestamp":
            raise InvalidArgument(
                f"{self.place}: unknown function {name_token.value} at column {column}; "
                'the only value function is timestamp("2024-01-01T00:00:00Z")'
            )
        if len(args) != 1 or not isinstance(args[0], Token) or args[0].type != "STRING":
            raise InvalidArgument(
                f'{self.place}: timestamp at column {column} takes one string, as in timestamp("2024-01-01T00:00:00Z")'
            )
        return self._timestamp(self._string(args[0].value, self._column(args[0])), column)

    def _number(self, text: str, column: int) -> int | float:
        if any(c in text for c in ".eE"):
            value = float(text)
            if not math.isfinite(value):
                raise InvalidArgument(f"{self.place}: number {text} at column {column} is too large for a double")
            return value
        integer = int(text)
        if not INT64_MIN <= integer <= INT64_MAX:
            raise InvalidArgument(
                f"{self.place}: integer {text} at column {column} does not fit in 64 bits "
                "(write it with a point or exponent for a double)"
            )
        return integer

    def _string(self, literal: str, column: int) -> str:
        body = literal[1:-1]
        if "\\" not in body:
            return body
        out: list[str] = []
        i, n = 0, len(body)
        while i < n:
            c = body[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            e = body[i + 1]  # the grammar guarantees a character after a backslash
            at = column + 1 + i
            if e in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[e])
                i += 2
                continue
            if e != "u":
                raise InvalidArgument(
                    f"{self.place}: invalid escape \\{e} in the string at column {at}; "
                    "allowed \\\" \\' \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX"
                )
            code = self._hex4(body, i + 2, at)
            i += 6
            if 0xD800 <= code < 0xDC00:
                if body[i : i + 2] == "\\u":
                    low = self._hex4(body, i + 2, column + 1 + i)
                    if 0xDC00 <= low < 0xE000:
                        out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                        i += 6
                        continue
                raise InvalidArgument(f"{self.place}: unpaired surrogate \\u{code:04x} in the string at column {at}")
            if 0xDC00 <= code < 0xE000:
                raise InvalidArgument(f"{self.place}: unpaired surrogate \\u{code:04x} in the string at column {at}")
            out.append(chr(code))
        return "".join(out)

    def _hex4(self, body: str, start: int, at: int) -> int:
        digits = body[start : start + 4]
        if not _HEX4.fullmatch(digits):
            raise InvalidArgument(f"{self.place}: \\u at column {at} needs four hex digits")
        return int(digits, 16)

    def _timestamp(self, text: str, column: int) -> datetime:
        bad = (
            f"{self.place}: timestamp {text!r} at column {column} is not RFC 3339; "
            "expected such as 2024-01-01T00:00:00Z or 2024-01-01T02:00:00.5+02:00 (fraction up to microseconds)"
        )
        m = _RFC3339.fullmatch(text)
        if not m:
            raise InvalidArgument(bad)
        year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = m.groups()
        if fraction is not None and len(fraction) > 6:
            raise InvalidArgument(bad)
        try:
            zone = UTC
            if sign:
                offset = timedelta(hours=int(off_h), minutes=int(off_m))
                zone = timezone(-offset if sign == "-" else offset)
            micros = int((fraction or "").ljust(6, "0"))
            value = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=zone)
            return value.astimezone(UTC)
        except (ValueError, OverflowError):
            raise InvalidArgument(bad) from None
