"""The embedded engine: a collection of ``image_search`` documents with one vector field per model.

Vectors in, hits out; nothing here knows about image files or HTTP. Search has Vespa's semantics: a
``nearestNeighbor`` operator matches the ``targetHits`` closest documents that pass the other conditions of its
conjunction (filters are applied *before* choosing neighbours, so a filter never costs hits that exist), and
relevance is ``closeness`` for the angular distance metric, ``1 / (1 + arccos(cos))``. The plan is exact search
for small or heavily filtered candidate sets and HNSW otherwise, or a scan (every passing document ranked by its
int8 code, the best scored exactly) for a filter that follows the vectors near the query (:mod:`clipseek.vectors`);
``approximate: false`` forces exact.

Who does what: :class:`Collection` (this module) opens, locks and orders writes; :mod:`clipseek.documents` holds
every SQL statement; :mod:`clipseek.vectors` one field's rows and its exact/HNSW search; :mod:`clipseek.matching`
evaluates the YQL where-tree — a plain vector search is the tree ``nearestNeighbor(field, q)``, so every search
takes the same path.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import schema, store, yql
from .documents import FILTER_COLUMNS, DocumentStore
from .errors import (
    CollectionDamagedError,
    CollectionLockedError,
    DiskFullError,
    FieldError,
    NotACollectionError,
    QueryError,
    ReadOnlyError,
    VectorError,
)
from .hnsw import HnswParams
from .lexing import INT64
from .matching import Matcher, rank
from .summaries import SUMMARY_FIELDS, Summaries
from .vectors import APPROXIMATE_THRESHOLD, FieldInfo, Neighbors, VectorIndex

__all__ = ["APPROXIMATE_THRESHOLD", "DEFAULT_TARGET_HITS", "DOCUMENT_TYPE", "FILTER_COLUMNS", "MAX_HITS", "MAX_OFFSET",
           "MAX_TARGET_HITS", "RELEVANCE_DIGITS", "Collection", "Document", "FieldInfo", "Filter", "Hit",
           "SearchResult", "check_attribute", "check_docid", "check_count"]

DOCUMENT_TYPE = "image_search"
MAX_HITS = 400
MAX_TARGET_HITS = 10_000
MAX_OFFSET = 1000
RELEVANCE_DIGITS = 6  # decimals of a hit's relevance in the CLI's --json and the native API's hits
DEFAULT_TARGET_HITS = 100  # as the TextEmbeddingSearcher of Vespa's text-image sample app; a small beam costs recall
MAX_ID_BYTES = 1024  # a document id's UTF-8 length (Vespa allows 64 KiB; ours name photos)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a stored vector's squared length must stay below it
#: The Python type of each summary attribute (what a document may store there, checked before any write).
ATTRIBUTE_TYPES: dict[str, type] = {a.name: a.python for a in schema.ATTRIBUTES}


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


@dataclass
class Hit:
    docid: str
    relevance: float
    fields: dict[str, Any]
    namespace: str | None = None  # the document's own, when it was fed under another than the collection's

    def shown_relevance(self) -> float:
        """The relevance as the CLI's ``--json`` and the native API print it, and as their thresholds compare it:
        a relevance copied from the output keeps its own hit (0.462936 may be 0.4629355)."""
        return round(self.relevance, RELEVANCE_DIGITS)


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


class Collection:
    """A folder holding documents and their vectors. Open with :meth:`open` or :meth:`create`.

    One process writes at a time (a lock file); any number read. Searches may run in threads while another
    thread feeds; each write is visible to the next search.

    The collection is the front of three parts, each owning one thing: a :class:`DocumentStore` (the SQLite
    file: documents, the field registry, document → slot), one :class:`VectorIndex` per vector field (its rows,
    exact and HNSW search; no SQL), and a :class:`Matcher` (the YQL where-tree over both). The collection holds
    the lock and the write order: vector rows → one SQL transaction → in-memory publication.
    """

    def __init__(self, path: Path, db: sqlite3.Connection, *, readonly: bool, lock_fd: int | None,
                 exact_threshold: int) -> None:
        self.path = path
        self.readonly = readonly
        self.exact_threshold = exact_threshold
        self.store = DocumentStore(path, db, readonly=readonly)
        self._lock_fd = lock_fd
        self._write_lock = threading.RLock()
        self.namespace = self.store.meta("namespace", "default") or "default"
        self.hnsw = HnswParams(**json.loads(self.store.meta("hnsw", "{}") or "{}"))
        self._indexes: dict[str, VectorIndex] = {}
        self._data_version = -1
        self._count = 0
        self._matcher = Matcher(self.store.matching, self._nearest)
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
        self.store.close()
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
            for index in self._indexes.values():
                index.save_graph()
            self.store.checkpoint()

    # ---- indexed folders -------------------------------------------------------------------------------
    def indexed_roots(self) -> list[bytes]:
        """Real paths of the folders ``clipseek index`` indexed: originals are served only from under these."""
        return self.store.indexed_roots()

    def add_indexed_roots(self, roots: Iterable[bytes]) -> None:
        """Record folders (their real paths, as bytes) that an index run covers."""
        self._need_write()
        with self._write_lock:
            self.store.add_indexed_roots(roots)

    # ---- fields ----------------------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, FieldInfo]:
        self._refresh()
        return {name: index.info for name, index in self._indexes.items()}

    def vector_index(self, name: str) -> VectorIndex:
        """The vector field ``name``'s index (its rows, maps and HNSW graph), or a FieldError listing the fields."""
        self._refresh()
        return self._index(name)

    @property
    def summaries(self) -> Summaries:
        """The hits' summary store (its in-memory copy, once warm)."""
        return self.store.summaries

    def add_field(self, name: str, model: str, dim: int) -> FieldInfo:
        """Register a vector field (idempotent); an existing field with another model or dim is an error."""
        self._need_write()
        if not name.replace("_", "").isalnum():
            raise FieldError(f"field name {name!r} must be letters, digits and underscores")
        with self._write_lock:
            existing = self._indexes.get(name)
            if existing is not None:
                if existing.info.model != model or existing.info.dim != dim:
                    raise FieldError(
                        f"field {name} holds {existing.info.dim}-dim vectors of model {existing.info.model}, not "
                        f"{dim}-dim vectors of {model}: use the field's own model, or another field name")
                return existing.info
            self.store.add_field(name, model, dim)
            info = FieldInfo(name, model, dim)
            self._indexes[name] = VectorIndex(self.path, info, 0, self.hnsw)
            return info

    def _index(self, name: str) -> VectorIndex:
        index = self._indexes.get(name)
        if index is None:
            valid = ", ".join(sorted(self._indexes)) or "none yet"
            raise FieldError(f"unknown vector field {name!r}; this collection has: {valid}")
        return index

    # ---- loading and refreshing ---------------------------------------------------------------------------
    def _load_fields(self) -> None:
        """Read the fields and their document ↔ slot maps in one snapshot, and check every row not checked yet
        (its CRC-32 and norm) and the graph snapshot: the file work runs in threads while SQLite reads the maps.
        Any problem is a CollectionDamagedError naming it; nothing is published then."""
        started: dict[str, tuple[VectorIndex, Future[Any], Future[None]]] = {}
        with ThreadPoolExecutor(2) as pool:

            def start(name: str, model: str, dim: int, next_slot: int) -> None:
                index = VectorIndex(self.path, FieldInfo(name, model, dim), next_slot, self.hnsw)
                old = self._indexes.get(name)
                started[name] = (index, pool.submit(index.check_rows, old),
                                 pool.submit(index.load_graph, old, readonly=self.readonly))

            self._data_version, self._count, rows = self.store.snapshot(on_field=start)
        done = {name: (index, checked.result(), graph) for name, (index, checked, graph) in started.items()}
        indexes = {}
        problems: list[str] = []
        for name, _model, _dim, next_slot, pairs in rows:
            index, checked, graph = done[name]
            if len(pairs) and (pairs[:, 1].min() < 0 or pairs[:, 1].max() >= next_slot):
                problems.append(f"field {name}: documents point at slots past its {next_slot} rows")
                continue
            index.map_slots(pairs[:, 0], pairs[:, 1])
            found = index.verify(self._indexes.get(name), readonly=self.readonly, checked=checked)
            if found:
                problems.extend(found)
                continue
            graph.result()
            indexes[name] = index
        if problems:
            raise CollectionDamagedError(self.path, problems)
        self._indexes = indexes
        self.store.reset()

    def _refresh(self) -> None:
        """A reader sees other processes' commits: reload when SQLite's data_version moved."""
        if not self.readonly:
            return
        if self.store.data_version() != self._data_version:
            with self._write_lock:
                self._load_fields()

    # ---- writing ---------------------------------------------------------------------------------------
    def _need_write(self) -> None:
        if self.readonly:
            raise ReadOnlyError(f"{self.path} is open read-only: open it without readonly=True to change it")

    def _check_vector(self, fname: str, vec: Any, docid: str) -> np.ndarray:
        info = self._index(fname).info
        try:
            arr = np.asarray(vec, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise VectorError(f"document {docid!r}: field {fname} must be a list of numbers ({exc})") from exc
        if arr.ndim != 1 or arr.shape[0] != info.dim:
            raise VectorError(f"document {docid!r}: field {fname} takes {info.dim} values "
                              f"(model {info.model}), got {arr.shape[0] if arr.ndim == 1 else arr.shape}")
        if not np.isfinite(arr).all():
            raise VectorError(f"document {docid!r}: field {fname} contains NaN or infinity")
        if float(np.dot(arr.astype(np.float64), arr)) > FLOAT32_MAX:  # its length (squared) overflows float32
            raise VectorError(f"document {docid!r}: field {fname} is too long to store (its largest value is "
                              f"{float(np.abs(arr).max()):.3g}); scale it down: only its direction counts")
        return arr

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
                checked.append({k: self._check_vector(k, v, d.docid) for k, v in d.vectors.items()
                                if k not in unchanged})
            # 1. vectors to fresh slots past next_slot (durable, but unreferenced until the commit)
            planned: dict[str, list[int]] = {}  # field → the positions in docs of the documents with a new vector
            for i, vecs in enumerate(checked):
                for fname in vecs:
                    planned.setdefault(fname, []).append(i)
            new_slots: dict[str, np.ndarray] = {}
            planned_norms: dict[str, np.ndarray] = {}
            for fname, positions in planned.items():
                index = self._indexes[fname]
                first = index.next_slot
                try:
                    planned_norms[fname] = index.vectors.write(first, np.stack([checked[i][fname] for i in positions]))
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DiskFullError(self.path, 0) from exc
                    raise
                new_slots[fname] = np.arange(first, first + len(positions), dtype=np.int64)
            # 2. one transaction pointing documents at them
            st = self.store
            doc_ids: list[int] = []
            removed: dict[str, list[int]] = {}
            with st.transaction():
                for d in docs:
                    namespace = None if d.namespace in (None, self.namespace) else d.namespace
                    doc_ids.append(st.upsert(d.docid, [getattr(d, c) for c in SUMMARY_FIELDS], d.extra, namespace))
                for i, vecs in enumerate(checked):
                    keep = set(vecs) | (set(unchanged) if unchanged else set())
                    for fname, slot in st.slots(doc_ids[i]):
                        if fname in vecs or (replace and fname not in keep):
                            removed.setdefault(fname, []).append(slot)
                            if fname not in vecs:
                                st.drop_vector(doc_ids[i], fname)
                for fname, positions in planned.items():
                    for i, slot in zip(positions, new_slots[fname].tolist()):
                        st.point(doc_ids[i], fname, slot)
                    st.set_next_slot(fname, int(new_slots[fname][-1]) + 1)
            self._count = st.count()
            # 3. in-memory state and graphs follow the commit; summaries first, so a new slot's hit has one
            st.written(doc_ids)
            for fname, dead in removed.items():
                self._indexes[fname].kill(np.asarray(dead, dtype=np.int64))
            for fname, positions in planned.items():
                owners = np.asarray([doc_ids[i] for i in positions], dtype=np.int64)
                self._indexes[fname].publish(new_slots[fname], owners, planned_norms[fname])
            return len(docs)

    def remove(self, docid: str) -> bool:
        """Remove one document; True if it existed. It is gone from the next search."""
        self._need_write()
        with self._write_lock:
            st = self.store
            doc = st.internal_id(docid)
            if doc is None:
                return False
            slots = st.slots(doc)
            with st.transaction():
                st.delete(doc)
            self._count = st.count()
            for fname, slot in slots:
                self._indexes[fname].kill(np.asarray([slot], dtype=np.int64))
            st.removed(doc)
            return True

    # ---- reading ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._refresh()
        return self._count

    def get(self, docid: str, *, with_vectors: bool = True) -> Document | None:
        self._refresh()
        row = self.store.row(docid)
        return None if row is None else self._document(row, with_vectors)

    def _document(self, row: sqlite3.Row, with_vectors: bool) -> Document:
        doc = Document(row["docid"], **{c: row[c] for c in SUMMARY_FIELDS}, namespace=row["namespace"])
        if row["extra"]:
            doc.extra = json.loads(row["extra"])
        if with_vectors:
            for fname, index in self._indexes.items():
                vector = index.row(int(row["id"]))
                if vector is not None:
                    doc.vectors[fname] = vector
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
        rows = self.store.rows_after(continuation, count, only_namespace=only_namespace, namespace=namespace,
                                     slices=slices, slice_id=slice_id, selection=selection,
                                     document_type=DOCUMENT_TYPE)
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
        return self.store.namespaces()

    def attribute_counts(self, name: str, limit: int = 500) -> list[tuple[Any, int]]:
        """The most common values of a summary attribute with their document counts, most common first (what a
        picker lists: the cameras in the collection). Text values are grouped without regard to case."""
        return self.store.attribute_counts(name, limit)

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
        A vector and a field are the where-tree ``nearestNeighbor(field, q)``; a filter and-s its predicates to it.
        """
        started = time.perf_counter()
        self._refresh()
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
            _check_model(self._index(field).info, model)
            where = yql.NearestNeighbor(field, "q", _target_hits(target_hits, hits, offset), approximate,
                                        explore_additional_hits)
            tensors["q"] = vector
        if filter is not None:
            where = yql.And((where, *filter.predicates()))
        hits, offset = check_count(hits, "hits", MAX_HITS), check_count(offset, "offset", MAX_OFFSET)
        matches = self._matcher.match(where, tensors)
        docs, relevance = rank(matches, self.store.all_ids, rank_field)
        page = docs[offset: offset + hits].tolist()
        found = self.store.fill(page)
        result_hits = [Hit(s[0], r, s[2] if wanted is None else {k: v for k, v in s[2].items() if k in wanted}, s[1])
                       for d, r in zip(page, relevance[offset: offset + hits].tolist())
                       if (s := found.get(d)) is not None]
        return SearchResult(result_hits, len(docs), self._count, "+".join(matches.plans) or "filter",
                            time.perf_counter() - started)

    def query_vector(self, field_name: str, value: Any) -> np.ndarray:
        return self._index(field_name).check_query(value)

    def _nearest(self, nn: yql.NearestNeighbor, tensors: Mapping[str, Any], allowed: np.ndarray | None) -> Neighbors:
        index = self._index(nn.field)
        if nn.tensor not in tensors:
            raise QueryError(f"nearestNeighbor({nn.field}, {nn.tensor}) needs the query tensor "
                             f"input.query({nn.tensor}), which the request does not give")
        q = index.check_query(tensors[nn.tensor])
        k = check_count(nn.target_hits or 10, "targetHits", MAX_TARGET_HITS)
        return index.nearest(q, k, explore=nn.explore_additional_hits, approximate=nn.approximate, allowed=allowed,
                             exact_threshold=self.exact_threshold)


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
        wants = "whole number" if kind is int else "number"
        raise QueryError(f"{where}field {name} takes a {wants}, got {value!r:.80}")
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


def _check_model(info: FieldInfo, model: str | None) -> None:
    """A query encoded with ``model`` may only search a field of that model's vectors."""
    if model is not None and info.model != model:
        raise VectorError(f"field {info.name} holds vectors of model {info.model}, but the query was "
                          f"encoded with {model}: encode it with {info.model}")


def _target_hits(target_hits: int | None, hits: int, offset: int) -> int:
    """targetHits as given, else enough for the page and at least DEFAULT_TARGET_HITS."""
    return target_hits if target_hits is not None else max(hits + offset, DEFAULT_TARGET_HITS)


def check_count(value: int, name: str, limit: int) -> int:
    """A request's count (hits, offset, targetHits) as a whole number, capped at ``limit``."""
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
