"""The HNSW graph of one vector field (faiss), and Vespa's closeness. Exact scoring over the float32 rows, and
the plan that chooses between the two, are :mod:`clipseek.vectors`'.

Distances follow Vespa's ``angular`` metric: ``d = arccos(q·a / (|q||a|))`` in radians, and relevance is
Vespa's ``closeness = 1 / (1 + d)``.

The HNSW graph only proposes candidates. It is faiss's ``IndexHNSWSQ`` over int8 codes of the L2-normalised
vectors, scaled so the field's largest components (ignoring 1 in 100,000, which saturate) use the whole int8 range,
compared by inner product with the query, which is the cosine up to quantisation noise. (Codes at a fixed × 127
would leave a 512-dim unit vector's components, ~0.04, ±20 of the ±127: 200k × 512, the graph's own top 10 had
recall 0.81 that way, 0.95 scaled.) faiss holds them as ``QT_8bit_uniform`` codes whose range is set here, not
trained: the byte ``c + 128`` decodes to exactly ``c / (127 × scale)``, so faiss stores the codes we make (it is
given them decoded and encodes them back to the same bytes) and compares them with the float32 query as it is.
(Snapshots of format 4 hold the same bytes as ``QT_8bit_direct_signed``, whose distance rounds the query to
integers first; they are loaded as uniform codes. At 200k × 512, an ad hoc check on one snapshot: the walk
1.1-1.4 × as fast at beams 24-48, its own top 10 a little nearer, recall 0.9647 against 0.9622 at beam 40.)

A search walks with a beam of targetHits + exploreAdditionalHits candidates and its best, by the graph's int8
distance, are re-scored (the best 2 × targetHits, at least targetHits + 16: at 200k × 512, beam 48, targetHits 10,
an ad hoc check, recall@10 0.9936 from the best 16 as from all 48, for half the re-scoring's work) from the graph's
int8 code (read in place from faiss's code array) plus a 4-bit residual kept here (the rest of
the normalised component, in sixteenths of a code step): 12 bits a component in memory, while the float32 rows
stay on disk for exact search and export. Ranked that way (an ad hoc check), 200k × 512 clustered vectors
(bench/ann.py's) keep recall@10 0.998 against exact float32 ranking (int8 alone: 0.97; float16: 0.999), the
cosine within 2e-5 (median; 1e-3 where a component saturates).
The relevance of an HNSW hit is therefore the cosine to about 1e-4, not to float32's precision; an exact search
(``approximate: false``, or the planner's choice) reads the float32 rows.

Besides the walk, the graph lends its codes to a scan (:meth:`AnnIndex.scan`: a filter's rows ranked from a quarter
of their float32 bytes), its bottom-layer links (:meth:`AnnIndex.neighbours`) to the check of whether a filter
follows the vectors, and its codes and links, in place, to the walks compiled by numba (:mod:`clipseek.walks`):
the plain walk every search takes where numba is installed (faiss's own algorithm, which faiss's ``search`` runs
elsewhere) and the filter-first walk (:meth:`AnnIndex.filter_first`).

The graph's ids are the field's slots (rows of its vector file, appended in order; faiss numbers added vectors
in order), so it grows by appending the rows past the ones it covers. Removed or replaced documents leave dead
slots in the graph; searches skip them, and slots outside a filter, inside the graph walk (a bitmap of the slots
that may be returned, faiss's ``IDSelectorBitmap`` when faiss walks: the walk goes through the others, its answer
holds only slots that may be returned).
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checksums import file_crc32


@dataclass(frozen=True)
class HnswParams:
    """Vespa's ``hnsw`` index settings (the defaults of the schema of Vespa's text-image sample app)."""

    max_links_per_node: int = 16
    neighbors_to_explore_at_insert: int = 500


def closeness(cosine: np.ndarray) -> np.ndarray:
    """Vespa's closeness for angular distance: 1 / (1 + arccos(cos))."""
    angle = np.arccos(np.maximum(np.minimum(cosine.astype(np.float64), 1.0), -1.0))  # np.clip costs 3× more
    return 1.0 / (1.0 + angle)


