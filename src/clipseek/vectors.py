"""One vector field of a collection: its rows, which document owns each, and how a query finds the nearest.

A field's rows live in ``vectors/<field>.f32`` (:class:`clipseek.store.VectorFile`), appended in order; a row's
index is its *slot*. Replacing or removing a document leaves its old slot dead (``doc_of_slot[slot] == -1``);
searches never return dead slots. Nothing here reads SQLite: the collection tells a field which documents own
which slots (at open, from the store, and after each committed write).

Search is Vespa's: the ``k`` (targetHits) nearest live documents, optionally only those a filter allows (the
filter is applied *before* choosing neighbours, so a filter never costs hits that exist). Three plans:

- ``exact``: every candidate scored from its float32 row — when the candidates are few (at most
  ``exact_threshold`` or ``k``) or the query says ``approximate: false``; and for a filter passing less than
  Vespa's approximate-threshold (5 %) where the graph is not built or the compiled walks are not loaded (below),
  as Vespa does.
- ``scan``: a filter passing less than the approximate-threshold, where the graph is built; or a filter that
  follows the vectors (below), when that costs less than a wide walk: every passing slot ranked from the graph's
  int8 code (their rows alone, :meth:`clipseek.hnsw.AnnIndex.scan_slots`; faiss's scan of its code array,
  which checks every slot's bit, before the compiled walks are loaded), the best 4 × targetHits (at least
  targetHits + 64) scored from their float32 rows — exact search's hits and relevance but for near-ties within the
  codes' noise (~1e-3); ``exact`` when that shortlist is all of them.
- ``hnsw`` (:mod:`clipseek.hnsw`): the graph walks with a beam of targetHits + exploreAdditionalHits candidates,
  and its best (2 × targetHits, at least targetHits + 16) are re-scored from the graph's 12-bit codes (int8 + a
  4-bit residual: the cosine to about 1e-4), so an HNSW search never reads the float32 rows, which stay on disk.
  A filter (and the dead slots) is applied inside the graph walk. Below FILTER_FIRST_THRESHOLD the walk goes
  through passing slots only (the filter-first walk of :mod:`clipseek.walks`, ACORN-1, as Vespa's): a neighbour
  that fails is replaced by its own neighbours that pass. Otherwise the plain walk goes through every slot and
  keeps only passing ones in its answer: a filter passing a share p of the slots needs a view of about ef / p for
  ef that pass (Vespa's walk until it holds ef that pass), twice that below FILTER_FIRST_THRESHOLD. Both are sized
  for a filter independent of the vectors. One that follows them near the query (the documents of one side of the
  collection, away from it) such walks miss, and the beam's links tell: they pass such a filter more often than
  chance allows. Then the plain walk with a view of WIDE × ef / p, or a scan of the passing slots when that costs
  less.

The walks are numba's compiled ones once a process has loaded them (:func:`clipseek.hnsw.load_walks`: a server
as it starts, any other process at its WARM_AFTER-th graph search); before that, and where numba is missing,
faiss's own walk (the plain walk's algorithm) and scan run, and no filter-first walk.

Publication order, which concurrent searches rely on: a new slot's norm and row are in place before any
document maps to it, and a search works on one snapshot of ``doc_of_slot`` (replaced, never grown in place).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import store
from .errors import CollectionDamagedError, VectorError
from .hnsw import AnnIndex, HnswParams, closeness, count_search, loaded_walks

APPROXIMATE_THRESHOLD = 0.05  # Vespa's default approximate-threshold: below it, exact search
#: Below this share of passing slots a filtered walk's view is doubled: ef / p × 2 (at 10 % of 50k × 512, an ad hoc
#: check, recall@10 went from 0.971 to 0.988 against ef / p; bench/ann.py's data at 50k, 300 queries: 0.988 -> 0.996).
#: A narrower view, a third of ef / p, held recall 0.999 at 200k but fell to 0.954 at 50k, where a cluster holds ~5
#: passing documents and the nearest lie in clusters such a walk does not reach; it is not used. Vespa decides its
#: filtered strategies by the same hit ratio (its filter-first-threshold, 0 by default, turns on ACORN-1).
FILTER_FIRST_THRESHOLD = 0.3
#: Whether filtered walks below FILTER_FIRST_THRESHOLD go through passing slots only (the filter-first walk of
#: :mod:`clipseek.walks`, once the compiled walks are loaded: :func:`clipseek.hnsw.loaded_walks`), rather than
#: through every slot with a view of 2 × ef / p.
FILTER_FIRST = True
#: Below this share the filter-first walk's beam is widened by (FILTER_FIRST_FULL / p)²: passing slots two hops
#: apart get fewer, and its recall falls (200k × 512, bench/ann.py's data, 200 queries, beam 44, an ad hoc check:
#: recall@10 0.97-0.98 at 5 % with the beam as it is, 0.989-0.990 with it doubled, 0.995 with it × 4; 0.997-0.999
#: at 7-10 % either way).
FILTER_FIRST_FULL = 0.1
#: Below this share of the slots a filter's slots are listed by :func:`clipseek.walks.listed`, above it by numpy
#: (where they are many, numpy's listing is the faster).
LISTED_SHARE = 0.25
GATHER_BYTES = 1 << 20  # scattered rows are scored this many bytes at a time
#: A filter "follows the vectors" near a query when the slots the beam links to pass it more often than an independent
#: filter's could by chance: by this many standard deviations of a binomial count at the filter's share. (200k × 512,
#: an ad hoc check of 300 queries a share: an independent filter's links reached 3.6 at most at 5-70 %; a filter
#: passing the documents of one side of the collection went past 4 for 100 % of queries at 5 %, 82 % at 30 %, 52 % at
#: 50 %.) A filter passing more than FOLLOWS_CHECKED of the slots is not checked: the walk sees enough of them.
FOLLOWS_Z = 4.0
#: The beam's best whose links are the check's sample (~1,200 distinct slots). The whole beam's at a beam of 128 cost
#: ~105 µs a query, 13 % of its walk (ad hoc, 200k × 512, a 50 % filter; ~35 µs at a beam of 48). Fewer weaken it:
#: with 32, bench/filters.py's one-sided filters kept recall 0.976 / 0.971 at 30 / 50 % (0.982 / 0.979 with 48).
FOLLOWS_SAMPLE = 48
FOLLOWS_CHECKED = 0.75
#: The view for a filter that follows the vectors: this many × ef / p (200k × 512, one passing the documents to one
#: side of the collection, an ad hoc check: recall@10 0.91, 0.96 at 10 % with 1 ×, 2 ×; 0.90, 0.98, 0.99 at 30 % with
#: 1 ×, 3 ×, 6 ×), or a scan of the filter's slots when that costs less.
WIDE = 4
#: A scan costs about as much as a walk with a view this many times fewer slots than the rows it scores, plus a pass
#: over the bitmap of every slot at 1/80 of a row each (200k × 512, ad hoc: ~0.2 µs a scattered row, ~2.5 ns a slot,
#: ~3.5 µs a slot of a walk's view); a little in the scan's favour: it misses nothing, the walk may.
SCAN_ROWS_PER_VIEW = 20
SCAN_SLOTS_PER_ROW = 80
#: The beam's best by the graph's distance that are re-scored: 2 × targetHits, and at least targetHits + this.
RESCORE_EXTRA = 16
#: A scan scores the best by code from float32: this many × targetHits, and at least targetHits + SCAN_EXTRA (as
#: exact search, it has no beam: exploreAdditionalHits does not count).
SCAN_SHORTLIST = 4
SCAN_EXTRA = 64


@dataclass(frozen=True)
class FieldInfo:
    name: str
    model: str
    dim: int


@dataclass(frozen=True)
class Neighbors:
    """The nearest documents, best first (closeness, then document id): ids, closeness and cosine."""

    docs: np.ndarray
    closeness: np.ndarray
    cosine: np.ndarray
    plan: str  # "exact", "scan" or "hnsw"


def _sizes(k: int, explore: int, n_candidates: int, rows: int) -> tuple[int, int, int, float, int]:
    """A walk's sizes: the beam ``ef``; ``best``, those of it re-scored; ``want``, as Vespa's walk, how many that
    pass (live, in the filter) it must hold; the share of the ``rows`` slots that pass; and ``view``, ~ef / share,
    the slots in view for ef that pass."""
    ef = k + explore
    best = min(ef, max(2 * k, k + RESCORE_EXTRA))
    share = max(n_candidates, 1) / max(rows, 1)
    return ef, best, min(best, n_candidates), share, math.ceil(ef / share)


class SlotFilter:
    """A filter in slot space: which slots pass (live ones of allowed documents), as a mask; the slots and the
    graph walk's bitmap are made from it when first needed, then kept with it."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.count = int(np.count_nonzero(mask))
        self._slots: np.ndarray | None = None
        self._bitmap: tuple[int, np.ndarray] | None = None

    def slots(self) -> np.ndarray:
        if self._slots is None:
            walks = loaded_walks()
            if walks is not None and self.count < LISTED_SHARE * len(self.mask):  # few: the compiled listing
                self._slots = walks.listed(self.mask, self.count)
            else:
                self._slots = np.flatnonzero(self.mask)
        return self._slots

    def bitmap(self, rows: int) -> np.ndarray:
        """The first ``rows`` slots' bits for the graph's selector (``np.packbits``, little bit order)."""
        kept = self._bitmap
        if kept is None or kept[0] != rows:
            kept = (rows, np.packbits(self.mask[:rows], bitorder="little"))
            self._bitmap = kept
        return kept[1]


