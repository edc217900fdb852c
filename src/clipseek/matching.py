"""Which documents a YQL where-tree matches, and their closeness per ``nearestNeighbor``: the one search path.

A plain vector search is the tree ``nearestNeighbor(field, q)`` alone; a filter is that node and-ed with
predicates. The rules, Vespa's:

- In an ``and``, the other conditions are evaluated first and a ``nearestNeighbor`` searches only the documents
  they allow, so a filter never costs hits that exist.
- An ``or`` matches the union of its children, each evaluated against what the enclosing ``and`` allows.
- A document's relevance is the largest closeness any ``nearestNeighbor`` (or only the one whose label or field is
  the rank field) gave it, 0 for documents matched by predicates alone; ties are broken by document id.

A document set is a numpy array: sorted internal document ids, or a bool mask indexed by document id (what a
range predicate over the in-memory columns gives: and-ing, or-ing and handing it to a vector field are then
passes over arrays, with no list of ids made). ``None`` stands for every document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from . import yql
from .vectors import Neighbors


@dataclass
class Scores:
    """One nearestNeighbor's result: documents best first, with their closeness (and the same ids sorted)."""

    docs: np.ndarray
    closeness: np.ndarray
    sorted: np.ndarray


@dataclass
class Matches:
    docs: np.ndarray | None  # sorted document ids; None: every document
    scores: dict[str, Scores] = field(default_factory=dict)  # by the nearestNeighbor's label (or field)
    plans: list[str] = field(default_factory=list)


#: (a predicate) → the sorted ids of the documents it matches
PredicateFn = Callable[[yql.Predicate], np.ndarray]
#: (a nearestNeighbor, the request's query tensors, the ids it may return or None) → its neighbours
NearestFn = Callable[[yql.NearestNeighbor, Mapping[str, Any], "np.ndarray | None"], Neighbors]


class Matcher:
    """Evaluates where-trees against one collection, through two functions it is given: one that finds the
    documents a predicate matches (the document store) and one that runs a nearestNeighbor (the vector index)."""

    def __init__(self, predicate: PredicateFn, nearest: NearestFn) -> None:
        self._predicate = predicate
        self._nearest = nearest

    def match(self, node: yql.Node, tensors: Mapping[str, Any]) -> Matches:
        out = Matches(None)
        docs = self._match(node, None, tensors, out)
        out.docs = None if docs is None else as_ids(docs)
        return out

    def _match(self, node: yql.Node, allowed: np.ndarray | None, tensors: Mapping[str, Any], out: Matches
               ) -> np.ndarray | None:
        if isinstance(node, yql.Bool):
            return allowed if node.value else np.zeros(0, np.int64)
        if isinstance(node, yql.Predicate):
            docs = self._predicate(node)
            return docs if allowed is None else both(docs, allowed)
        if isinstance(node, yql.NearestNeighbor):
            found = self._nearest(node, tensors, allowed)
            docs, rel, cos = found.docs, found.closeness, found.cosine
            out.plans.append(found.plan)
            if node.distance_threshold is not None:
                keep = np.arccos(np.clip(cos.astype(np.float64), -1.0, 1.0)) <= node.distance_threshold
                docs, rel = docs[keep], rel[keep]
            label = node.label or node.field
            scores = Scores(docs, rel, np.sort(docs))
            if label in out.scores:  # the same label twice (an or of two branches): the best of each document
                scores = _merge(out.scores[label], scores)
            out.scores[label] = scores
            return scores.sorted
        if isinstance(node, yql.And):  # predicates first: they narrow what each nearestNeighbor may return
            current = allowed
            for child in sorted(node.children, key=lambda c: isinstance(c, yql.NearestNeighbor)):
                current = self._match(child, current, tensors, out)
            return current
        assert isinstance(node, yql.Or)
        parts = [self._match(child, allowed, tensors, out) for child in node.children]
        if any(p is None for p in parts):
            return allowed
        return either([p for p in parts if p is not None])


def as_ids(docs: np.ndarray) -> np.ndarray:
    """A document set as sorted ids."""
    return np.flatnonzero(docs) if docs.dtype == bool else docs


def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The documents in both sets."""
    if a.dtype == bool and b.dtype == bool:
        n = min(len(a), len(b))
        common: np.ndarray = a[:n] & b[:n]
        return common
    if a.dtype == bool:
        a, b = b, a
    if b.dtype == bool:  # ids and a mask: the ids the mask holds
        inside = a[a < len(b)]
        held: np.ndarray = inside[b[inside]]
        return held
    return np.intersect1d(a, b, assume_unique=True)


def either(parts: list[np.ndarray]) -> np.ndarray:
    """The documents in any of the sets."""
    if not parts:
        return np.zeros(0, np.int64)
    if all(p.dtype == bool for p in parts):
        out = np.zeros(max(len(p) for p in parts), bool)
        for p in parts:
            out[: len(p)] |= p
        return out
    return np.unique(np.concatenate([as_ids(p) for p in parts]))


def _merge(a: Scores, b: Scores) -> Scores:
    docs = np.concatenate([a.docs, b.docs])
    rel = np.concatenate([a.closeness, b.closeness])
    order = np.lexsort((docs, -rel))
    docs, rel = docs[order], rel[order]
    _, first = np.unique(docs, return_index=True)
    first.sort()
    return Scores(docs[first], rel[first], np.sort(docs[first]))


def rank(matches: Matches, every: Callable[[], np.ndarray], rank_field: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All matched documents, best first: (ids, relevance). ``every`` lists all ids (for a tree that matched
    every document, which has no nearestNeighbor)."""
    scores = [s for label, s in matches.scores.items() if rank_field is None or label == rank_field]
    docs = matches.docs
    if docs is None:
        docs = every()
    if len(scores) == 1 and (scores[0].sorted is docs or np.array_equal(scores[0].sorted, docs)):
        return scores[0].docs, scores[0].closeness  # one nearestNeighbor matched exactly these: already in order
    relevance = np.zeros(len(docs), dtype=np.float64)
    for s in scores:
        idx = np.searchsorted(docs, s.docs)
        idx[idx >= len(docs)] = 0
        hit = docs[idx] == s.docs if len(docs) else np.zeros(len(s.docs), bool)
        np.maximum.at(relevance, idx[hit], s.closeness[hit])
    order = np.lexsort((docs, -relevance))
    return docs[order], relevance[order]
