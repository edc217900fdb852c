"""What a hit carries besides its relevance: the document's id, namespace and summary fields.

They are read from SQLite (one query per search), or, once a collection object has answered ``WARM_AFTER``
searches, from an in-memory copy of every document's summary, as Vespa keeps attribute fields in memory. In
bench/ann.py, filling 10 hits from SQLite costs 63 µs a query more than from the copy, half an HNSW search,
and the copy holds 157 bytes a document with an id and a file name (more with an indexed photo's path and
hash). One-off searches never build the copy. The collection keeps it current: a writer re-reads the rows it
commits and drops the ones it removes; a reader that sees another process's commit drops the copy and builds
it again after ``WARM_AFTER`` more searches.
"""

from __future__ import annotations

import marshal
import sqlite3
import threading
from typing import Any, Callable, Iterable, Sequence

from .schema import NAMES

#: Summary fields of the ``image_search`` document type (the columns of ``documents`` a hit returns).
SUMMARY_FIELDS = NAMES
_SELECT = f"SELECT id, docid, namespace, {', '.join(SUMMARY_FIELDS)} FROM documents"

Summary = tuple[str, "str | None", dict[str, Any]]  # (docid, namespace or None for the collection's, fields)


def _summary(row: Sequence[Any]) -> Summary:
    return row[1], row[2], {c: v for c, v in zip(SUMMARY_FIELDS, row[3:]) if v is not None}


def _record(row: Sequence[Any]) -> bytes:
    return marshal.dumps(_summary(row))  # loads gives the summary back, a fresh dict each time


def _plain(conn: sqlite3.Connection) -> sqlite3.Cursor:
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples, whatever the connection's factory
    return cursor


class Summaries:
    """Summaries by internal document id; thread-safe."""

    WARM_AFTER = 32  # searches before the in-memory copy is built

    def __init__(self) -> None:
        self._records: dict[int, bytes] | None = None
        self._searches = 0
        self._generation = 0  # bumped by reset(), so a copy built from an older state is not installed
        self._lock = threading.Lock()

    @property
    def in_memory(self) -> bool:
        return self._records is not None

    @property
    def memory_bytes(self) -> int:
        """The copy's size: its records plus the dict holding them (0 before it is built)."""
        with self._lock:
            records = self._records
            if records is None:
                return 0
            return records.__sizeof__() + sum(len(r) + 33 + 28 for r in records.values())  # bytes and int headers

    def fill(self, conn: Callable[[], sqlite3.Connection], doc_ids: list[int]) -> dict[int, Summary]:
        """The summaries of those ``doc_ids`` that exist (``conn`` gives a read connection, asked for only when
        SQLite is read)."""
        records = self._records
        if records is None:
            self._searches += 1
            if self._searches >= self.WARM_AFTER:
                records = self._build(conn())
        if records is None:
            if not doc_ids:
                return {}
            rows = _plain(conn()).execute(f"{_SELECT} WHERE id IN ({','.join('?' * len(doc_ids))})", doc_ids)
            return {r[0]: _summary(r) for r in rows}
        loads = marshal.loads
        return {d: loads(record) for d in doc_ids if (record := records.get(d)) is not None}

    def _build(self, conn: sqlite3.Connection) -> dict[int, bytes] | None:
        with self._lock:
            if self._records is None:
                generation = self._generation
                records = {r[0]: _record(r) for r in _plain(conn).execute(_SELECT)}  # one statement: one snapshot
                if generation == self._generation:
                    self._records = records
            return self._records

    def written(self, conn: sqlite3.Connection, doc_ids: Iterable[int]) -> None:
        """After a commit: re-read these documents into the copy, as SQLite stored them."""
        with self._lock:
            records = self._records
            if records is None:
                return
            ids = list(doc_ids)
            for i in range(0, len(ids), 500):
                chunk = ids[i: i + 500]
                for r in _plain(conn).execute(f"{_SELECT} WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    records[r[0]] = _record(r)

    def removed(self, doc_id: int) -> None:
        with self._lock:
            if self._records is not None:
                self._records.pop(doc_id, None)

    def reset(self) -> None:
        """Forget the copy (another process changed the documents); it is built again once warm."""
        with self._lock:
            self._records = None
            self._searches = 0
            self._generation += 1
