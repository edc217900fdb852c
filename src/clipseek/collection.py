"""The embedded engine: a collection of ``image_search`` documents with one vector field per model.

Vectors in, hits out; nothing here knows about image files or HTTP. Search has Vespa's semantics: a
``nearestNeighbor`` operator matches the ``targetHits`` closest documents that pass the other conditions of its
conjunction (filters are applied *before* choosing neighbours, so a filter never costs hits that exist), and
relevance is ``closeness`` for the angular distance metric, ``1 / (1 + arccos(cos))``. The planner runs exact
search for small or heavily filtered candidate sets and HNSW otherwise; ``approximate: false`` forces exact.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import itertools
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import selection as doc_selection, store, yql
from .errors import (CollectionDamagedError, CollectionLockedError, DiskFullError, FieldError, NotACollectionError, QueryError,
                     ReadOnlyError, VectorError)
from .index import AnnIndex, HnswParams, closeness
from .lexing import INT64
from . import schema
from .summaries import SUMMARY_FIELDS, Summaries, Summary

DOCUMENT_TYPE = "image_search"
MAX_HITS = 400
MAX_TARGET_HITS = 10_000
MAX_OFFSET = 1000
DEFAULT_TARGET_HITS = 100  # the seed's TextEmbeddingSearcher; a small beam costs recall for little speed
APPROXIMATE_THRESHOLD = 0.05  # Vespa's default approximate-threshold: below it, exact search
MAX_ID_BYTES = 1024  # a document id's UTF-8 length (Vespa allows 64 KiB; ours name photos)
#: The Python type of each summary attribute (what a document may store there, checked before any write).
ATTRIBUTE_TYPES: dict[str, type] = {a.name: a.python for a in schema.ATTRIBUTES}
FILTER_COLUMNS = {*schema.NAMES, "docid"}


@dataclass
class Document:
    """One ``image_search`` document: summary attributes plus vectors by field name."""

    docid: str
    image_file_name: str | None = None
    path: str | None = None
    size: int | None = None
    mtime: float | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    indexed_at: float | None = None
    taken: float | None = None
    taken_tz: str | None = None
    taken_source: str | None = None
    camera: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    namespace: str | None = None  # Vespa's id:<namespace>:…; None for the collection's own

    def attributes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SUMMARY_FIELDS if getattr(self, k) is not None}


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class FieldInfo:
    name: str
    model: str
    dim: int


@dataclass
class Hit:
    docid: str
    relevance: float
    fields: dict[str, Any]
    namespace: str | None = None  # the document's own, when it was fed under another than the collection's


@dataclass
class SearchResult:
    hits: list[Hit]
    total_count: int
    documents: int
    plan: str
    elapsed_s: float


@dataclass
class Filter:
    """Attribute conditions for the Python API (YQL expresses the same with predicates)."""

    folder: str | None = None
    formats: Sequence[str] | None = None
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    mtime_from: float | None = None
    mtime_to: float | None = None
    taken_from: float | None = None  # the date taken (EXIF, else the file's time), epoch seconds
    taken_to: float | None = None
    cameras: Sequence[str] | None = None  # any of these (case-insensitive, whole value)
    near: tuple[float, float, float] | None = None  # (latitude, longitude, km): within that distance

    def predicates(self) -> list[yql.Node]:
        out: list[yql.Node] = []
        if self.folder:
            prefix = self.folder.rstrip("/") + "/"
            out.append(yql.Predicate("path", "prefix", prefix))
        if self.formats:
            out.append(yql.Or(tuple(yql.Predicate("format", "contains", f.upper()) for f in self.formats)))
        for col, op, value in (("width", ">=", self.min_width), ("width", "<=", self.max_width),
                               ("height", ">=", self.min_height), ("height", "<=", self.max_height),
                               ("mtime", ">=", self.mtime_from), ("mtime", "<=", self.mtime_to),
                               ("taken", ">=", self.taken_from), ("taken", "<=", self.taken_to)):
            if value is not None:
                out.append(yql.Predicate(col, op, value))
        if self.cameras:
            out.append(yql.Or(tuple(yql.Predicate("camera", "contains", c) for c in self.cameras)))
        if self.near is not None:
            out.append(yql.Predicate("lat", "near", tuple(self.near)))
        return out


class _Field:
    """In-memory state of one vector field: slot ↔ document maps, inverse norms, the lazily built HNSW graph."""

    def __init__(self, folder: Path, info: FieldInfo, next_slot: int) -> None:
        self.info = info
        self.vectors = store.VectorFile(folder / "vectors" / f"{info.name}.f32", info.dim, next_slot)
        self.doc_of_slot = np.full(next_slot, -1, dtype=np.int64)
        self.slot_of_doc: dict[int, int] = {}
        self.inv_norms = np.zeros(0, dtype=np.float32)  # 1 / |row| (0 for a zero row): cosines are products
        self.ann: AnnIndex | None = None
        self.verified = 0  # rows whose checksum was checked (and whose norms were computed) from the data
        self._live: tuple[int, int, np.ndarray | None] = (-1, -1, None)  # (version, rows, bitmap)
        self.version = 0  # bumped whenever a slot dies (doc_of_slot changes in place)

    @property
    def next_slot(self) -> int:
        return self.vectors.rows

    def cosines(self, q: np.ndarray, slots: np.ndarray | None = None, rows: int = 0) -> np.ndarray:
        """Cosines of ``q`` with the rows at ``slots``, or with the first ``rows`` rows (0 for zero vectors)."""
        qq = float(q @ q)
        scale = np.float32(1.0 / math.sqrt(qq) if qq > 0 else 0.0)
        if slots is None:
            cos: np.ndarray = (self.vectors.array()[:rows] @ q) * self.inv_norms[:rows] * scale
        else:
            cos = (self.vectors.array()[slots] @ q) * self.inv_norms[slots] * scale
        return cos

    def touch(self) -> None:
        self.version += 1

    def live_bitmap(self, rows: int) -> np.ndarray | None:
        """Bitmap of the live slots among the first ``rows`` (for the graph's selector); None when all live."""
        version, cached_rows, bitmap = self._live
        if version != self.version or cached_rows != rows:
            live = self.doc_of_slot[:rows] >= 0
            bitmap = None if live.all() else np.packbits(live, bitorder="little")
            self._live = (self.version, rows, bitmap)
        return bitmap


class Collection:
    """A folder holding documents and their vectors. Open with :meth:`open` or :meth:`create`.

    One process writes at a time (a lock file); any number read. Searches may run in threads while another
    thread feeds; each write is visible to the next search.
    """

    def __init__(self, path: Path, db: sqlite3.Connection, *, readonly: bool, lock_fd: int | None,
                 exact_threshold: int) -> None:
        self.path = path
        self.readonly = readonly
        self.exact_threshold = exact_threshold
        self._db = db
        self._lock_fd = lock_fd
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self.namespace = store.get_meta(db, "namespace", "default") or "default"
        hnsw = json.loads(store.get_meta(db, "hnsw", "{}") or "{}")
        self.hnsw = HnswParams(**hnsw)
        self._fields: dict[str, _Field] = {}
        self._data_version = -1
        self._count = 0
        self._summary = Summaries()
        self._load_fields()

    # ---- opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, namespace: str = "default", hnsw: HnswParams | None = None,
               exact_threshold: int = 4096) -> Collection:
        """Create a collection (or open an existing one, keeping its settings)."""
        return cls.open(path, create=True, namespace=namespace, hnsw=hnsw, exact_threshold=exact_threshold)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False, create: bool = False,
             namespace: str = "default", hnsw: HnswParams | None = None, exact_threshold: int = 4096) -> Collection:
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise NotACollectionError(folder, "it is a file")
        lock_fd = None
        if not readonly:
            if create:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ReadOnlyError(f"cannot create {folder} ({exc.strerror}): choose a writable folder") from exc
            elif not (folder / store.DB_FILE).is_file():
                raise NotACollectionError(folder, "folder does not exist" if not folder.exists()
                                          else f"no {store.DB_FILE} in it")
            lock_fd = _lock(folder)
        try:
            params = hnsw or HnswParams()
            meta = None if readonly else {  # set once, when the collection is made
                "namespace": namespace, "document_type": DOCUMENT_TYPE,
                "hnsw": {"max_links_per_node": params.max_links_per_node,
                         "neighbors_to_explore_at_insert": params.neighbors_to_explore_at_insert}}
            db = store.connect(folder, create=create and not readonly, readonly=readonly, meta=meta)
        except sqlite3.OperationalError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise ReadOnlyError(f"cannot write to {folder} ({exc}): check its permissions, "
                                "or open the collection read-only") from exc
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        try:
            return cls(folder, db, readonly=readonly, lock_fd=lock_fd, exact_threshold=exact_threshold)
        except BaseException:
            db.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def close(self) -> None:
        """Snapshot HNSW graphs (so the next open needs no rebuild), checkpoint the WAL, release the write lock."""
        self.checkpoint()
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint(self) -> None:
        """Snapshot the HNSW graphs and fold SQLite's WAL into the database file (a writer's; readers: no-op)."""
        if self.readonly:
            return
        with self._write_lock:
            for f in self._fields.values():
                if f.ann is not None and not f.ann.is_view:
                    f.ann.save(self.path / "ann", f.info.name)
            store.checkpoint_wal(self._db, self.path)

    # ---- indexed folders -------------------------------------------------------------------------------
    def indexed_roots(self) -> list[bytes]:
        """Real paths of the folders ``clipseek index`` indexed: originals are served only from under these."""
        text = store.get_meta(self._db, "indexed_roots")
        return [base64.b64decode(r) for r in json.loads(text)] if text else []

    def add_indexed_roots(self, roots: Iterable[bytes]) -> None:
        """Record folders (their real paths, as bytes) that an index run covers."""
        self._need_write()
        with self._write_lock:
            current = self.indexed_roots()
            added = [r for r in roots if r not in current]
            if added:
                store.set_meta(self._db, "indexed_roots",
                               [base64.b64encode(r).decode("ascii") for r in [*current, *added]])

    # ---- fields ----------------------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, FieldInfo]:
        self._refresh()
        return {name: f.info for name, f in self._fields.items()}

    def add_field(self, name: str, model: str, dim: int) -> FieldInfo:
        """Register a vector field (idempotent); an existing field with another model or dim is an error."""
        self._need_write()
        if not name.replace("_", "").isalnum():
            raise FieldError(f"field name {name!r} must be letters, digits and underscores")
        with self._write_lock:
            existing = self._fields.get(name)
            if existing is not None:
                if existing.info.model != model or existing.info.dim != dim:
                    raise FieldError(
                        f"field {name} holds {existing.info.dim}-dim vectors of model {existing.info.model}, not "
                        f"{dim}-dim vectors of {model}: use the field's own model, or another field name")
                return existing.info
            self._db.execute("INSERT INTO vector_fields(name, model, dim, next_slot, created_at) VALUES (?,?,?,0,?)",
                             (name, model, dim, store.now()))
            info = FieldInfo(name, model, dim)
            self._fields[name] = _Field(self.path, info, 0)
            return info

    def _field(self, name: str) -> _Field:
        f = self._fields.get(name)
        if f is None:
            valid = ", ".join(sorted(self._fields)) or "none yet"
            raise FieldError(f"unknown vector field {name!r}; this collection has: {valid}")
        return f

    # ---- loading and refreshing ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """The writer's connection for writers; a per-thread read connection for searches."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path / store.DB_FILE}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _load_fields(self) -> None:
        db = self._db
        db.execute("BEGIN")  # one snapshot: a commit between these reads would map slots past next_slot
        try:
            self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
            self._recount()
            rows = db.execute("SELECT name, model, dim, next_slot FROM vector_fields").fetchall()
            slots = {row["name"]: np.fromiter(itertools.chain.from_iterable(
                db.execute("SELECT doc, slot FROM vectors WHERE field=?", (row["name"],))), dtype=np.int64)
                for row in rows}
        finally:
            db.execute("COMMIT")
        fields = {}
        problems: list[str] = []
        for row in rows:
            f = _Field(self.path, FieldInfo(row["name"], row["model"], row["dim"]), row["next_slot"])
            arr = slots[f.info.name].reshape(-1, 2)
            if len(arr) and (arr[:, 1].min() < 0 or arr[:, 1].max() >= f.next_slot):
                problems.append(f"field {f.info.name}: documents point at slots past its {f.next_slot} rows")
                continue
            if len(arr):
                f.doc_of_slot[arr[:, 1]] = arr[:, 0]
                f.slot_of_doc = dict(zip(arr[:, 0].tolist(), arr[:, 1].tolist()))
            old = self._fields.get(f.info.name)
            found = self._verify(f, old)
            if found:
                problems.extend(found)
                continue
            if old is not None and old.ann is not None and not old.ann.is_view and len(old.ann) <= f.next_slot:
                f.ann = old.ann
            else:  # the newest snapshot; a stale memory-mapped one is read in full so it can catch up
                ann_dir, name, dim = self.path / "ann", f.info.name, f.info.dim
                f.ann = AnnIndex.load(ann_dir, name, dim, self.hnsw, view=self.readonly, max_covered=f.next_slot)
                if f.ann is not None and f.ann.is_view and len(f.ann) < f.next_slot:
                    f.ann = AnnIndex.load(ann_dir, name, dim, self.hnsw, max_covered=f.next_slot)
            if f.ann is not None:  # slots committed after the snapshot (or by another process) join the graph
                f.ann.extend(f.vectors.array(), f.next_slot)
            fields[f.info.name] = f
        if problems:
            raise CollectionDamagedError(self.path, problems)
        self._fields = fields
        self._summary.reset()

    def _verify(self, f: _Field, old: _Field | None) -> list[str]:
        """Check the rows ``f`` has not verified yet (all at open; a reader's reload only the new ones) and set
        its norms from the data; returns the problems (garbled rows that documents use, a truncated file).
        A norm file that disagrees with the rows is derived data: corrected, on disk too when writing."""
        start = 0
        if old is not None and old.info == f.info and old.verified <= f.next_slot:
            start = old.verified
            f.inv_norms = old.inv_norms[:start]
        try:
            norms, bad, covered = f.vectors.verify(start)
        except CollectionDamagedError as exc:
            return [f"field {f.info.name}: {p}" for p in exc.problems]
        live_bad = [int(s) for s in bad if f.doc_of_slot[s] >= 0]
        if live_bad:
            return [f"field {f.info.name}: {len(live_bad)} vector rows fail their checksum in "
                    f"{f.vectors.path.name} (slots {', '.join(map(str, live_bad[:5]))}"
                    f"{', …' if len(live_bad) > 5 else ''})"]
        if not self.readonly and (covered < len(norms)  # a reader uses the norms computed here, never the file
                                  or not np.allclose(f.vectors.norms(start), norms, rtol=1e-5, atol=1e-7)):
            f.vectors.rewrite_derived(start, norms)
        f.inv_norms = np.concatenate([f.inv_norms, _inverse(norms)])
        f.verified = f.next_slot
        return []

    def _refresh(self) -> None:
        """A reader sees other processes' commits: reload when SQLite's data_version moved."""
        if not self.readonly:
            return
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            with self._write_lock:
                self._load_fields()

    # ---- writing ---------------------------------------------------------------------------------------
    def _need_write(self) -> None:
        if self.readonly:
            raise ReadOnlyError(f"{self.path} is open read-only: open it without readonly=True to change it")

    def _check_vector(self, fname: str, vec: Any, docid: str) -> np.ndarray:
        f = self._field(fname)
        try:
            arr = np.asarray(vec, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise VectorError(f"document {docid!r}: field {fname} must be a list of numbers ({exc})") from exc
        if arr.ndim != 1 or arr.shape[0] != f.info.dim:
            raise VectorError(f"document {docid!r}: field {fname} takes {f.info.dim} values "
                              f"(model {f.info.model}), got {arr.shape[0] if arr.ndim == 1 else arr.shape}")
        if not np.isfinite(arr).all():
            raise VectorError(f"document {docid!r}: field {fname} contains NaN or infinity")
        return arr

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed at the end, rolled back on any error unless SQLite already did
        (disk full, I/O error); a full disk is a :class:`DiskFullError`."""
        db = self._db
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

    def feed(self, documents: Iterable[Document]) -> int:
        """Put documents (replacing any with the same id), all in one atomic batch. Returns the count."""
        return self._write(list(documents), replace=True)

    def put(self, document: Document) -> None:
        self._write([document], replace=True)

    def update(self, docid: str, *, attributes: Mapping[str, Any] | None = None,
               vectors: Mapping[str, Any] | None = None, create: bool = False, namespace: str | None = None) -> bool:
        """Assign some attributes/vectors of one document; False when it does not exist (and not ``create``).
        ``namespace`` is the one a created document gets; an existing document keeps its own."""
        with self._write_lock:
            current = self.get(docid)
            if current is None and not create:
                return False
            doc = current or Document(docid, namespace=namespace)
            for key, value in (attributes or {}).items():
                if key in SUMMARY_FIELDS:
                    setattr(doc, key, value)
                else:
                    doc.extra[key] = value
            merged = dict(doc.vectors)
            merged.update(vectors or {})
            doc.vectors = merged
            self._write([doc], replace=True, unchanged=set(current.vectors) - set(vectors or {}) if current else set())
            return True

    def _write(self, docs: list[Document], *, replace: bool, unchanged: set[str] = frozenset()) -> int:  # type: ignore[assignment]
        self._need_write()
        with self._write_lock:
            checked: list[dict[str, np.ndarray]] = []
            for d in docs:
                check_docid(d.docid)
                for name in SUMMARY_FIELDS:
                    setattr(d, name, check_attribute(name, getattr(d, name), d.docid))
                checked.append({k: self._check_vector(k, v, d.docid) for k, v in d.vectors.items() if k not in unchanged})
            # 1. vectors to fresh slots past next_slot (durable, but unreferenced until the commit)
            planned: dict[str, list[tuple[int, int, np.ndarray]]] = {}
            for i, vecs in enumerate(checked):
                for fname, vec in vecs.items():
                    planned.setdefault(fname, []).append((i, 0, vec))
            new_slots: dict[str, np.ndarray] = {}
            planned_norms: dict[str, np.ndarray] = {}
            for fname, items in planned.items():
                f = self._fields[fname]
                first = f.next_slot
                try:
                    planned_norms[fname] = f.vectors.write(first, np.stack([v for _, _, v in items]))
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DiskFullError(self.path, 0) from exc
                    raise
                new_slots[fname] = np.arange(first, first + len(items), dtype=np.int64)
            # 2. one transaction pointing documents at them
            db = self._db
            doc_ids: list[int] = []
            removed: dict[str, list[int]] = {}
            with self._transaction():
                for d in docs:
                    row = db.execute(
                        f"INSERT INTO documents(docid, {', '.join(SUMMARY_FIELDS)}, extra, namespace) "
                        f"VALUES (?, {', '.join('?' for _ in SUMMARY_FIELDS)}, ?, ?) "
                        f"ON CONFLICT(docid) DO UPDATE SET "
                        f"{', '.join(f'{c}=excluded.{c}' for c in SUMMARY_FIELDS)}, extra=excluded.extra, "
                        "namespace=excluded.namespace RETURNING id",
                        (d.docid, *[getattr(d, c) for c in SUMMARY_FIELDS], json.dumps(d.extra) if d.extra else None,
                         None if d.namespace in (None, self.namespace) else d.namespace),
                    ).fetchone()
                    doc_ids.append(int(row[0]))
                for i, (d, vecs) in enumerate(zip(docs, checked)):
                    keep = set(vecs) | (set(unchanged) if unchanged else set())
                    for old in db.execute("SELECT field, slot FROM vectors WHERE doc=?", (doc_ids[i],)).fetchall():
                        if old["field"] in vecs or (replace and old["field"] not in keep):
                            removed.setdefault(old["field"], []).append(int(old["slot"]))
                            if old["field"] not in vecs:
                                db.execute("DELETE FROM vectors WHERE doc=? AND field=?", (doc_ids[i], old["field"]))
                for fname, items in planned.items():
                    for (i, _, _), slot in zip(items, new_slots[fname]):
                        db.execute("INSERT INTO vectors(doc, field, slot) VALUES (?,?,?) ON CONFLICT(doc, field) "
                                   "DO UPDATE SET slot=excluded.slot", (doc_ids[i], fname, int(slot)))
                    db.execute("UPDATE vector_fields SET next_slot=? WHERE name=?",
                               (int(new_slots[fname][-1]) + 1, fname))
            self._recount()
            # 3. in-memory state and graphs follow the commit; summaries first, so a new slot's hit has one
            self._summary.written(db, doc_ids)
            for fname, dead_list in removed.items():
                f = self._fields[fname]
                dead = np.asarray(dead_list, dtype=np.int64)
                for s in dead.tolist():
                    d_id = int(f.doc_of_slot[s])
                    if f.slot_of_doc.get(d_id) == s:
                        del f.slot_of_doc[d_id]
                f.doc_of_slot[dead] = -1
                f.touch()
            for fname, items in planned.items():
                f = self._fields[fname]
                slots = new_slots[fname]
                owners = np.asarray([doc_ids[i] for i, _, _ in items], dtype=np.int64)
                # publish in an order where a concurrent search never sees a slot without its vector/norm
                f.inv_norms = np.concatenate([f.inv_norms[: slots[0]], _inverse(planned_norms[fname])])
                f.vectors.commit(int(slots[-1]) + 1)
                f.verified = f.vectors.rows  # written here, checksummed as written
                doc_of_slot = np.concatenate([f.doc_of_slot, np.full(len(slots), -1, np.int64)])
                doc_of_slot[slots] = owners
                f.doc_of_slot = doc_of_slot
                f.slot_of_doc.update(zip(owners.tolist(), slots.tolist()))
                if f.ann is not None:
                    f.ann.extend(f.vectors.array(), f.next_slot)
            return len(docs)

    def remove(self, docid: str) -> bool:
        """Remove one document; True if it existed. It is gone from the next search."""
        self._need_write()
        with self._write_lock:
            db = self._db
            row = db.execute("SELECT id FROM documents WHERE docid=?", (docid,)).fetchone()
            if row is None:
                return False
            doc = int(row[0])
            slots = db.execute("SELECT field, slot FROM vectors WHERE doc=?", (doc,)).fetchall()
            with self._transaction():
                db.execute("DELETE FROM vectors WHERE doc=?", (doc,))
                db.execute("DELETE FROM documents WHERE id=?", (doc,))
            self._recount()
            for r in slots:
                f = self._fields[r["field"]]
                f.doc_of_slot[int(r["slot"])] = -1
                f.slot_of_doc.pop(doc, None)
                f.touch()
            self._summary.removed(doc)
            return True

    # ---- reading ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._refresh()
        return self._count

    def _recount(self) -> None:
        self._count = int(self._db.execute("SELECT count(*) FROM documents").fetchone()[0])

    def get(self, docid: str, *, with_vectors: bool = True) -> Document | None:
        self._refresh()
        conn = self._db if not self.readonly else self._conn()
        row = conn.execute("SELECT * FROM documents WHERE docid=?", (docid,)).fetchone()
        return None if row is None else self._document(row, with_vectors)

    def _document(self, row: sqlite3.Row, with_vectors: bool) -> Document:
        doc = Document(row["docid"], **{c: row[c] for c in SUMMARY_FIELDS}, namespace=row["namespace"])
        if row["extra"]:
            doc.extra = json.loads(row["extra"])
        if with_vectors:
            for fname, f in self._fields.items():
                slot = f.slot_of_doc.get(int(row["id"]))
                if slot is not None:
                    doc.vectors[fname] = np.array(f.vectors.array()[slot])
        return doc

    def visit(self, *, continuation: int = 0, count: int = 100, with_vectors: bool = True,
              only_namespace: bool = False, namespace: str | None = None, slices: int = 1, slice_id: int = 0,
              selection: str | None = None) -> tuple[list[Document], int | None]:
        """Documents in id order after ``continuation``; the next continuation, or None at the end.
        With ``only_namespace``, just those fed under ``namespace`` (None: the collection's own). ``slices`` > 1
        splits the documents into that many disjoint parts (Vespa's visit slicing); this visits part ``slice_id``.
        ``selection`` keeps the documents a Vespa document selection matches (see :mod:`clipseek.selection`)."""
        self._refresh()
        if not 0 <= slice_id < slices:
            raise QueryError(f"slice id {slice_id} must be in 0..{slices - 1} for {slices} slices")
        if not 0 <= continuation < INT64 or not 0 < count <= 100_000 or slices >= INT64:
            raise QueryError("continuation, count and slices must be whole numbers within 64 bits")
        where = "AND namespace IS ?" if only_namespace else ""
        args: list[Any] = [namespace] if only_namespace else []
        if selection is not None and selection.strip().lower() not in ("", "true", DOCUMENT_TYPE):
            sql, sel_args = doc_selection.compile_selection(selection)
            where, args = f"{where} AND coalesce({sql}, 0)", [*args, *sel_args]
        if slices > 1:
            where, args = f"{where} AND id % ? = ?", [*args, slices, slice_id]
        rows = self._conn().execute(f"SELECT * FROM documents WHERE id > ? {where} ORDER BY id LIMIT ?",
                                    (continuation, *args, count + 1)).fetchall()
        more = len(rows) > count
        rows = rows[:count]
        return [self._document(r, with_vectors) for r in rows], (int(rows[-1]["id"]) if more else None)

    def iter_documents(self, with_vectors: bool = True, *, only_namespace: bool = False,
                       namespace: str | None = None) -> Iterator[Document]:
        cont: int | None = 0
        while cont is not None:
            docs, cont = self.visit(continuation=cont, count=500, with_vectors=with_vectors,
                                    only_namespace=only_namespace, namespace=namespace)
            yield from docs

    def namespaces(self) -> set[str | None]:
        """The namespaces documents were fed under (None: the collection's own)."""
        self._refresh()
        return {r[0] for r in self._conn().execute("SELECT DISTINCT namespace FROM documents")}

    # ---- searching -------------------------------------------------------------------------------------
    def search(self, vector: Any = None, *, field: str | None = None, yql_query: str | yql.Select | None = None,
               query_tensors: Mapping[str, Any] | None = None, hits: int = 10, offset: int = 0,
               target_hits: int | None = None, approximate: bool | None = None, explore_additional_hits: int = 0,
               filter: Filter | None = None, rank_field: str | None = None, model: str | None = None
               ) -> SearchResult:
        """Nearest neighbours of ``vector`` on ``field``, or run a YQL statement (text, or as :func:`yql.parse`
        made it) with named query tensors.

        Relevance is Vespa's ``closeness(field)`` for the angular metric: ``1 / (1 + arccos(cos(q, a)))``.
        ``target_hits`` defaults to ``max(hits + offset, 100)``; ``hits`` is capped at 400, ``target_hits`` at 10,000.
        """
        started = time.perf_counter()
        self._refresh()
        if yql_query is None and filter is None and vector is not None and field is not None \
                and rank_field in (None, field):
            return self._vector_search(vector, field, hits, offset, target_hits, approximate,
                                       explore_additional_hits, model, started)
        tensors = dict(query_tensors or {})
        wanted: set[str] | None = None  # summary fields the YQL selects; None for all
        if yql_query is not None:
            select = yql.parse(yql_query) if isinstance(yql_query, str) else yql_query  # parsed by the caller
            where = select.where
            if "*" not in select.fields:
                wanted = set(select.fields)
            if select.limit is not None:
                hits = max(0, select.limit - (select.offset or 0))
            if select.offset is not None:
                offset = select.offset
        else:
            if vector is None or field is None:
                raise QueryError("search needs a vector and a field, or a YQL statement")
            where = yql.NearestNeighbor(field, "q", _target_hits(target_hits, hits, offset), approximate,
                                        explore_additional_hits)
            tensors["q"] = vector
            _check_model(self._field(field), model)
        if filter is not None:
            where = yql.And((where, *filter.predicates()))
        hits, offset = _cap(hits, "hits", MAX_HITS), _cap(offset, "offset", MAX_OFFSET)
        plans: list[str] = []
        matched, scores = self._evaluate(where, None, tensors, plans)
        if matched is None:
            matched = set(int(r[0]) for r in self._conn().execute("SELECT id FROM documents"))
        relevance = {d: 0.0 for d in matched}
        for label, per_doc in scores.items():
            if rank_field is None or label == rank_field:
                for d, value in per_doc.items():
                    if d in relevance:
                        relevance[d] = max(relevance[d], value)
        ordered = sorted(relevance.items(), key=lambda kv: (-kv[1], kv[0]))
        page = ordered[offset: offset + hits]
        docs = self._summaries([d for d, _ in page])
        result_hits = [Hit(s[0], float(rel), s[2] if wanted is None else {k: v for k, v in s[2].items() if k in wanted},
                           s[1]) for d, rel in page if (s := docs.get(d)) is not None]
        total_docs = len(self)
        return SearchResult(result_hits, len(ordered), total_docs, "+".join(plans) or "filter",
                            time.perf_counter() - started)

    def _vector_search(self, vector: Any, field: str, hits: int, offset: int, target_hits: int | None,
                       approximate: bool | None, explore: int, model: str | None, started: float) -> SearchResult:
        """``search`` for one vector without YQL or filters: the same plan and order, without the where-tree."""
        f = self._field(field)
        _check_model(f, model)
        q = self.query_vector(field, vector)
        k = _cap(_target_hits(target_hits, hits, offset), "targetHits", MAX_TARGET_HITS)
        hits, offset = _cap(hits, "hits", MAX_HITS), _cap(offset, "offset", MAX_OFFSET)
        plans: list[str] = []
        docs, rel, _cos = self._knn(f, q, k, explore, approximate, None, plans)
        ids = docs[offset: offset + hits].tolist()  # _knn orders by relevance, then document: as the YQL path
        found = self._summaries(ids)
        result_hits = [Hit(s[0], r, s[2], s[1]) for d, r in zip(ids, rel[offset: offset + hits].tolist())
                       if (s := found.get(d)) is not None]
        return SearchResult(result_hits, len(docs), self._count, plans[0], time.perf_counter() - started)

    def _summaries(self, doc_ids: list[int]) -> dict[int, Summary]:
        """(docid, namespace, summary fields) of each document that exists."""
        conn = self._conn()
        conn.row_factory = None  # plain tuples: the summary path runs once per query
        try:
            return self._summary.fill(conn, doc_ids)
        finally:
            conn.row_factory = sqlite3.Row

    def _evaluate(self, node: yql.Node, allowed: set[int] | None, tensors: Mapping[str, Any], plans: list[str]
                  ) -> tuple[set[int] | None, dict[str, dict[int, float]]]:
        """(matching doc ids or None for all, closeness per field/label per doc) for a where-tree."""
        if isinstance(node, yql.Bool):
            return (allowed if node.value else set()), {}
        if isinstance(node, yql.Predicate):
            docs = self._predicate(node)
            return (docs if allowed is None else docs & allowed), {}
        if isinstance(node, yql.NearestNeighbor):
            found = self._nearest(node, allowed, tensors, plans)
            return set(found), {node.label or node.field: found}
        if isinstance(node, yql.And):
            plain = [c for c in node.children if not isinstance(c, yql.NearestNeighbor)]
            nns = [c for c in node.children if isinstance(c, yql.NearestNeighbor)]
            current: set[int] | None = allowed
            scores: dict[str, dict[int, float]] = {}
            for plain_child in plain:
                current, part = self._evaluate(plain_child, current, tensors, plans)
                scores.update(part)
            for nn_child in nns:
                current, part = self._evaluate(nn_child, current, tensors, plans)
                scores.update(part)
            return current, scores
        assert isinstance(node, yql.Or)
        union: set[int] = set()
        all_docs = False
        merged: dict[str, dict[int, float]] = {}
        for or_child in node.children:
            child_docs, part = self._evaluate(or_child, allowed, tensors, plans)
            if child_docs is None:
                all_docs = True
            else:
                union |= child_docs
            for label, per_doc in part.items():
                merged.setdefault(label, {}).update(per_doc)
        return (allowed if all_docs else union), merged

    def _predicate(self, p: yql.Predicate) -> set[int]:
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
            sql, args = f"{column} {p.op} ?", [p.value]
        return set(int(r[0]) for r in self._conn().execute(f"SELECT id FROM documents WHERE {sql}", args))

    def attribute_counts(self, name: str, limit: int = 500) -> list[tuple[Any, int]]:
        """The most common values of a summary attribute with their document counts, most common first (what a
        picker lists: the cameras in the collection). Text values are grouped without regard to case."""
        if name not in schema.BY_NAME:
            raise FieldError(f"no attribute {name!r}; attributes are: {', '.join(schema.NAMES)}")
        collate = " COLLATE NOCASE" if schema.BY_NAME[name].python is str else ""
        rows = self._conn().execute(f"SELECT {name}, COUNT(*) FROM documents WHERE {name} IS NOT NULL "
                                    f"GROUP BY {name}{collate} ORDER BY COUNT(*) DESC, {name} LIMIT ?", (limit,))
        return [(value, int(count)) for value, count in rows]

    def _near(self, lat: float, lon: float, km: float) -> set[int]:
        """Documents whose GPS position is within ``km`` of (lat, lon): a bounding box in SQL, then the great-circle
        distance (the box does not wrap around the antimeridian)."""
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and km >= 0):
            raise QueryError(f"near needs a latitude in -90..90, a longitude in -180..180 and km >= 0, got "
                             f"{lat}, {lon}, {km}")
        dlat = km / 111.195
        dlon = km / (111.195 * max(math.cos(math.radians(lat)), 1e-6))
        rows = self._conn().execute("SELECT id, lat, lon FROM documents WHERE lat BETWEEN ? AND ? AND lon BETWEEN ? "
                                    "AND ?", (lat - dlat, lat + dlat, lon - dlon, lon + dlon))
        return {int(i) for i, a, b in rows if _km(lat, lon, a, b) <= km}

    def query_vector(self, field_name: str, value: Any) -> np.ndarray:
        f = self._field(field_name)
        try:
            arr = np.asarray(value, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise VectorError(f"query tensor for {field_name} must be a list of numbers ({exc})") from exc
        if arr.shape[0] != f.info.dim:
            raise VectorError(f"query tensor has {arr.shape[0]} values but field {field_name} holds "
                              f"{f.info.dim}-dim vectors of model {f.info.model}")
        if not np.isfinite(arr).all():
            raise VectorError("query tensor contains NaN or infinity")
        return arr

    def _nearest(self, nn: yql.NearestNeighbor, allowed: set[int] | None, tensors: Mapping[str, Any],
                 plans: list[str]) -> dict[int, float]:
        f = self._field(nn.field)
        if nn.tensor not in tensors:
            raise QueryError(f"nearestNeighbor({nn.field}, {nn.tensor}) needs the query tensor "
                             f"input.query({nn.tensor}), which the request does not give")
        q = self.query_vector(nn.field, tensors[nn.tensor])
        k = _cap(nn.target_hits or 10, "targetHits", MAX_TARGET_HITS)
        docs, rel, cos = self._knn(f, q, k, nn.explore_additional_hits, nn.approximate, allowed, plans)
        out: dict[int, float] = {}
        for d, value, c in zip(docs.tolist(), rel.tolist(), cos.tolist()):
            if nn.distance_threshold is not None and math.acos(max(-1.0, min(1.0, c))) > nn.distance_threshold:
                continue
            out[d] = value
        return out

    def _knn(self, f: _Field, q: np.ndarray, k: int, explore: int, approximate: bool | None,
             allowed: set[int] | None, plans: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest live documents (of ``allowed``): (doc ids, closeness, cosine), best first."""
        doc_of_slot = f.doc_of_slot  # one consistent snapshot for this search
        rows = len(doc_of_slot)
        filtered: np.ndarray | None = None  # the filter's slots in this snapshot, found once for plan and search
        if allowed is not None:
            filtered = np.fromiter((s for s in map(f.slot_of_doc.get, allowed) if s is not None and s < rows),
                                   dtype=np.int64)
        n_candidates = len(f.slot_of_doc) if filtered is None else len(filtered)
        # Vespa's planner: exact below its approximate-threshold (a filter passing < 5% of the documents)
        exact = (approximate is False or n_candidates <= max(self.exact_threshold, k)
                 or (filtered is not None and n_candidates < APPROXIMATE_THRESHOLD * len(f.slot_of_doc)))
        if exact:
            plans.append("exact")
            if filtered is None:  # score every row in place (no gather), then drop dead slots
                cos = f.cosines(q, rows=rows)
                live = doc_of_slot >= 0
                slots = np.flatnonzero(live)
                if len(slots) < rows:
                    cos = cos[live]
            else:
                slots = filtered
                cos = f.cosines(q, slots)
        else:
            plans.append("hnsw")
            slots = self._ann_candidates(f, doc_of_slot, q, k, explore, filtered, n_candidates)
            cos = f.cosines(q, slots)
        if len(slots) == 0 or k == 0:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty, empty
        if len(cos) > 8 * k:  # the k best (any of those tied at the k-th) of many, before sorting
            part = np.argpartition(-cos, k - 1)[:k]
            cos, slots = cos[part], slots[part]
        docs = doc_of_slot[slots]
        order = np.lexsort((docs, -cos))[:k]  # relevance (closeness is strictly increasing in cos), then document
        cos = cos[order]
        return docs[order], closeness(cos), cos

    def _ann_candidates(self, f: _Field, doc_of_slot: np.ndarray, q: np.ndarray, k: int, explore: int,
                        filtered: np.ndarray | None, n_candidates: int) -> np.ndarray:
        """The beam's candidate slots: live ones, and of ``filtered`` (the filter's slots) when given."""
        with self._write_lock:  # built under the write lock so no concurrent feed is missed
            if f.ann is None:
                ann = AnnIndex(f.info.dim, self.hnsw)
                ann.extend(f.vectors.array(), f.next_slot)
                f.ann = ann
        ann = f.ann
        rows = min(len(ann), len(doc_of_slot))
        if filtered is None:
            allow = f.live_bitmap(rows)
        else:  # the filter's live slots: the graph is walked through the others, which are never returned
            mask = np.zeros(rows, dtype=bool)
            mask[filtered[filtered < rows]] = True
            allow = np.packbits(mask, bitorder="little")
        ef = k + explore
        want = min(ef, n_candidates)  # as Vespa: a whole beam of candidates that pass (live, in the filter)
        while True:
            keys = ann.search(q, k, ef=ef, allow=allow)
            keys = keys[keys < rows]
            if len(keys) >= want:
                return keys
            if ef >= rows:  # the graph cannot reach them all: every candidate, scored exactly
                return np.flatnonzero(doc_of_slot >= 0) if filtered is None else filtered
            # dead slots or a filter took part of the beam: widen it by the share that passed (at least twice)
            ef = min(rows, max(2 * ef, int(1.25 * ef * want / max(len(keys), 1))))


def _inverse(norms: np.ndarray) -> np.ndarray:
    out = np.zeros(len(norms), np.float32)
    np.divide(1.0, norms, out=out, where=norms > 0)
    return out


def check_docid(docid: Any) -> str:
    """A usable document id: a non-empty string without NUL, at most MAX_ID_BYTES in UTF-8."""
    if not isinstance(docid, str) or not docid:
        raise QueryError("every document needs a non-empty string id")
    if "\0" in docid:
        raise QueryError(f"document id {docid[:80]!r} contains a NUL character")
    try:
        size = len(docid.encode("utf-8"))
    except UnicodeEncodeError:
        raise QueryError(f"document id {docid[:80]!r} is not valid Unicode text") from None
    if size > MAX_ID_BYTES:
        raise QueryError(f"document id of {size} bytes is longer than the {MAX_ID_BYTES} bytes accepted")
    return docid


def check_attribute(name: str, value: Any, docid: str = "") -> Any:
    """``value`` as attribute ``name`` stores it, or a QueryError naming the field and what it takes."""
    kind = ATTRIBUTE_TYPES.get(name)
    where = f"document {docid!r}: " if docid else ""
    if kind is None:
        raise FieldError(f"{where}no field '{name}' in the structure of type '{DOCUMENT_TYPE}'")
    if value is None:
        return None
    if kind is str:
        if not isinstance(value, str):
            raise QueryError(f"{where}field {name} takes a string, got {value!r:.80}")
        if "\0" in value:
            raise QueryError(f"{where}field {name} contains a NUL character")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QueryError(f"{where}field {name} takes a {'whole number' if kind is int else 'number'}, got {value!r:.80}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise QueryError(f"{where}field {name} takes a whole number, got {value!r}")
            value = int(value)
        if not -INT64 <= value < INT64:
            raise QueryError(f"{where}field {name} takes a 64-bit whole number, got {value}")
        return value
    if not math.isfinite(value):
        raise QueryError(f"{where}field {name} takes a finite number, got {value!r}")
    return float(value)


def _check_model(f: _Field, model: str | None) -> None:
    """A query encoded with ``model`` may only search a field of that model's vectors."""
    if model is not None and f.info.model != model:
        raise VectorError(f"field {f.info.name} holds vectors of model {f.info.model}, but the query was "
                          f"encoded with {model}: encode it with {f.info.model}")


def _target_hits(target_hits: int | None, hits: int, offset: int) -> int:
    """targetHits as given, else enough for the page and at least DEFAULT_TARGET_HITS."""
    return target_hits if target_hits is not None else max(hits + offset, DEFAULT_TARGET_HITS)


def _cap(value: int, name: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise QueryError(f"{name} must be a whole number, got {value!r}")
    if value < 0 or (value == 0 and name == "targetHits"):
        raise QueryError(f"{name} must be {'positive' if name == 'targetHits' else '>= 0'}, got {value}")
    return min(value, limit)


def _lock(folder: Path) -> int:
    path = folder / "write.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ReadOnlyError(f"cannot write to {folder} ({exc.strerror}): check its permissions, "
                            "or open the collection read-only") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        try:
            holder = os.read(fd, 100).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise CollectionLockedError(folder, holder or "unknown process") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}".encode())
    return fd