def inverse(norms: np.ndarray) -> np.ndarray:
    """1 / norm, and 0 for a zero row (whose cosine with anything is then 0)."""
    out = np.zeros(len(norms), np.float32)
    np.divide(1.0, norms, out=out, where=norms > 0)
    return out


class VectorIndex:
    """A field's vector rows, slot ↔ document maps, inverse norms and (built on first need) its HNSW graph."""

    def __init__(self, folder: Path, info: FieldInfo, next_slot: int, hnsw: HnswParams) -> None:
        self.info = info
        self.hnsw = hnsw
        self.folder = folder
        self.vectors = store.VectorFile(folder / "vectors" / f"{info.name}.f32", info.dim, next_slot)
        self.doc_of_slot = np.full(next_slot, -1, dtype=np.int64)
        self.slot_of_doc = np.full(0, -1, dtype=np.int64)  # by internal document id; -1: none in this field
        self.inv_norms = np.zeros(0, dtype=np.float32)  # 1 / |row| (0 for a zero row): cosines are products
        self.graph: AnnIndex | None = None
        self.verified = 0  # rows whose checksum was checked (and whose norms were computed) from the data
        self._live: tuple[int, int, np.ndarray | None] = (-1, -1, None)  # (version, rows, bitmap)
        # the last filter in slot space, by the identity of its (read-only, kept) document set
        self._filter: tuple[np.ndarray, int, int, SlotFilter] | None = None  # (documents, version, rows, filter)
        self.version = 0  # bumped whenever a slot dies (doc_of_slot changes in place)
        # d when slot s holds document d + s for every slot (documents fed once, in order, none removed: a fresh
        # collection), else None; kept as doc_of_slot changes. Set to None before doc_of_slot stops being in order.
        self.first_doc: int | None = 0 if next_slot == 0 else None
        self._build_lock = threading.Lock()
        self.live = 0  # live slots: documents with a vector in this field

    @property
    def next_slot(self) -> int:
        return self.vectors.rows


    # ---- the document ↔ slot maps ------------------------------------------------------------------------
    def map_slots(self, docs: np.ndarray, slots: np.ndarray) -> None:
        """Set the maps from the store's (document, slot) pairs, at open."""
        self.doc_of_slot[slots] = docs
        rows = len(self.doc_of_slot)
        start = int(self.doc_of_slot[0]) if rows else 0
        in_order = start >= 0 and np.array_equal(self.doc_of_slot, np.arange(start, start + rows))
        self.first_doc = start if in_order else None
        self.live = len(docs)
        self.slot_of_doc = np.full(int(docs.max()) + 1 if len(docs) else 0, -1, dtype=np.int64)
        self.slot_of_doc[docs] = slots

    def slot(self, doc: int) -> int | None:
        table = self.slot_of_doc
        slot = int(table[doc]) if 0 <= doc < len(table) else -1
        return slot if slot >= 0 else None

    def row(self, doc: int) -> np.ndarray | None:
        """A copy of the document's vector, or None when it has none in this field."""
        slot = self.slot(doc)
        return None if slot is None else np.array(self.vectors.array()[slot])

    def kill(self, slots: np.ndarray) -> None:
        """Slots whose documents were removed or got another vector: never returned again."""
        self.first_doc = None
        table = self.slot_of_doc
        for s, d in zip(slots.tolist(), self.doc_of_slot[slots].tolist()):
            if d >= 0:
                self.live -= 1
                if d < len(table) and table[d] == s:
                    table[d] = -1
        self.doc_of_slot[slots] = -1
        self.version += 1

    def publish(self, slots: np.ndarray, owners: np.ndarray, norms: np.ndarray) -> None:
        """New rows (written and committed) and their owners become searchable: norms and rows first, then the
        maps, so a concurrent search never sees a slot without its vector."""
        self.inv_norms = np.concatenate([self.inv_norms[: slots[0]], inverse(norms)])
        self.vectors.commit(int(slots[-1]) + 1)
        self.verified = self.vectors.rows  # written by this process, checksummed as written
        first = self.first_doc if len(self.doc_of_slot) else int(owners[0]) - int(slots[0])
        if first is not None and not (first >= 0 and np.array_equal(owners, slots + first)):
            first = None
        if first is None:
            self.first_doc = None  # before the new map, which a search may read with it
        doc_of_slot = np.concatenate([self.doc_of_slot, np.full(len(slots), -1, np.int64)])
        doc_of_slot[slots] = owners
        self.doc_of_slot = doc_of_slot
        self.first_doc = first
        need = int(owners.max()) + 1
        table = self.slot_of_doc
        if need > len(table):
            table = np.concatenate([table, np.full(max(need - len(table), len(table) // 2), -1, np.int64)])
        table[owners] = slots
        self.slot_of_doc = table
        self.live += len(slots)
        if self.graph is not None:
            with self.vectors.scan() as rows:  # not the long-lived map: a writer's memory stays what queries touch
                self.graph.extend(rows, self.next_slot)

    # ---- opening ------------------------------------------------------------------------------------------
    def check_rows(self, old: VectorIndex | None) -> tuple[int, tuple[np.ndarray, np.ndarray, int] | list[str]]:
        """Check the rows not verified yet (all at open; a reader's reload only those after ``old``'s): (the first
        row checked, then their norms from the data, the slots failing their checksum and how many rows had one;
        or the problems of a truncated file). File work only, so it runs while the document maps load."""
        start = 0
        if old is not None and old.info == self.info and old.verified <= self.next_slot:
            start = old.verified
        try:
            return start, self.vectors.verify(start)
        except CollectionDamagedError as exc:
            return start, [f"field {self.info.name}: {p}" for p in exc.problems]

    def verify(self, old: VectorIndex | None, *, readonly: bool,
               checked: tuple[int, tuple[np.ndarray, np.ndarray, int] | list[str]]) -> list[str]:
        """Take :meth:`check_rows`'s answer once the maps are set: sets the norms from the data; returns the
        problems (garbled rows that documents use, a truncated file). A norm file that disagrees with the rows is
        derived data: corrected, on disk too when writing."""
        start, result = checked
        if isinstance(result, list):
            return result
        norms, bad, covered = result
        if start:
            assert old is not None
            self.inv_norms = old.inv_norms[:start]
        live_bad = [int(s) for s in bad if self.doc_of_slot[s] >= 0]
        if live_bad:
            return [f"field {self.info.name}: {len(live_bad)} vector rows fail their checksum in "
                    f"{self.vectors.path.name} (slots {', '.join(map(str, live_bad[:5]))}"
                    f"{', …' if len(live_bad) > 5 else ''})"]
        if not readonly and (covered < len(norms)  # a reader uses the norms computed here, never the file
                             or not np.allclose(self.vectors.norms(start), norms, rtol=1e-5, atol=1e-7)):
            self.vectors.rewrite_derived(start, norms)
        self.inv_norms = np.concatenate([self.inv_norms, inverse(norms)])
        self.verified = self.next_slot
        return []

    def load_graph(self, old: VectorIndex | None, *, readonly: bool) -> None:
        """Take over ``old``'s graph, or the newest snapshot (memory-mapped for a reader), and add the slots
        committed since; without either, the graph is built by the first search that needs it."""
        if old is not None and old.graph is not None and not old.graph.is_view and len(old.graph) <= self.next_slot:
            self.graph = old.graph
        else:  # the newest snapshot; a stale memory-mapped one is read in full so it can catch up
            ann_dir, name, dim = self.folder / "ann", self.info.name, self.info.dim
            self.graph = AnnIndex.load(ann_dir, name, dim, self.hnsw, view=readonly, max_covered=self.next_slot)
            if self.graph is not None and self.graph.is_view and len(self.graph) < self.next_slot:
                self.graph = AnnIndex.load(ann_dir, name, dim, self.hnsw, max_covered=self.next_slot)
        if self.graph is not None and len(self.graph) < self.next_slot:  # slots committed after the snapshot
            with self.vectors.scan() as rows:  # (or by another process) join the graph
                self.graph.extend(rows, self.next_slot)

    def save_graph(self) -> None:
        if self.graph is not None and not self.graph.is_view:
            self.graph.save(self.folder / "ann", self.info.name)

    # ---- searching ----------------------------------------------------------------------------------------
    def check_query(self, value: Any) -> np.ndarray:
        """``value`` as a query vector for this field, or a VectorError saying what is wrong with it."""
        try:
            arr = np.asarray(value, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise VectorError(f"query tensor for {self.info.name} must be a list of numbers ({exc})") from exc
        if arr.shape[0] != self.info.dim:
            raise VectorError(f"query tensor has {arr.shape[0]} values but field {self.info.name} holds "
                              f"{self.info.dim}-dim vectors of model {self.info.model}")
        top = float(np.abs(arr).max())  # NaN and ±inf carry through
        if not math.isfinite(top):
            raise VectorError("query tensor contains NaN or infinity")
        if top and not 2.0**-40 < top < 2.0**40:  # its squares would leave float32's range: scaled by a power of
            arr = np.ldexp(arr, -math.frexp(top)[1])  # two (exact), as the cosine does not depend on length
        return arr

    def cosines(self, q: np.ndarray, slots: np.ndarray | None = None, rows: int = 0) -> np.ndarray:
        """Cosines of ``q`` with the rows at ``slots``, or with the first ``rows`` rows (0 for zero vectors)."""
        qq = float(q @ q)
        scale = np.float32(1.0 / math.sqrt(qq) if qq > 0 else 0.0)
        if slots is None:
            cos: np.ndarray = (self.vectors.array()[:rows] @ q) * self.inv_norms[:rows] * scale
            return cos
        # scattered rows, gathered a cache-sized chunk at a time and scored while there, not copied whole into
        # fresh memory first (200k × 512, exact search p50, an ad hoc check: a 1 % filter 1.3 -> 0.3 ms, 10 % 14 -> 6)
        vectors = self.vectors.array()
        cos = np.empty(len(slots), np.float32)
        step = max(1, GATHER_BYTES // (4 * self.info.dim))
        for start in range(0, len(slots), step):
            np.dot(vectors[slots[start: start + step]], q, out=cos[start: start + step])
        cos *= self.inv_norms[slots]
        cos *= scale
        return cos

    def slots_of(self, docs: np.ndarray, rows: int) -> np.ndarray:
        """The live slots (below ``rows``) of these documents, for those that have one."""
        table = self.slot_of_doc
        docs = docs[docs < len(table)]
        slots: np.ndarray = table[docs]
        return slots[(slots >= 0) & (slots < rows)]

    def slot_filter(self, allowed: np.ndarray, rows: int) -> SlotFilter:
        """The live slots (below ``rows``) of the documents ``allowed`` holds (sorted ids, or a mask by document
        id); the same answer again while neither the set (a kept, read-only one) nor the slots changed."""
        kept = self._filter
        if kept is not None and kept[0] is allowed and kept[1] == self.version and kept[2] == rows:
            return kept[3]
        doc_of_slot = self.doc_of_slot[:rows]
        if allowed.dtype == bool:  # a mask: one pass in slot order, no list of ids
            first = self.first_doc  # read after the map: it is None before a map that is not in order
            if first is not None:  # slot s holds document first + s: the mask's own run of entries, as it is
                mask = allowed[first: first + rows]
                if len(mask) < rows:  # documents past the mask's end are not allowed
                    mask = np.concatenate([mask, np.zeros(rows - len(mask), bool)])
            else:
                by_doc = np.zeros(len(self.slot_of_doc) + 1, bool)  # the last entry answers a dead slot's -1
                n = min(len(allowed), len(by_doc) - 1)
                by_doc[:n] = allowed[:n]
                mask = np.take(by_doc, doc_of_slot)
        else:
            mask = np.zeros(rows, bool)
            mask[self.slots_of(allowed, rows)] = True
        found = SlotFilter(mask)
        if not allowed.flags.writeable:  # only a kept set can come again
            self._filter = (allowed, self.version, rows, found)
        return found

    def nearest(self, q: np.ndarray, k: int, *, explore: int = 0, approximate: bool | None = None,
                allowed: np.ndarray | None = None, exact_threshold: int = 4096) -> Neighbors:
        """The ``k`` nearest live documents (of ``allowed`` when given: a document set of :mod:`clipseek.matching`,
        sorted ids or a mask by document id), best first."""
        doc_of_slot = self.doc_of_slot  # one consistent snapshot for this search
        rows = len(doc_of_slot)
        filtered = None if allowed is None else self.slot_filter(allowed, rows)
        n_candidates = self.live if filtered is None else filtered.count
        if approximate is False or n_candidates <= max(exact_threshold, k):
            plan = "exact"
        elif filtered is not None and n_candidates < APPROXIMATE_THRESHOLD * self.live:
            # Vespa's exact search below its approximate-threshold; the same hits and relevance from a scan of the
            # filter's int8 codes and float32 rows for the best of them, where the graph is there to lend its codes
            count_search()
            plan = "scan" if loaded_walks() is not None and self.graph is not None else "exact"
        else:
            count_search()
            plan = "hnsw"
            if filtered is None:  # the common search: walk, re-scoring and order in one compiled call, when loaded
                found = self._nearest_compiled(doc_of_slot, q, k, explore, n_candidates)
                if found is not None:
                    return found
            beam = self._beam(doc_of_slot, q, k, explore, filtered, n_candidates)
            if beam is None:
                plan = "scan"
            else:
                graph = self.graph
                assert graph is not None
                if len(beam) and int(beam.max()) < len(graph):  # re-scoring and order in one compiled call
                    ranked = graph.ranked(q, beam, doc_of_slot, k)
                    if ranked is not None:
                        return Neighbors(*ranked, plan)
                slots, cos = beam, self._rescore(q, beam)
        if plan == "scan":
            assert filtered is not None
            slots = self._scan(q, filtered, k)
            cos = self.cosines(q, slots)
            if len(slots) == filtered.count:  # few enough that every one was scored from its row
                plan = "exact"
        elif plan == "exact":
            if filtered is None:  # score every row in place (no gather), then drop dead slots
                cos = self.cosines(q, rows=rows)
                live = doc_of_slot >= 0
                slots = np.flatnonzero(live)
                if len(slots) < rows:
                    cos = cos[live]
            else:
                slots = filtered.slots()
                cos = self.cosines(q, slots)
        if len(slots) == 0 or k == 0:
            empty = np.zeros(0)
            return Neighbors(empty.astype(np.int64), empty, empty, plan)
        if len(cos) > 8 * k:  # the k best (any of those tied at the k-th) of many, before sorting
            part = np.argpartition(-cos, k - 1)[:k]
            cos, slots = cos[part], slots[part]
        docs = doc_of_slot[slots]
        order = np.lexsort((docs, -cos))[:k]  # relevance (closeness is strictly increasing in cos), then document
        cos = cos[order]
        return Neighbors(docs[order], closeness(cos), cos, plan)

    def _nearest_compiled(self, doc_of_slot: np.ndarray, q: np.ndarray, k: int, explore: int,
                          n_candidates: int) -> Neighbors | None:
        """An unfiltered HNSW search as :meth:`_beam` and :meth:`_rescore` make it, in one compiled call; None when
        the compiled walks are not loaded, or the walk found fewer live slots than it needs (the caller's loop then
        widens it)."""
        graph = self._graph()
        rows = min(len(graph), len(doc_of_slot))
        ef, best, want, share, view = _sizes(k, explore, n_candidates, rows)  # dead slots are walked through
        walk = 2 * view if share < FILTER_FIRST_THRESHOLD else view
        found = graph.nearest(q, k, best, ef, self.live_bitmap(rows), walk, doc_of_slot[:rows])
        if found is None or found[3] < want:
            return None
        docs, rel, cos, _ = found
        return Neighbors(docs, rel, cos, "hnsw")

    def _rescore(self, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Cosines of the beam from the graph's codes; a slot the graph does not cover yet (published a moment
        ago by a concurrent write) from its float32 row."""
        graph = self.graph
        assert graph is not None
        if len(slots) == 0 or int(slots.max()) < len(graph):
            return graph.cosines(q, slots)
        covered = slots < len(graph)
        cos = np.empty(len(slots), dtype=np.float32)
        cos[covered] = graph.cosines(q, slots[covered])
        cos[~covered] = self.cosines(q, slots[~covered])
        return cos

    def _graph(self) -> AnnIndex:
        with self._build_lock:  # one build; the collection's writer adds later rows as it publishes them
            if self.graph is None:
                graph = AnnIndex(self.info.dim, self.hnsw)
                with self.vectors.scan() as rows:
                    graph.extend(rows, self.next_slot)
                self.graph = graph
            return self.graph

    def _scan(self, q: np.ndarray, filtered: SlotFilter, k: int) -> np.ndarray:
        """Of the filter's slots, the shortlist of the ``k`` nearest by their int8 codes, and any the graph does not
        cover yet (published a moment ago by a concurrent write): the ones to score from the float32 rows."""
        graph = self.graph
        assert graph is not None
        slots = filtered.slots()
        covered = int(np.searchsorted(slots, len(graph)))
        short = max(SCAN_SHORTLIST * k, k + SCAN_EXTRA)
        if covered <= short:
            return slots
        if loaded_walks() is not None:  # the filter's rows alone
            best = np.sort(graph.scan_slots(q, short, slots[:covered]))
        else:  # faiss's scan: every slot's bit, then the passing rows
            best = np.sort(graph.scan(q, short, filtered.bitmap(min(len(graph), len(filtered.mask)))))
        return np.concatenate([best, slots[covered:]])  # in slot order: the rows read in file order

    def _beam(self, doc_of_slot: np.ndarray, q: np.ndarray, k: int, explore: int, filtered: SlotFilter | None,
              n_candidates: int) -> np.ndarray | None:
        """The candidate slots to re-score: the beam's best (live ones, and of ``filtered``, the filter's slots, when
        given); None when a scan of the filter's slots costs less than the wide walk a filter that follows the
        vectors here needs."""
        graph = self._graph()
        rows = min(len(graph), len(doc_of_slot))
        ef, best, want, share, view = _sizes(k, explore, n_candidates, rows)
        walk = 2 * view if share < FILTER_FIRST_THRESHOLD else view
        if filtered is None:
            allow = self.live_bitmap(rows)
        else:  # the filter's live slots: the graph is walked through the others, which are never returned
            if share < FOLLOWS_CHECKED:  # first the walk a filter independent of the vectors needs
                if share < FILTER_FIRST_THRESHOLD and FILTER_FIRST and loaded_walks() is not None:  # passing only
                    beam = ef if share >= FILTER_FIRST_FULL else math.ceil(ef * (FILTER_FIRST_FULL / share) ** 2)
                    beam = min(beam, max(ef, n_candidates))  # (a share this small counts many dead slots)
                    keys = graph.filter_first(q, beam, filtered.mask[:rows])
                else:  # through every slot, in the view a share p needs
                    keys = graph.search(q, ef, ef=ef, allow=filtered.bitmap(rows), walk=walk)
                keys = keys[keys < rows]  # the whole beam: its links tell whether the filter follows the vectors
                if len(keys) >= want and not self._follows(graph, filtered.mask, keys, share):
                    return keys[:best]
                walk = max(walk, WIDE * view)  # the filter follows the vectors here (or passes few near the query)
                if n_candidates + rows / SCAN_SLOTS_PER_ROW <= SCAN_ROWS_PER_VIEW * walk:
                    return None  # a scan of its slots costs less than the wide walk
            allow = filtered.bitmap(rows)
        while True:
            keys = graph.search(q, best, ef=ef, allow=allow, walk=walk)
            keys = keys[keys < rows]
            if len(keys) >= want:
                return keys
            if walk >= rows:  # the graph cannot reach them all: every candidate, scored exactly
                return np.flatnonzero(doc_of_slot >= 0) if filtered is None else filtered.slots()
            walk = min(rows, 2 * walk)  # the walk found too few that pass: widen its view

    @staticmethod
    def _follows(graph: AnnIndex, mask: np.ndarray, keys: np.ndarray, share: float) -> bool:
        """Whether a filter follows the vectors near the query: the slots the beam links to pass it more often than
        slots at large, beyond chance. For a filter independent of the vectors they are a sample of the slots, and
        pass at its share; for one that passes the documents to one side of the collection, at 1.6-4 × its share
        (200k × 512, 5-30 %)."""
        n, passing = graph.linked(keys[:FOLLOWS_SAMPLE], mask)
        return n > 0 and passing - n * share > FOLLOWS_Z * math.sqrt(n * share * (1 - share))

    def live_bitmap(self, rows: int) -> np.ndarray | None:
        """Bitmap of the live slots among the first ``rows`` (for the graph's selector); None when all live."""
        version, cached_rows, bitmap = self._live
        if version != self.version or cached_rows != rows:
            live = self.doc_of_slot[:rows] >= 0
            bitmap = None if live.all() else np.packbits(live, bitorder="little")
            self._live = (self.version, rows, bitmap)
        return bitmap