#: 5: faiss IndexHNSWSQ, uniform codes (<field>.<n>.faiss); 4: the same bytes as direct signed codes (read as
#: uniform ones); 3: usearch + the residuals; 2: int8 codes made here; 1: codes usearch made from float32 (× 127).
#: A snapshot of another format is never loaded: the graph is rebuilt from the rows.
SNAPSHOT_FORMAT = "faiss-hnsw-sq8u-ip-5"
READABLE_FORMATS = (SNAPSHOT_FORMAT, "faiss-hnsw-sq8-ip-4")
SUFFIX = ".faiss"
LEGACY_SUFFIXES = (".usearch",)  # older clipseek's snapshots, removed when a new one is saved
RESIDUAL_STEPS = 16  # a residual counts sixteenths of a code step, stored as 0..15 (that is -8..7), two a byte
CODE_OFFSET = 128  # faiss stores an int8 code c as the byte c + 128
ADD_CHUNK = 65_536  # rows coded and added at a time
#: Whether the walks compiled by numba (:mod:`clipseek.walks`: faiss's walk over faiss's arrays, about twice as
#: fast, and the filter-first walk) may be loaded; asked without importing numba.
COMPILED = importlib.util.find_spec("numba") is not None
#: Graph searches a process makes with faiss's walks before it loads the compiled ones. Importing numba and loading
#: the walks' machine code from numba's cache costs ~0.8 s (ad hoc, this project's build machine; compiling them
#: into an empty cache ~6 s), far more than a one-off search saves (a few hundred µs at 200k): a ``clipseek search``
#: never pays it; a server loads them as it starts (:func:`load_walks`), other processes at their 32nd search.
WARM_AFTER = 32
NO_BITMAP = np.zeros(0, dtype=np.uint8)  # the compiled walk's "every slot may be returned"
_walks: Any = None  # clipseek.walks, once loaded
_walks_tried = False  # loading was tried (once: a numba that fails to load leaves faiss's walks for good)
_graph_searches = 0
_walks_lock = threading.Lock()


def loaded_walks() -> Any:
    """:mod:`clipseek.walks`, once loaded (and not turned off by :data:`COMPILED`); None while faiss's walks run."""
    return _walks if COMPILED else None


def count_search() -> None:
    """One more graph search in this process: from the WARM_AFTER-th, the compiled walks are loaded."""
    global _graph_searches
    if _walks_tried:
        return
    _graph_searches += 1
    if _graph_searches >= WARM_AFTER:
        load_walks()


def load_walks() -> None:
    """Import :mod:`clipseek.walks` and compile its walks, or load them from numba's cache (where numba is
    installed); searches use them from then on. Thread-safe; tried once: a numba that cannot compile them warns,
    and faiss's walks stay."""
    global _walks, _walks_tried
    if not COMPILED or _walks_tried:
        return
    with _walks_lock:
        if _walks_tried:
            return
        try:
            from . import walks

            walks.warm()
            _walks = walks
        except Exception as exc:  # a broken numba install costs speed, never a search
            warnings.warn(f"clipseek: the compiled graph walks did not load ({type(exc).__name__}: {exc}); "
                          "searches take faiss's walks. Reinstall numba to get them back.", RuntimeWarning,
                          stacklevel=2)
        finally:
            _walks_tried = True


_threads = threading.local()  # per calling thread: OpenMP's thread count (one for a search, all for an add), and
# the search parameters reused by its unfiltered searches


def _omp_threads(faiss: Any, n: int) -> None:
    if getattr(_threads, "n", None) != n:
        faiss.omp_set_num_threads(n)  # a single-query search in a parallel region costs ~30-70 µs more
        _threads.n = n


