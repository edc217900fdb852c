"""The collection's documents in SQLite: every SQL statement a collection runs is here (the schema and its
migrations are :mod:`clipseek.store`'s; ``clipseek check``'s repairs are :mod:`clipseek.check`'s).

Tables (:mod:`clipseek.store` makes and migrates them): ``documents`` (one row per document: its internal id,
Vespa document id, namespace, the attributes of :mod:`clipseek.schema`, and ``extra`` JSON), ``vector_fields``
(name, model, dim, next_slot) and ``vectors`` ((document, field) → slot). The writer uses one connection; each
reading thread has its own read-only connection, so searches never wait for a write to commit.

A write is one transaction (:meth:`DocumentStore.transaction`): the collection writes vector rows first and
points documents at them here, so a crash before the commit leaves only unreferenced rows.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import schema, store, yql
from . import selection as doc_selection
from .columns import OPS, Columns
from .errors import CollectionDamagedError, DiskFullError, FieldError, QueryError
from .lexing import INT64
from .summaries import SUMMARY_FIELDS, Summaries, Summary

FILTER_COLUMNS = {*schema.NAMES, "docid"}


def km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(h)))


class DocumentStore:
    """Documents, the vector-field registry and (document, field) → slot, in the collection's SQLite file."""

    def __init__(self, path: Path, db: sqlite3.Connection, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.db = db  # the writer's connection (a reader's: for data_version and the field registry)
        self.summaries = Summaries()
        self.columns = Columns()
        self._local = threading.local()
        # The documents each predicate matched, until the documents change: a filter repeated with new query
        # vectors (the page's filters, a server's clients) is evaluated once per change, not once per search.
        self._changes = 0
        self._matched: dict[tuple[str, str, str], tuple[int, np.ndarray]] = {}
        self._asked: set[tuple[str, str, str]] = set()  # predicates evaluated once (and not kept)

    def conn(self) -> sqlite3.Connection:
        """The writer's connection for writers; a per-thread read connection for searches."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path / store.DB_FILE}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        store.checkpoint_wal(self.db, self.path)

    # ---- meta --------------------------------------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        return store.get_meta(self.db, key, default)

    def indexed_roots(self) -> list[bytes]:
        text = store.get_meta(self.db, "indexed_roots")
        return [base64.b64decode(r) for r in json.loads(text)] if text else []

    def add_indexed_roots(self, roots: Iterable[bytes]) -> None:
        current = self.indexed_roots()
        added = [r for r in roots if r not in current]
        if added:
            store.set_meta(self.db, "indexed_roots", [base64.b64encode(r).decode("ascii") for r in [*current, *added]])

    # ---- the field registry ------------------------------------------------------------------------------
    def snapshot(self, on_field: Callable[[str, str, int, int], None] | None = None
                 ) -> tuple[int, int, list[tuple[str, str, int, int, np.ndarray]]]:
        """In one read transaction: (data_version, document count, per field (name, model, dim, next_slot,
        its (document, slot) pairs as an [n, 2] array)). ``on_field(name, model, dim, next_slot)`` is called
        before a field's pairs are read (so the caller can start checking its rows meanwhile)."""
        db = self.db
        db.execute("BEGIN")  # one snapshot: a commit between these reads would map slots past next_slot
        try:
            version = int(db.execute("PRAGMA data_version").fetchone()[0])
            count = self.count(db)
            fields = []
            for row in db.execute("SELECT name, model, dim, next_slot FROM vector_fields").fetchall():
                if on_field is not None:
                    on_field(row["name"], row["model"], int(row["dim"]), int(row["next_slot"]))
                # as one text made by SQLite and parsed by numpy: a million rows as Python tuples took ~1.5x as long
                n, text = db.execute("SELECT count(*), group_concat(doc || ',' || slot, ',') FROM vectors "
                                     "WHERE field=?", (row["name"],)).fetchone()
                try:  # a value that is not a whole number stops the parse early, or fails it
                    pairs = np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, np.int64)
                except ValueError:
                    pairs = np.zeros(1, np.int64)
                if len(pairs) != 2 * n:
                    raise CollectionDamagedError(self.path, [
                        f"field {row['name']}: the vectors table holds values that are not slot numbers"])
                fields.append((row["name"], row["model"], int(row["dim"]), int(row["next_slot"]), pairs.reshape(-1, 2)))
        finally:
            db.execute("COMMIT")
        return version, count, fields

    def data_version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def add_field(self, name: str, model: str, dim: int) -> None:
        self.db.execute("INSERT INTO vector_fields(name, model, dim, next_slot, created_at) VALUES (?,?,?,0,?)",
                        (name, model, dim, store.now()))

    # ---- writing ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: committed at the end, rolled back on any error unless SQLite already did
        (disk full, I/O error); a full disk is a :class:`DiskFullError`."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise DiskFullError(self.path, 0) from exc
            raise

    def upsert(self, docid: str, attributes: Sequence[Any], extra: dict[str, Any], namespace: str | None) -> int:
        """Insert or replace a document's row (in a transaction); its internal id."""
        row = self.db.execute(
            f"INSERT INTO documents(docid, {', '.join(SUMMARY_FIELDS)}, extra, namespace) "
            f"VALUES (?, {', '.join('?' for _ in SUMMARY_FIELDS)}, ?, ?) "
            f"ON CONFLICT(docid) DO UPDATE SET "
            f"{', '.join(f'{c}=excluded.{c}' for c in SUMMARY_FIELDS)}, extra=excluded.extra, "
            "namespace=excluded.namespace RETURNING id",
            (docid, *attributes, json.dumps(extra) if extra else None, namespace),
        ).fetchone()
        return int(row[0])

    def slots(self, doc: int) -> list[tuple[str, int]]:
        """(field, slot) of each vector the document has."""
        return [(r[0], int(r[1])) for r in self.db.execute("SELECT field, slot FROM vectors WHERE doc=?", (doc,))]

    def drop_vector(self, doc: int, field: str) -> None:
        self.db.execute("DELETE FROM vectors WHERE doc=? AND field=?", (doc, field))

    def point(self, doc: int, field: str, slot: int) -> None:
        self.db.execute("INSERT INTO vectors(doc, field, slot) VALUES (?,?,?) ON CONFLICT(doc, field) "
                        "DO UPDATE SET slot=excluded.slot", (doc, field, slot))

    def set_next_slot(self, field: str, next_slot: int) -> None:
        self.db.execute("UPDATE vector_fields SET next_slot=? WHERE name=?", (next_slot, field))

    def internal_id(self, docid: str) -> int | None:
        row = self.db.execute("SELECT id FROM documents WHERE docid=?", (docid,)).fetchone()
        return None if row is None else int(row[0])

    def delete(self, doc: int) -> None:
        self.db.execute("DELETE FROM vectors WHERE doc=?", (doc,))
        self.db.execute("DELETE FROM documents WHERE id=?", (doc,))

    # ---- reading ------------------------------------------------------------------------------------------
    def count(self, conn: sqlite3.Connection | None = None) -> int:
        return int((conn or self.db).execute("SELECT count(*) FROM documents").fetchone()[0])

    def row(self, docid: str) -> sqlite3.Row | None:
        conn = self.db if not self.readonly else self.conn()
        row: sqlite3.Row | None = conn.execute("SELECT * FROM documents WHERE docid=?", (docid,)).fetchone()
        return row

    def rows_after(self, continuation: int, count: int, *, only_namespace: bool, namespace: str | None,
                   slices: int, slice_id: int, selection: str | None, document_type: str) -> list[sqlite3.Row]:
        """Up to ``count`` + 1 rows in id order after ``continuation`` (see Collection.visit)."""
        where = "AND namespace IS ?" if only_namespace else ""
        args: list[Any] = [namespace] if only_namespace else []
        if selection is not None and selection.strip().lower() not in ("", "true", document_type):
            sql, sel_args = doc_selection.compile_selection(selection)
            where, args = f"{where} AND coalesce({sql}, 0)", [*args, *sel_args]
        if slices > 1:
            where, args = f"{where} AND id % ? = ?", [*args, slices, slice_id]
        return self.conn().execute(f"SELECT * FROM documents WHERE id > ? {where} ORDER BY id LIMIT ?",
                                   (continuation, *args, count + 1)).fetchall()

    def namespaces(self) -> set[str | None]:
        return {r[0] for r in self.conn().execute("SELECT DISTINCT namespace FROM documents")}

    def written(self, doc_ids: list[int]) -> None:
        """After a commit: the in-memory copies (summaries, attribute columns) re-read these documents."""
        self.summaries.written(self.db, doc_ids)
        self.columns.written(self.db, doc_ids)
        self._changes += 1  # after the copies: a search that sees the new count sees the new values

    def removed(self, doc: int) -> None:
        self.summaries.removed(doc)
        self.columns.removed(doc)
        self._changes += 1

    def reset(self) -> None:
        """Another process changed the documents: the in-memory copies are built again once warm."""
        self.summaries.reset()
        self.columns.reset()
        self._changes += 1

    def all_ids(self) -> np.ndarray:
        return np.sort(np.fromiter((r[0] for r in self.conn().execute("SELECT id FROM documents")), dtype=np.int64))

    def fill(self, doc_ids: list[int]) -> dict[int, Summary]:
        """(docid, namespace, summary fields) of each document that exists."""
        return self.summaries.fill(self.conn, doc_ids)

    #: predicates whose documents are kept (all dropped when full; 0: none kept). A predicate's documents are kept
    #: from its second evaluation on: a mask of a million documents that outlives its search is 1 MB of fresh
    #: memory, whose first writes fault its pages in (~0.1 ms; a mask freed after its search lends its memory to
    #: the next: a million, an ad hoc check, 82 against 187 µs a range predicate).
    MATCHED_KEPT = 64

    def matching(self, p: yql.Predicate) -> np.ndarray:
        """The documents a predicate matches, as sorted ids or (a range over the in-memory columns) a bool mask by
        document id (:mod:`clipseek.matching`'s document sets); a read-only array, kept for the next search with
        the same predicate until the documents change once the predicate came twice."""
        key = (p.field, p.op, repr(p.value))
        changes = self._changes  # read before evaluating: a change meanwhile makes this entry stale, never wrong
        kept = self._matched.get(key)
        if kept is not None and kept[0] == changes:
            return kept[1]
        found = self._evaluate(p)
        found.flags.writeable = False
        if self.MATCHED_KEPT:
            if key in self._asked:
                if len(self._matched) >= self.MATCHED_KEPT:
                    self._matched = {}
                self._matched[key] = (changes, found)
            else:
                if len(self._asked) >= 4 * self.MATCHED_KEPT:
                    self._asked = set()
                self._asked.add(key)
        return found

    def _evaluate(self, p: yql.Predicate) -> np.ndarray:
        if p.op == "near":
            return self._near(*p.value)
        column = "docid" if p.field in ("documentid",) else p.field
        if column not in FILTER_COLUMNS:
            raise FieldError(f"cannot filter on {p.field!r}; attributes are: {', '.join(sorted(FILTER_COLUMNS))}")
        if p.op == "prefix":
            sql, args = f"substr({column}, 1, ?) = ?", [len(str(p.value)), str(p.value)]
        elif p.op == "contains":
            sql, args = f"{column} = ? COLLATE NOCASE", [p.value]
        else:
            if column in schema.NUMERIC and not isinstance(p.value, (int, float)):
                raise QueryError(f"{p.field} {p.op} needs a number, got {p.value!r}")
            if isinstance(p.value, int) and not -INT64 <= p.value < INT64:
                raise QueryError(f"{p.field} {p.op} {p.value}: the number does not fit in 64 bits")
            if column in schema.NUMERIC and p.op in OPS:
                found = self.columns.matching(self.conn(), column, p.op, p.value)
                if found is not None:
                    return found
            sql, args = f"{column} {p.op} ?", [p.value]
        rows = self.conn().execute(f"SELECT id FROM documents WHERE {sql}", args)
        return np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64))

    def _near(self, lat: float, lon: float, radius_km: float) -> np.ndarray:
        """Documents whose GPS position is within ``radius_km`` of (lat, lon): a bounding box in SQL, then the
        great-circle distance (the box does not wrap around the antimeridian)."""
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and radius_km >= 0):
            raise QueryError(f"near needs a latitude in -90..90, a longitude in -180..180 and km >= 0, got "
                             f"{lat}, {lon}, {radius_km}")
        dlat = radius_km / 111.195
        dlon = radius_km / (111.195 * max(math.cos(math.radians(lat)), 1e-6))
        rows = self.conn().execute("SELECT id, lat, lon FROM documents WHERE lat BETWEEN ? AND ? AND lon BETWEEN ? "
                                   "AND ?", (lat - dlat, lat + dlat, lon - dlon, lon + dlon))
        return np.sort(np.fromiter((int(i) for i, a, b in rows if km(lat, lon, a, b) <= radius_km), dtype=np.int64))

    def attribute_counts(self, name: str, limit: int) -> list[tuple[Any, int]]:
        if name not in schema.BY_NAME:
            raise FieldError(f"no attribute {name!r}; attributes are: {', '.join(schema.NAMES)}")
        collate = " COLLATE NOCASE" if schema.BY_NAME[name].python is str else ""
        rows = self.conn().execute(f"SELECT {name}, COUNT(*) FROM documents WHERE {name} IS NOT NULL "
                                   f"GROUP BY {name}{collate} ORDER BY COUNT(*) DESC, {name} LIMIT ?", (limit,))
        return [(value, int(count)) for value, count in rows]
