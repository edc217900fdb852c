"""The filter-first walk (ACORN-1) over a field's HNSW graph: a filtered search that walks only the slots a filter
passes, for filters passing a small share of the documents.

faiss's filtered walk (:meth:`clipseek.hnsw.AnnIndex.search` with a bitmap) goes *through* the slots the filter
fails and keeps them in its view, so a filter passing a share ``p`` needs a view of about ``beam / p``: at 10 %,
10-15 × the unfiltered search's time. ACORN-1 (Patel et al., "ACORN: Performant and Predicate-Agnostic Search Over
Vector Embeddings and Structured Data", SIGMOD 2024; Vespa turns it on with ``filter-first-threshold``) walks the
bottom layer through passing slots only: expanding a slot, a neighbour that fails the filter is replaced by that
neighbour's own neighbours that pass (two hops), so the beam and the candidate queue hold passing slots alone and
the walk costs about what an unfiltered one does (2-3 × at 10 %, bench/acorn.py).

Its known weakness, which :mod:`clipseek.vectors` guards against: a filter that *follows* the vectors (the
documents of one side of the collection) leaves the two-hop neighbourhoods near the query with few passing slots,
and the walk settles on passing documents that are not the nearest. The caller checks the beam's links for that
and turns to a wide walk or a scan of the filter's documents.

The walk is compiled with numba (a JIT compiler for numeric Python: a walk in numpy costs microseconds a hop, and
faiss's Python API offers no such walk over an existing graph). It is compiled on first use and cached on disk
(numba's cache, beside this module or in the user's cache folder), and only where numba is installed; elsewhere
filtered searches take faiss's walk (:data:`clipseek.vectors.FILTER_FIRST`, which asks without importing numba).
The walk ranks by the graph's int8 codes only; the caller re-scores the best as every HNSW search does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .hnsw import CODE_OFFSET  # faiss stores an int8 code c as the byte c + CODE_OFFSET

try:  # the filter-first walk is compiled by numba where it is installed
    import numba

    HAVE_NUMBA = True
except ImportError:  # numba installs with clipseek where it has wheels
    HAVE_NUMBA = False

if HAVE_NUMBA:
    njit = numba.njit

    @njit(inline="always", fastmath=True)
    def dot(codes: np.ndarray, i: int, q: np.ndarray) -> Any:
        s = np.float32(0.0)
        for j in range(codes.shape[1]):
            s += np.float32(codes[i, j]) * q[j]
        return s

    @njit(inline="always")
    def push(keys: np.ndarray, ids: np.ndarray, n: int, key: Any, v: int) -> int:
        """Onto a min-heap of ``n`` entries; the new count."""
        i = n
        keys[i], ids[i] = key, v
        while i > 0:
            parent = (i - 1) >> 1
            if keys[parent] <= keys[i]:
                break
            keys[parent], keys[i] = keys[i], keys[parent]
            ids[parent], ids[i] = ids[i], ids[parent]
            i = parent
        return n + 1

    @njit(inline="always")
    def pop(keys: np.ndarray, ids: np.ndarray, n: int) -> int:
        """Drop a min-heap's root; the new count."""
        n -= 1
        keys[0], ids[0] = keys[n], ids[n]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and keys[c + 1] < keys[c]:
                c += 1
            if keys[i] <= keys[c]:
                break
            keys[c], keys[i] = keys[i], keys[c]
            ids[c], ids[i] = ids[i], ids[c]
            i = c
        return n

    @njit(inline="always")
    def consider(v: int, d: Any, ef: int, cand_k: np.ndarray, cand_i: np.ndarray, nc: int, res_k: np.ndarray,
                 res_i: np.ndarray, nr: int) -> tuple[int, int]:
        """A passing slot at similarity ``d``: into the candidates and the beam when the beam has room or ``d``
        beats its worst; the two new counts."""
        if nr < ef or d > res_k[0]:
            if nc < len(cand_k):
                nc = push(cand_k, cand_i, nc, -d, v)
            nr = push(res_k, res_i, nr, d, v)
            if nr > ef:
                nr = pop(res_k, res_i, nr)
        return nc, nr

    @njit(inline="always")
    def descend(q: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray, entry: int,
                top_level: int, offset: Any) -> tuple[int, Any]:
        """Greedy descent through the upper layers, as faiss's walk: the bottom layer's entry and its score."""
        rows = codes.shape[0]
        cur = entry
        best = dot(codes, cur, q) - offset
        for level in range(top_level, 0, -1):
            moved = True
            while moved:
                moved = False
                for p in range(starts[cur] + cum[level], starts[cur] + cum[level + 1]):
                    v = links[p]
                    if v < 0:
                        break
                    if v >= rows:
                        continue
                    d = dot(codes, v, q) - offset
                    if d > best:
                        best, cur, moved = d, v, True
        return cur, best

    @njit(nogil=True, fastmath=True, cache=True)
    def _walk(q: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray, entry: int,
             top_level: int, ef: int, allow: np.ndarray, visited: np.ndarray, stamp: np.uint32) -> np.ndarray:
        """The beam of ``ef`` passing slots, nearest first by the codes' inner product with ``q``."""
        dim = codes.shape[1]
        rows, allowed = codes.shape[0], allow.shape[0]
        qsum = np.float32(0.0)
        for j in range(dim):
            qsum += q[j]
        offset = np.float32(CODE_OFFSET) * qsum  # the bytes are code + 128
        cur, best = descend(q, codes, links, starts, cum, entry, top_level, offset)
        cap = 64 * ef + 4096
        cand_k, cand_i = np.empty(cap, np.float32), np.empty(cap, np.int64)
        res_k, res_i = np.empty(ef + 1, np.float32), np.empty(ef + 1, np.int64)
        nc = push(cand_k, cand_i, 0, -best, cur)  # the entry leads the walk, in the beam only when it passes
        nr = 0
        visited[cur] = stamp
        if cur < allowed and allow[cur]:
            nr = push(res_k, res_i, 0, best, cur)
        lo, hi = cum[0], cum[1]
        degree = hi - lo  # ACORN-1's limit: as many passing neighbours as a node has links (half: recall 0.97 at 5 %)
        while nc > 0:
            c = cand_i[0]
            if nr >= ef and -cand_k[0] < res_k[0]:
                break
            nc = pop(cand_k, cand_i, nc)
            found = 0  # passing neighbours taken from this slot: at most a bottom-layer node's links
            for p in range(starts[c] + lo, starts[c] + hi):  # first the neighbours that pass
                v = links[p]
                if v < 0:
                    break
                if v >= allowed or not allow[v]:
                    continue
                found += 1
                if visited[v] == stamp:
                    continue
                visited[v] = stamp
                nc, nr = consider(v, dot(codes, v, q) - offset, ef, cand_k, cand_i, nc, res_k, res_i, nr)
            for p in range(starts[c] + lo, starts[c] + hi):  # then, in place of those that fail, their own
                if found >= degree:
                    break
                v = links[p]
                if v < 0:
                    break
                if (v < allowed and allow[v]) or v >= rows or visited[v] == stamp:
                    continue
                visited[v] = stamp
                for p2 in range(starts[v] + lo, starts[v] + hi):
                    u = links[p2]
                    if u < 0 or found >= degree:
                        break
                    if u >= allowed or not allow[u] or visited[u] == stamp:
                        continue
                    visited[u] = stamp
                    found += 1
                    nc, nr = consider(u, dot(codes, u, q) - offset, ef, cand_k, cand_i, nc, res_k, res_i, nr)
        order = np.argsort(-res_k[:nr], kind="mergesort")
        return res_i[:nr][order]

    @njit(nogil=True, fastmath=True, cache=True)
    def _scores(q: np.ndarray, codes: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The codes' inner product with ``q`` at ``slots`` (less the same constant for every slot)."""
        out = np.empty(len(slots), np.float32)
        for t in range(len(slots)):
            out[t] = dot(codes, slots[t], q)
        return out


def walk(query: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray, entry: int,
         top_level: int, ef: int, allow: np.ndarray, visited: np.ndarray, stamp: int) -> np.ndarray:
    """The ``ef`` slots ``allow`` passes (a bool per slot; slots past its end fail) that the filter-first walk
    finds nearest ``query``, nearest first by the int8 codes. ``codes`` (the stored bytes, one row a slot),
    ``links``, ``starts`` and ``cum`` are faiss's arrays as :class:`clipseek.hnsw.AnnIndex` maps them; ``visited``
    a scratch array of at least one entry a slot, none equal to ``stamp`` (the caller's count of walks)."""
    if not HAVE_NUMBA:
        raise RuntimeError("the filter-first walk needs numba (pip install numba)")
    q = np.ascontiguousarray(query, dtype=np.float32)
    found: np.ndarray = _walk(q, codes, links, starts, cum, entry, top_level, ef, allow, visited, np.uint32(stamp))
    return found


def code_scores(query: np.ndarray, codes: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Scores that rank ``slots`` as the int8 codes' inner product with ``query`` does (each less the same
    constant): the rows at the slots only, read where they lie, without faiss's pass over every slot's bit."""
    if not HAVE_NUMBA:
        raise RuntimeError("the code scan needs numba (pip install numba)")
    q = np.ascontiguousarray(query, dtype=np.float32)
    scores: np.ndarray = _scores(q, codes, np.ascontiguousarray(slots, dtype=np.int64))
    return scores
