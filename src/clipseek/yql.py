"""The YQL subset clipseek runs, parsed into a small tree the collection evaluates.

Grammar (keywords case-insensitive)::

    select FIELDS from (sources * | NAMES) where EXPR [order by ...not supported] [limit N] [offset N] [;]
    EXPR   := TERM (or TERM)*
    TERM   := FACTOR (and FACTOR)*
    FACTOR := ( EXPR ) | true | false | ANNOTATION? nearestNeighbor(FIELD, TENSOR)
            | FIELD (= | < | > | <= | >=) VALUE | FIELD contains ANNOTATED_STRING
    ANNOTATION := {key: value, ...} | [{"key": value, ...}]      (Vespa 8 and Vespa 7 forms)

Anything else is a :class:`YqlSyntaxError` that names the column; nothing is silently ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn, Union

from .errors import YqlSyntaxError
from .lexing import Cursor


@dataclass(frozen=True)
class NearestNeighbor:
    field: str
    tensor: str
    target_hits: int | None = None
    approximate: bool | None = None
    explore_additional_hits: int = 0
    label: str | None = None
    distance_threshold: float | None = None


@dataclass(frozen=True)
class Predicate:
    field: str
    op: str  # one of = < > <= >= contains prefix
    value: Any


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Bool:
    value: bool


Node = Union[NearestNeighbor, Predicate, And, Or, Bool]


@dataclass(frozen=True)
class Select:
    fields: tuple[str, ...]  # ("*",) for all
    sources: tuple[str, ...]
    where: Node
    limit: int | None = None
    offset: int | None = None
    nearest: tuple[NearestNeighbor, ...] = field(default=())


_TOKEN = re.compile(
    r"""\s*(?:(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<op><=|>=|!=|[=<>(){}\[\],:;*!])|(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*))"""
)
_SPACE = re.compile(r"\s*")
MAX_YQL_CHARS = 100_000
MAX_DEPTH = 64
_NN_KEYS = {"targethits", "totaltargethits", "approximate", "hnsw.exploreadditionalhits", "label",
            "distancethreshold", "mintargethits"}


class _Parser(Cursor):
    def __init__(self, yql: str) -> None:
        super().__init__(yql)
        self.yql = yql
        self.depth = 0
        pos, end = 0, len(yql)
        while pos < end:  # linear: each match starts where the last ended, and nothing copies the rest
            m = _TOKEN.match(yql, pos)
            if not m or m.end() == pos:
                skip = _SPACE.match(yql, pos)
                at = skip.end() if skip else pos
                if at >= end:
                    break
                self.fail(at, f"unexpected character {yql[at]!r}")
            assert m is not None
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def fail(self, pos: int, message: str) -> NoReturn:
        raise YqlSyntaxError(self.yql, pos, message)

    def expect_word(self, word: str) -> None:
        kind, text, pos = self.take()
        if kind != "name" or text.lower() != word:
            self.fail(pos, f"expected '{word}' but found {text or 'end of query'!r}")

    def expect(self, op: str) -> None:
        kind, text, pos = self.take()
        if text != op or kind != "op":
            self.fail(pos, f"expected '{op}' but found {text or 'end of query'!r}")

    def name(self, what: str) -> str:
        kind, text, pos = self.take()
        if kind != "name":
            self.fail(pos, f"expected {what} but found {text or 'end of query'!r}")
        return text

    def parse(self) -> Select:
        self.expect_word("select")
        fields = self.field_list()
        self.expect_word("from")
        sources = self.sources()
        self.expect_word("where")
        where = self.expr()
        limit = offset = None
        while self.peek()[0] == "name" and self.peek()[1].lower() in ("limit", "offset"):
            word = self.take()[1].lower()
            kind, text, pos = self.take()
            if kind != "num" or not text.isdigit() or len(text) > 18:
                self.fail(pos, f"'{word}' needs a non-negative whole number, found {text[:30]!r}")
            if word == "limit":
                limit = int(text)
            else:
                offset = int(text)
        if self.peek()[1] == ";":
            self.take()
        kind, text, pos = self.peek()
        if kind != "eof":
            self.fail(pos, f"unexpected {text!r} (clipseek's YQL supports where/limit/offset; see docs)")
        return Select(fields, sources, where, limit, offset, tuple(_nearest(where)))

    def field_list(self) -> tuple[str, ...]:
        return self.name_list("a field name")

    def sources(self) -> tuple[str, ...]:
        if self.is_word("sources"):
            self.take()
        return self.name_list("a source name")

    def name_list(self, what: str) -> tuple[str, ...]:
        """``*`` or ``name (, name)*``."""
        if self.peek()[1] == "*":
            self.take()
            return ("*",)
        names = [self.name(what)]
        while self.peek()[1] == ",":
            self.take()
            names.append(self.name(what))
        return tuple(names)

    def expr(self) -> Node:
        children = [self.term()]
        while self.is_word("or"):
            self.take()
            children.append(self.term())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def term(self) -> Node:
        children = [self.factor()]
        while self.is_word("and"):
            self.take()
            children.append(self.factor())
        return children[0] if len(children) == 1 else And(tuple(children))

    def factor(self) -> Node:
        kind, text, pos = self.peek()
        if text == "(" and kind == "op":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail(pos, f"conditions are nested deeper than {MAX_DEPTH} levels")
            node = self.expr()
            self.depth -= 1
            self.expect(")")
            return node
        if text in ("{", "[") and kind == "op":
            annotation = self.annotation()
            return self.nearest_neighbor(annotation)
        if kind == "name" and text.lower() in ("true", "false"):
            self.take()
            return Bool(text.lower() == "true")
        if kind == "name" and text.lower() == "nearestneighbor":
            return self.nearest_neighbor({})
        if kind != "name":
            self.fail(pos, f"expected a condition but found {text or 'end of query'!r}")
        return self.predicate()

    def annotation(self) -> dict[str, Any]:
        kind, text, pos = self.peek()
        if text == "[":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail(pos, f"annotations are nested deeper than {MAX_DEPTH} levels")
            inner = self.annotation()
            self.depth -= 1
            self.expect("]")
            return inner
        self.expect("{")
        out: dict[str, Any] = {}
        while self.peek()[1] != "}":
            kind, key, kpos = self.take()
            if kind == "str":
                key = json.loads(key) if key.startswith('"') else key[1:-1]
            elif kind != "name":
                self.fail(kpos, f"expected an annotation key but found {key!r}")
            self.expect(":")
            out[key] = self.value()
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != "}":
                self.fail(self.peek()[2], f"expected ',' or '}}' but found {self.peek()[1]!r}")
        self.take()
        return out

    def value(self) -> Any:
        kind, text, pos = self.take()
        if kind == "num":
            return self.number(text, pos)
        if kind == "str":
            return _unquote(text)
        if kind == "name" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        self.fail(pos, f"expected a number, string or boolean but found {text or 'end of query'!r}")

    def nearest_neighbor(self, annotation: dict[str, Any]) -> NearestNeighbor:
        kind, text, pos = self.take()
        if kind != "name" or text.lower() != "nearestneighbor":
            self.fail(pos, f"an annotation here must precede nearestNeighbor, found {text!r}")
        self.expect("(")
        fld = self.name("the vector field name")
        self.expect(",")
        tensor = self.name("the query tensor name")
        self.expect(")")
        unknown = [k for k in annotation if k.lower() not in _NN_KEYS]
        if unknown:
            self.fail(pos, f"unknown nearestNeighbor annotation {unknown[0]!r}")
        lower = {k.lower(): v for k, v in annotation.items()}
        target = lower.get("targethits", lower.get("totaltargethits"))
        if target is None:
            self.fail(pos, "nearestNeighbor needs {targetHits: N}")
        if not isinstance(target, int) or isinstance(target, bool) or target <= 0:
            self.fail(pos, f"targetHits must be a positive whole number, got {target!r}")
        approx = lower.get("approximate")
        if approx is not None and not isinstance(approx, bool):
            self.fail(pos, f"approximate must be true or false, got {approx!r}")
        explore = lower.get("hnsw.exploreadditionalhits", 0)
        if not isinstance(explore, int) or explore < 0:
            self.fail(pos, f"hnsw.exploreAdditionalHits must be a whole number >= 0, got {explore!r}")
        threshold = lower.get("distancethreshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            self.fail(pos, f"distanceThreshold must be a number, got {threshold!r}")
        label = lower.get("label")
        if label is not None and not isinstance(label, str):
            self.fail(pos, f"label must be a string, got {label!r}")
        return NearestNeighbor(fld, tensor, target, approx, explore, lower.get("label"),
                               float(threshold) if threshold is not None else None)

    def predicate(self) -> Predicate:
        fld = self.name("a field name")
        kind, text, pos = self.take()
        if kind == "name" and text.lower() == "contains":
            prefix = False
            if self.peek()[1] == "(":
                self.take()
                ann = self.annotation()
                prefix = bool(ann.get("prefix"))
                value = self.string_value()
                self.expect(")")
            else:
                value = self.string_value()
            return Predicate(fld, "prefix" if prefix else "contains", value)
        if kind == "op" and text in ("=", "<", ">", "<=", ">="):
            return Predicate(fld, text, self.value())
        self.fail(pos, f"expected an operator (=, <, >, <=, >=, contains) after {fld!r} but found {text!r}")

    def string_value(self) -> str:
        kind, text, pos = self.take()
        if kind != "str":
            self.fail(pos, f"expected a quoted string but found {text!r}")
        return _unquote(text)


def _unquote(text: str) -> str:
    if text.startswith('"'):
        return str(json.loads(text))
    return text[1:-1].replace("\\'", "'")


def _nearest(node: Node) -> list[NearestNeighbor]:
    if isinstance(node, NearestNeighbor):
        return [node]
    if isinstance(node, (And, Or)):
        return [nn for child in node.children for nn in _nearest(child)]
    return []


def parse(yql: str) -> Select:
    """Parse one YQL statement or raise :class:`YqlSyntaxError` naming the column."""
    if not yql or not yql.strip():
        raise YqlSyntaxError(yql or "", 0, "the query is empty")
    if len(yql) > MAX_YQL_CHARS:
        raise YqlSyntaxError(yql[:100], 0, f"the query has {len(yql):,} characters; at most {MAX_YQL_CHARS:,} "
                                           "are accepted")
    return _Parser(yql).parse()