class AnnIndex:
    """An HNSW graph over slots ``0 .. len-1`` of one field, and the rows' residuals; thread-safe; snapshots to
    ``<dir>/<field>.<n>.faiss`` with the residuals in ``<field>.<n>.r4`` and its quantisation scale and
    checksums in ``<field>.<n>.json``."""

    def __init__(self, dim: int, params: HnswParams, scale: float | None = None) -> None:
        import faiss as faiss_module

        faiss: Any = faiss_module  # SWIG bindings: its stubs do not know the subclasses' members
        self._faiss = faiss
        self.dim, self.params = dim, params
        self.scale = scale
        self.is_view = False
        self._covered = 0
        self._lock = threading.Lock()
        self._index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit_uniform, params.max_links_per_node,
                                        faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = params.neighbors_to_explore_at_insert
        if scale is not None:
            self._set_range()
        self._code_bytes: np.ndarray = np.zeros((0, dim), dtype=np.uint8)  # faiss's code array, in place (code + 128)
        # the graph's links, in place: slot s's bottom-layer neighbours are _links[_link_starts[s] + _level0] (-1: none)
        self._links: np.ndarray = np.zeros(0, dtype=np.int32)
        self._link_starts: np.ndarray = np.zeros(1, dtype=np.int64)
        self._level0: np.ndarray = np.zeros(0, dtype=np.int64)  # a node's bottom-layer positions in _links
        # where each layer's links start in a node's run of _links (layer l: _cum[l] .. _cum[l + 1]), the entry
        # point and its layer: what the filter-first walk reads besides the codes and links
        self._cum: np.ndarray = np.zeros(1, dtype=np.int64)
        self._entry, self._top = -1, -1
        self._scratch = threading.local()  # per thread: the filter-first walk's visited marks and its walk count
        self._residuals = np.zeros((0, (dim + 1) // 2), dtype=np.uint8)  # capacity ≥ covered rows

    def __len__(self) -> int:
        return self._covered

    @property
    def step(self) -> float:
        """What one code step is of a normalised component: a code ``c`` stands for ``c × step``."""
        return 1.0 / (127.0 * (self.scale or 1.0))

    def _set_range(self) -> None:
        """faiss's codes as uniform 8-bit ones over [-128.5, 126.5] steps: byte ``b`` decodes to ``(b - 128) ×
        step``, and ``c × step`` encodes to ``c + 128`` (faiss truncates ``(x - min) / width × 255``: c + 128.5)."""
        faiss, step = self._faiss, self.step
        for index in (self._index, self._index.storage):
            index.is_trained = True
        storage = faiss.downcast_index(self._index.storage)
        storage.sq.qtype = faiss.ScalarQuantizer.QT_8bit_uniform
        storage.sq.set_derived_sizes()
        faiss.copy_array_to_vector(np.array([-128.5 * step, 255.0 * step], dtype=np.float32), storage.sq.trained)

    def _codes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int8 codes (as float32; faiss is given them × step) of the normalised rows (components × scale × 127,
        rounded, saturated at ±127) and their packed 4-bit residuals."""
        x = np.array(rows, dtype=np.float32, ndmin=2)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.where(norms > 0, norms, 1.0)
        if self.scale is None:  # from the first rows: the largest components (ignoring 1 in 100,000) fill the range
            top = float(np.quantile(np.abs(x), 0.99999)) if x.size else 0.0
            self.scale = 1.0 / max(top, 2.5 / self.dim ** 0.5)
        x *= np.float32(127.0 * self.scale)
        codes = np.clip(np.rint(x), -127.0, 127.0)
        x -= codes
        x *= RESIDUAL_STEPS
        np.rint(x, out=x)
        np.clip(x, -RESIDUAL_STEPS // 2, RESIDUAL_STEPS // 2 - 1, out=x)
        x += RESIDUAL_STEPS // 2
        nibbles = x.astype(np.uint8)
        if self.dim % 2:
            nibbles = np.concatenate([nibbles, np.full((len(nibbles), 1), RESIDUAL_STEPS // 2, np.uint8)], axis=1)
        packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
        return codes, packed

    def _map_codes(self) -> None:
        """Point at faiss's code array and its graph's links (after loading or adding: growing arrays move); under
        the lock."""
        faiss = self._faiss
        storage = faiss.downcast_index(self._index.storage)
        n = int(storage.ntotal)
        view = faiss.rev_swig_ptr(storage.codes.data(), n * self.dim) if n else np.zeros(0, np.uint8)
        self._code_bytes = np.asarray(view).reshape(n, self.dim)
        hnsw = self._index.hnsw
        if n:
            self._links = np.asarray(faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size()))
            starts = np.asarray(faiss.rev_swig_ptr(hnsw.offsets.data(), hnsw.offsets.size()))
            self._link_starts = starts.view(np.int64)  # size_t offsets, far below 2^63
        self._cum = faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
        self._level0 = np.arange(self._cum[0], self._cum[1])
        self._entry, self._top = int(hnsw.entry_point), int(hnsw.max_level)

    def extend(self, rows: np.ndarray, upto: int) -> None:
        """Add ``rows[len(self):upto]`` (the slots past the ones covered), using all cores."""
        with self._lock:
            if upto > self._covered and self.is_view:
                raise RuntimeError("a memory-mapped graph cannot grow; load it without view")
            if upto > len(self._residuals):  # room for them, doubling: readers keep the array they hold
                grown = np.empty((max(upto, 2 * len(self._residuals)), self._residuals.shape[1]), np.uint8)
                grown[: self._covered] = self._residuals[: self._covered]
                self._residuals = grown
            _omp_threads(self._faiss, os.cpu_count() or 1)
            for start in range(self._covered, upto, ADD_CHUNK):  # chunks: codes, not a float32 copy, in memory
                end = min(start + ADD_CHUNK, upto)
                codes, residuals = self._codes(rows[start:end])
                if not self._index.is_trained:  # the first rows set the scale
                    self._set_range()
                self._residuals[start:end] = residuals
                codes *= np.float32(self.step)  # decoded: faiss encodes them back to these codes
                self._index.add(codes)  # faiss numbers them ntotal, ntotal + 1, ...: the slots
                self._covered = end
            self._map_codes()

    def search(self, query: np.ndarray, count: int, ef: int, allow: np.ndarray | None = None,
               walk: int | None = None) -> np.ndarray:
        """The ``count`` best slots of the beam (fewer only when the walk finds fewer), nearest first by the graph's
        approximate distance. ``ef`` is the beam (Vespa: targetHits + exploreAdditionalHits); ``allow`` a bitmap
        (``np.packbits(..., bitorder="little")``) of the slots that may be returned, applied inside the walk.

        ``walk`` (at least the beam) is how many slots the walk keeps in view, those ``allow`` excludes included:
        a filter passing a share ``p`` of the slots needs about ``ef / p`` for a beam of ``ef`` that pass."""
        width = min(count, self._covered)
        if width <= 0:
            return np.zeros(0, dtype=np.int64)
        faiss = self._faiss
        view = min(max(ef, width, walk or 0), self._covered)
        walks = loaded_walks()
        if walks is not None:  # the same walk, compiled: it asks for a slot's neighbours' rows at once
            bitmap = NO_BITMAP if allow is None else np.ascontiguousarray(allow, dtype=np.uint8)
            visited, stamp = self._visited()
            with self._lock:  # faiss's arrays, in place: a writer's add may move them
                found: np.ndarray = walks.walk(query, self._code_bytes, self._links, self._link_starts, self._cum,
                                               self._entry, self._top, view, width, bitmap, visited, stamp)
            return found
        if allow is None:  # one parameter object per thread, reused (making one costs ~6 µs of a ~200 µs search)
            params = getattr(_threads, "params", None)
            if params is None:
                params = _threads.params = faiss.SearchParametersHNSW()
            if params.efSearch != view:
                params.efSearch = view
        else:
            params = faiss.SearchParametersHNSW()
            params.efSearch = view
            allow = np.ascontiguousarray(allow, dtype=np.uint8)
            selector = faiss.IDSelectorBitmap(len(allow), faiss.swig_ptr(allow))  # held until the search returns
            params.sel = selector
        return self._nearest_of(self._index, query, width, params)

    def nearest(self, query: np.ndarray, k: int, count: int, ef: int, allow: np.ndarray | None, walk: int,
                doc_of_slot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """:meth:`search`'s ``count`` best slots (of those below ``len(doc_of_slot)``), :meth:`cosines` of them and
        the ``k`` best by cosine, then document (``doc_of_slot[slot]``), in one compiled call: (documents, Vespa's
        closeness, cosines, how many slots the walk found). None while the compiled walks are not loaded."""
        walks = loaded_walks()
        width = min(count, self._covered)
        if walks is None or width <= 0:
            return None
        bitmap = NO_BITMAP if allow is None else np.ascontiguousarray(allow, dtype=np.uint8)
        visited, stamp = self._visited()
        with self._lock:  # faiss's arrays, in place: a writer's add may move them
            found: tuple[np.ndarray, np.ndarray, np.ndarray, int] = walks.nearest(
                query, self._code_bytes, self._residuals, self._links, self._link_starts, self._cum, self._entry,
                self._top, min(max(ef, width, walk), self._covered), width, bitmap, visited, stamp, self.step,
                RESIDUAL_STEPS, doc_of_slot, k)
        return found

    def ranked(self, query: np.ndarray, slots: np.ndarray, doc_of_slot: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`cosines` of ``slots`` (covered ones) and the ``k`` best by cosine, then document
        (``doc_of_slot[slot]``), in one compiled call: (documents, Vespa's closeness, cosines); None while the
        compiled walks are not loaded."""
        walks = loaded_walks()
        if walks is None:
            return None
        with self._lock:  # faiss's code array, in place: a writer's add may move it
            found: tuple[np.ndarray, np.ndarray, np.ndarray] = walks.ranked(
                query, self._code_bytes, self._residuals, slots, self.step, RESIDUAL_STEPS, doc_of_slot, k)
        return found

    def linked(self, slots: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
        """Of the distinct slots the graph's bottom layer links ``slots`` to (those below ``len(mask)``): how many,
        and how many ``mask`` (a bool per slot) passes."""
        walks = loaded_walks()
        if walks is None:
            linked = np.sort(self.neighbours(slots))
            linked = linked[linked < len(mask)]
            if len(linked) == 0:
                return 0, 0
            first = np.empty(len(linked), bool)  # each slot once (np.unique costs 5 × more here)
            first[0] = True
            np.not_equal(linked[1:], linked[:-1], out=first[1:])
            linked = linked[first]
            return len(linked), int(np.count_nonzero(mask[linked]))
        marks, stamp = self._visited()
        with self._lock:  # faiss's links, in place: a writer's add may move them
            counts: tuple[int, int] = walks.linked(self._links, self._link_starts, int(self._cum[0]),
                                                   int(self._cum[1]), slots, mask, marks, stamp)
        return counts

    def filter_first(self, query: np.ndarray, ef: int, allow: np.ndarray) -> np.ndarray:
        """The beam of ``ef`` slots that ``allow`` (a bool per slot; slots past its end fail) passes, nearest first
        by the graph's approximate distance, from the filter-first walk (:func:`clipseek.walks.filter_first`),
        which walks through passing slots only: fewer only when the walk reaches fewer."""
        from . import walks

        if self._covered == 0 or ef <= 0:
            return np.zeros(0, dtype=np.int64)
        allow = np.ascontiguousarray(allow, dtype=np.bool_)
        visited, stamp = self._visited()
        with self._lock:  # faiss's arrays, in place: a writer's add may move them
            return walks.filter_first(query, self._code_bytes, self._links, self._link_starts, self._cum,
                                      self._entry, self._top, ef, allow, visited, stamp)

    def _visited(self) -> tuple[np.ndarray, int]:
        """This thread's marks of the slots a compiled walk has seen, and the stamp that marks this walk's."""
        scratch = self._scratch
        visited = getattr(scratch, "visited", None)
        if visited is None or len(visited) < self._covered:
            visited = scratch.visited = np.zeros(max(self._covered, 1024), dtype=np.uint32)
            scratch.stamp = 0
        scratch.stamp += 1
        if scratch.stamp >= 2**32:  # the marks wrap: start again from clean ones
            visited[:] = 0
            scratch.stamp = 1
        return visited, scratch.stamp

    def _nearest_of(self, index: Any, query: np.ndarray, width: int, params: Any) -> np.ndarray:
        """The ``width`` slots ``index`` (the graph, or its code array) finds nearest the query, nearest first;
        faiss's own call, without its wrapper's checks (the arrays are made right here)."""
        faiss = self._faiss
        q = np.ascontiguousarray(query, dtype=np.float32)
        distances = np.empty(width, dtype=np.float32)
        keys = np.empty(width, dtype=np.int64)
        _omp_threads(faiss, 1)
        with self._lock:
            index.search_c(1, faiss.swig_ptr(q), width, faiss.swig_ptr(distances), faiss.swig_ptr(keys), params)
        return keys if keys[-1] >= 0 else keys[keys >= 0]

    def _code_rows(self, slots: np.ndarray) -> np.ndarray:
        with self._lock:  # a copy of the rows' code bytes: a writer's add may move faiss's array
            rows: np.ndarray = self._code_bytes[slots]
        return rows

    def neighbours(self, slots: np.ndarray) -> np.ndarray:
        """The slots the graph's bottom layer links the rows at ``slots`` to (covered ones), repeats included."""
        with self._lock:  # copies: a writer's add may move faiss's arrays
            links: np.ndarray = self._links[self._link_starts[slots][:, None] + self._level0]
        return links[links >= 0]

    def scan(self, query: np.ndarray, count: int, allow: np.ndarray) -> np.ndarray:
        """The ``count`` slots of ``allow`` (a bitmap as :meth:`search` takes) nearest by their int8 codes, nearest
        first: faiss's scan of the code array, which checks the bitmap slot by slot (~2.5 ns a slot) and scores the
        passing ones in place."""
        faiss = self._faiss
        width = min(count, self._covered)
        if width <= 0:
            return np.zeros(0, dtype=np.int64)
        allow = np.ascontiguousarray(allow, dtype=np.uint8)
        params = faiss.SearchParameters()
        params.sel = selector = faiss.IDSelectorBitmap(len(allow), faiss.swig_ptr(allow))  # held for the call
        keys = self._nearest_of(self._index.storage, query, width, params)
        del selector
        return keys

    def scan_slots(self, query: np.ndarray, count: int, slots: np.ndarray) -> np.ndarray:
        """The ``count`` of ``slots`` (covered ones) nearest by their int8 codes, in no particular order: the rows at
        the slots alone are read (:func:`clipseek.walks.code_scores`), where :meth:`scan` checks every
        slot's bit (~2.5 ns a slot: 2.5 ms at a million) before it scores the passing ones."""
        from . import walks

        if count >= len(slots):
            return slots
        with self._lock:  # faiss's code array, in place: a writer's add may move it
            scores = walks.code_scores(query, self._code_bytes, slots)
        return slots[np.argpartition(-scores, count - 1)[:count]]

    def codes(self, slots: np.ndarray) -> np.ndarray:
        """The int8 codes of the rows at ``slots``."""
        return (self._code_rows(slots).astype(np.int16) - CODE_OFFSET).astype(np.int8)

    def cosines(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Cosines of ``query`` with the rows at ``slots`` (covered ones), from their codes and residuals: within
        about 1e-4 of the float32 rows' (0 for a zero row, or a zero query)."""
        q = np.asarray(query, dtype=np.float32)
        norm = float(np.dot(q, q)) ** 0.5
        if len(slots) == 0 or norm == 0:
            return np.zeros(len(slots), dtype=np.float32)
        walks = loaded_walks()
        if walks is not None:
            with self._lock:  # faiss's code array, in place: a writer's add may move it
                cos: np.ndarray = walks.cosines(q, self._code_bytes, self._residuals, slots, self.step, RESIDUAL_STEPS)
            return cos
        packed = self._residuals[slots]
        steps = q * np.float32(1.0 / RESIDUAL_STEPS)  # a nibble's weight; the nibbles count from -8
        high = steps[1::2]
        if len(high) < packed.shape[1]:  # an odd dimension: the last byte's high nibble is padding
            high = np.append(high, np.float32(0.0))
        # float32 products (BLAS) of the bytes as they are stored; their offsets are taken off once
        dots: np.ndarray = self._code_rows(slots).astype(np.float32) @ q
        dots += (packed & 15).astype(np.float32) @ steps[0::2]
        dots += (packed >> 4).astype(np.float32) @ high
        offset = (CODE_OFFSET + (RESIDUAL_STEPS // 2) / RESIDUAL_STEPS) * float(q.sum())
        dots -= np.float32(offset)
        dots *= np.float32(1.0 / (127.0 * (self.scale or 1.0) * norm))
        return dots

    def save(self, folder: Path, field: str) -> Path:
        """Write a snapshot atomically, named by the slot count it covers; older snapshots are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            covered = self._covered
            target = folder / f"{field}.{covered}{SUFFIX}"
            tmp = folder / f".{field}.{covered}.tmp"
            self._faiss.write_index(self._index, str(tmp))
            residuals = self._residuals[:covered]
        meta = target.with_suffix(".json")
        residual_path, residual_tmp = target.with_suffix(".r4"), folder / f".{field}.{covered}.r4.tmp"
        residuals.tofile(residual_tmp)
        meta_tmp = folder / f".{field}.{covered}.json.tmp"
        meta_tmp.write_text(json.dumps({"format": SNAPSHOT_FORMAT, "scale": self.scale, "covered": covered,
                                        "crc32": file_crc32(tmp), "residuals_crc32": file_crc32(residual_tmp)}))
        os.replace(meta_tmp, meta)
        os.replace(residual_tmp, residual_path)
        os.replace(tmp, target)
        for old in [*folder.glob(f"{field}.*{SUFFIX}"), *folder.glob(f"{field}.*.json"), *folder.glob(f"{field}.*.r4"),
                    *(p for suffix in LEGACY_SUFFIXES for p in folder.glob(f"{field}.*{suffix}"))]:
            if old not in (target, meta, residual_path):
                old.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, folder: Path, field: str, dim: int, params: HnswParams, *, view: bool = False,
             max_covered: int | None = None) -> AnnIndex | None:
        """The newest readable snapshot covering at most ``max_covered`` slots, or None (caller rebuilds).

        ``view`` memory-maps the codes instead of reading them (shared between processes; read-only)."""
        snapshots = []
        for path in folder.glob(f"{field}.*{SUFFIX}"):
            label = path.name[len(field) + 1: -len(SUFFIX)]
            if label.isdigit() and (max_covered is None or int(label) <= max_covered):
                snapshots.append((int(label), path))
        for covered, path in sorted(snapshots, reverse=True):
            try:  # another format (older clipseek), a torn or damaged file: try an older one, else rebuild
                meta = snapshot_meta(path)
                if meta is None or meta.get("covered") != covered:
                    continue  # a damaged file is never handed to faiss
                index = cls(dim, params, scale=float(meta["scale"]))
                faiss = index._faiss
                width = index._residuals.shape[1]
                residuals: np.ndarray
                if view:
                    loaded = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
                    residuals = np.memmap(path.with_suffix(".r4"), dtype=np.uint8, mode="r").view(np.ndarray)
                else:
                    loaded = faiss.read_index(str(path))
                    residuals = np.fromfile(path.with_suffix(".r4"), dtype=np.uint8)
                if len(residuals) != covered * width:
                    continue
                index._index = loaded  # (read_index gives the subclass; a downcast proxy would not own it)
                index._residuals = residuals.reshape(covered, width)
            except Exception:
                continue
            if (isinstance(index._index, index._faiss.IndexHNSWSQ) and index._index.d == dim
                    and index._index.ntotal == covered):
                index._set_range()  # (a format-4 snapshot's direct signed codes: the same bytes, read as uniform)
                index.is_view, index._covered = view, covered
                index._map_codes()
                return index
        return None


def snapshot_meta(path: Path) -> dict[str, Any] | None:
    """The snapshot's meta when it is of a format this version reads and its files match their checksums; else None."""
    try:
        meta: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
        if meta.get("format") not in READABLE_FORMATS:
            return None
        with ThreadPoolExecutor(2) as pool:  # zlib and file reads release the GIL: the two files at once
            graph_crc, residuals_crc = pool.map(file_crc32, (path, path.with_suffix(".r4")))
        sound = meta.get("crc32") == graph_crc and meta.get("residuals_crc32") == residuals_crc
    except (OSError, ValueError):
        return None
    return meta if sound else None
