"""Vespa's document selection language, the part this schema needs, compiled to a SQL condition on ``documents``.

Used by visits and selective deletes (``/document/v1/…?selection=…``). Grammar (keywords case-insensitive)::

    EXPR    := OR
    OR      := AND ("or" AND)*
    AND     := NOT ("and" NOT)*
    NOT     := "not" NOT | "(" EXPR ")" | "true" | "false" | "image_search" | COMPARE
    COMPARE := "image_search." FIELD OP VALUE
    OP      := == | != | < | <= | > | >= | =        (``=`` is a glob: ``*`` any run, ``?`` one character)
    VALUE   := number | "string" | 'string' | null

FIELD is one of the document's attributes. Comparing with ``null`` asks whether the field is set. As in Vespa,
a comparison on a field the document does not have is false (SQL's NULL never compares). Anything else — regular
expressions (``=~``), ``id.*``, arithmetic, functions, another document type — is a :class:`QueryError`
naming what is not supported, never ignored.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NoReturn

from .errors import QueryError
from .lexing import Cursor
from .schema import NUMERIC
from .summaries import SUMMARY_FIELDS

DOCUMENT_TYPE = "image_search"
MAX_LENGTH = 10_000
MAX_DEPTH = 64

_TOKEN = re.compile(
    r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<op>==|!=|<=|>=|=~|[=<>()])|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<bad>\S))""")
_NUMERIC = NUMERIC


def compile_selection(text: str) -> tuple[str, list[Any]]:
    """``text`` → (SQL condition over ``documents``, its parameters)."""
    if len(text) > MAX_LENGTH:
        raise QueryError(f"selection has {len(text):,} characters; at most {MAX_LENGTH:,} are accepted")
    return _Parser(text).parse()


class _Parser(Cursor):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup or ""
            if kind == "bad":
                self.fail(m.start(kind), f"unexpected character {m.group(kind)!r}")
            self.tokens.append((kind, m.group(kind), m.start(kind)))
        self.depth = 0

    def fail(self, pos: int, message: str) -> NoReturn:
        raise QueryError(f"selection {self.text[:200]!r}: {message} at column {pos + 1}")

    def parse(self) -> tuple[str, list[Any]]:
        if not self.tokens:
            self.fail(0, "the selection is empty")
        sql, args = self.or_()
        kind, text, pos = self.peek()
        if kind != "eof":
            self.fail(pos, f"unexpected {text!r}")
        return sql, args

    def or_(self) -> tuple[str, list[Any]]:
        return self.chain("or", self.and_)

    def and_(self) -> tuple[str, list[Any]]:
        return self.chain("and", self.not_)

    def chain(self, word: str, operand: Callable[[], tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
        """``operand (word operand)*``, joined with the SQL ``word``."""
        parts = [operand()]
        while self.is_word(word):
            self.take()
            parts.append(operand())
        return _join(parts, word.upper())

    def not_(self) -> tuple[str, list[Any]]:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(self.peek()[2], f"nested deeper than {MAX_DEPTH} levels")
        try:
            kind, text, pos = self.peek()
            if self.is_word("not"):
                self.take()
                sql, args = self.not_()
                return f"NOT coalesce({sql}, 0)", args
            if kind == "op" and text == "(":
                self.take()
                inner = self.or_()
                kind, text, pos = self.take()
                if text != ")":
                    self.fail(pos, f"expected ')' but found {text or 'the end'!r}")
                return inner
            if self.is_word("true") or self.is_word("false"):
                self.take()
                return ("1" if text.lower() == "true" else "0"), []
            if kind == "name" and text.lower() == DOCUMENT_TYPE:
                self.take()
                return "1", []
            if kind == "name":
                return self.compare()
            self.fail(pos, f"expected a condition but found {text or 'the end'!r}")
        finally:
            self.depth -= 1

    def compare(self) -> tuple[str, list[Any]]:
        kind, text, pos = self.take()
        doctype, _, field = text.partition(".")
        if doctype.lower() == "id":
            self.fail(pos, f"{text!r} is not supported here (only {DOCUMENT_TYPE}.FIELD comparisons)")
        if doctype.lower() != DOCUMENT_TYPE:
            self.fail(pos, f"unknown document type {doctype!r}: this server has only {DOCUMENT_TYPE}")
        if field not in SUMMARY_FIELDS:
            self.fail(pos, f"{DOCUMENT_TYPE} has no attribute {field!r}; attributes are: {', '.join(SUMMARY_FIELDS)}")
        okind, op, opos = self.take()
        if okind != "op" or op not in ("==", "!=", "<", "<=", ">", ">=", "="):
            if op == "=~":
                self.fail(opos, "regular expressions (=~) are not supported; use = with * and ? wildcards")
            self.fail(opos, f"expected a comparison (==, !=, <, <=, >, >=, =) after {text!r} but found {op!r}")
        value = self.value()
        if value is None:
            if op not in ("==", "!="):
                self.fail(opos, f"null can only be compared with == or !=, not {op}")
            return f"({field} IS {'NOT ' if op == '!=' else ''}NULL)", []
        if op == "=":
            if not isinstance(value, str):
                self.fail(opos, "a glob (=) needs a string")
            return f"({field} GLOB ?)", [value.replace("[", "[[]")]  # SQLite's GLOB: * and ?, case-sensitive
        if field in _NUMERIC and not isinstance(value, (int, float)):
            self.fail(opos, f"{field} is a number; compare it with a number, not {value!r}")
        if field not in _NUMERIC and not isinstance(value, str):
            self.fail(opos, f"{field} is a string; compare it with a quoted string, not {value!r}")
        return f"({field} {'=' if op == '==' else op} ?)", [value]

    def value(self) -> Any:
        kind, text, pos = self.take()
        if kind == "num":
            return self.number(text, pos)
        if kind == "str":
            quote = text[0]
            return re.sub(r"\\(.)", r"\1", text[1:-1]) if quote == "'" else _dequote(text, self, pos)
        if kind == "name" and text.lower() == "null":
            return None
        self.fail(pos, f"expected a number, a quoted string or null but found {text or 'the end'!r}")


def _dequote(text: str, parser: _Parser, pos: int) -> str:
    import json

    try:
        return str(json.loads(text))
    except ValueError:
        parser.fail(pos, f"bad string {text[:40]!r}")


def _join(parts: list[tuple[str, list[Any]]], word: str) -> tuple[str, list[Any]]:
    if len(parts) == 1:
        return parts[0]
    args: list[Any] = []
    for _, a in parts:
        args.extend(a)
    return "(" + f" {word} ".join(f"coalesce({sql}, 0)" for sql, _ in parts) + ")", args
