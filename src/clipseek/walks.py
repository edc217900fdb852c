"""The HNSW graph's walks, compiled by numba: the plain walk every unfiltered (and widely filtered) search takes,
and the filter-first walk (ACORN-1) for filters passing a small share of the documents. Both read faiss's codes and
links in place (:class:`clipseek.hnsw.AnnIndex` maps them) and rank by the graph's int8 codes; the caller re-scores
the best, as every HNSW search does.

**The plain walk** (:func:`walk`) is HNSW's search of the bottom layer, as faiss's own: a beam of the ``view``
nearest slots the walk has seen, expanded nearest first until the nearest unexpanded slot is farther than the
beam's farthest. Slots a bitmap fails (dead slots, a filter's) are walked through and kept in the beam, but never
returned: the ``count`` nearest that pass are. It finds what faiss's walk finds (the same algorithm over the same
graph), in about half the time: a walk is a chain of scattered reads of 512-byte rows, and this one asks the
memory for all of an expanded slot's unvisited neighbours' rows at once (a prefetch of every cache line, then the
dots), where faiss's build for this machine's CPU waits on them one by one (200k × 512, bench/ann.py's data,
beams 24-64, ad hoc, interleaved: 104-296 µs against 205-590 µs a walk, the same slots).

**The filter-first walk** (:func:`filter_first`) goes through the slots a filter passes only. faiss's filtered walk
goes *through* the slots the filter fails and keeps them in its view, so a filter passing a share ``p`` needs a
view of about ``beam / p``: at 10 %, 10-15 × the unfiltered search's time. ACORN-1 (Patel et al., "ACORN:
Performant and Predicate-Agnostic Search Over Vector Embeddings and Structured Data", SIGMOD 2024; Vespa turns it
on with ``filter-first-threshold``) walks the bottom layer through passing slots only: expanding a slot, a
neighbour that fails the filter is replaced by that neighbour's own neighbours that pass (two hops), so the beam
and the candidate queue hold passing slots alone and the walk costs about what an unfiltered one does (2-3 × at
10 %, bench/acorn.py).

Its known weakness, which :mod:`clipseek.vectors` guards against: a filter that *follows* the vectors (the
documents of one side of the collection) leaves the two-hop neighbourhoods near the query with few passing slots,
and the walk settles on passing documents that are not the nearest. The caller checks the beam's links for that
and turns to a wide walk or a scan of the filter's documents.

Why numba (a JIT compiler for numeric Python): a walk in numpy costs microseconds a hop, faiss's Python API
offers no filter-first walk over an existing graph, and its own walk does not prefetch. The walks are compiled
once and cached on disk (numba's cache, beside this module or in the user's cache folder). A process loads them
when it has searched enough to gain from them (:func:`clipseek.hnsw.load_walks`, :func:`warm`), and only where
numba is installed; until then, and elsewhere, searches take faiss's walk and scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .hnsw import CODE_OFFSET  # faiss stores an int8 code c as the byte c + CODE_OFFSET

AHEAD = 8  # a scan asks for a row this many rows before it scores it

try:  # the walks are compiled by numba where it is installed
    import numba

    HAVE_NUMBA = True
except ImportError:  # numba installs with clipseek where it has wheels
    HAVE_NUMBA = False

if HAVE_NUMBA:
    from llvmlite import ir
    from numba.core import cgutils as _cgutils
    from numba.core import types
    from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros
    from numba.extending import intrinsic

    cgutils: Any = _cgutils  # (untyped)
    trailing_zeros: Any = _trailing_zeros  # (an intrinsic: typed as taking numba's typing context first)

    njit = numba.njit

    def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:
        """Ask the memory for the cache line holding ``array[index]`` (an integer, or a tuple of them for a 2-D array;
        LLVM's prefetch: a hint, never a fault)."""
        sig = types.void(array, index)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty, idxty = signature.args
            ary = context.make_array(aryty)(context, builder, args[0])
            if isinstance(idxty, types.BaseTuple):
                kinds: Any = idxty  # (numba's tuple type iterates its members)
                idx = [context.cast(builder, builder.extract_value(args[1], i), t, types.intp)
                       for i, t in enumerate(kinds)]
            else:
                idx = [context.cast(builder, args[1], idxty, types.intp)]
            ptr = cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                            cgutils.unpack_tuple(builder, ary.strides), aryty.layout, idx)
            i32 = ir.IntType(32)
            if getattr(ptr.type, "is_opaque", False):  # LLVM 15 on: one pointer type, "ptr"
                name = "llvm.prefetch.p0"
            else:  # typed pointers (numba 0.60's LLVM 14): the intrinsic takes an i8*
                ptr, name = builder.bitcast(ptr, ir.IntType(8).as_pointer()), "llvm.prefetch.p0i8"
            declared = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, declared, name)
            builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep
            return context.get_dummy_value()

        return sig, codegen

    prefetch: Any = intrinsic(_prefetch)

    @njit(inline="always")
    def fetch(codes: np.ndarray, v: int) -> None:
        """Prefetch every cache line of row ``v``."""
        for j in range(0, codes.shape[1], 64):
            prefetch(codes, (v, j))

    @njit(inline="always")
    def gather(codes: np.ndarray, v: int, batch: np.ndarray, m: int) -> int:
        """Slot ``v`` onto the batch an expansion scores, its row asked for now; the new count."""
        fetch(codes, v)
        batch[m] = v
        return m + 1

    @njit(inline="always", fastmath=True)
    def dot(codes: np.ndarray, i: int, q: np.ndarray) -> Any:
        s = np.float32(0.0)
        for j in range(codes.shape[1]):
            s += np.float32(codes[i, j]) * q[j]
        return s

    @njit(inline="always", fastmath=True)
    def score(codes: np.ndarray, batch: np.ndarray, m: int, q: np.ndarray, offset: Any, scores: np.ndarray) -> None:
        """The first ``m`` slots of the batch scored, once their rows were all asked for."""
        for t in range(m):
            scores[t] = dot(codes, batch[t], q) - offset

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
    def replace_top(keys: np.ndarray, ids: np.ndarray, n: int, key: Any, v: int) -> None:
        """Put ``key`` in place of a min-heap's root and sift it down (a push and a pop in one pass)."""
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and keys[c + 1] < keys[c]:
                c += 1
            if key <= keys[c]:
                break
            keys[i], ids[i] = keys[c], ids[c]
            i = c
        keys[i], ids[i] = key, v

    @njit(inline="always")
    def pop(keys: np.ndarray, ids: np.ndarray, n: int) -> int:
        """Drop a min-heap's root; the new count."""
        n -= 1
        replace_top(keys, ids, n, keys[n], ids[n])
        return n

    @njit(inline="always")
    def keep(keys: np.ndarray, ids: np.ndarray, n: int, size: int, key: Any, v: int) -> int:
        """Into a min-heap of at most ``size`` entries when there is room or ``key`` beats its least; the new count."""
        if n < size:
            return push(keys, ids, n, key, v)
        if key > keys[0]:
            replace_top(keys, ids, n, key, v)
        return n

    @njit(inline="always")
    def consider(v: int, d: Any, ef: int, cand_k: np.ndarray, cand_i: np.ndarray, nc: int, res_k: np.ndarray,
                 res_i: np.ndarray, nr: int) -> tuple[int, int]:
        """A slot at similarity ``d``: into the candidates and the beam when the beam has room or ``d`` beats its
        worst; the two new counts."""
        if nr < ef or d > res_k[0]:
            if nc < len(cand_k):
                nc = push(cand_k, cand_i, nc, -d, v)
            nr = keep(res_k, res_i, nr, ef, d, v)
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
                lo, hi = starts[cur] + cum[level], starts[cur] + cum[level + 1]
                for p in range(lo, hi):  # the rows asked for at once, then scored
                    v = links[p]
                    if v < 0:
                        break
                    if v < rows:
                        fetch(codes, v)
                node = cur
                for p in range(lo, hi):
                    v = links[p]
                    if v < 0:
                        break
                    if v >= rows:
                        continue
                    d = dot(codes, v, q) - offset
                    if d > best:
                        best, node, moved = d, v, True
                cur = node
        return cur, best

    @njit(inline="always", fastmath=True)
    def code_offset(q: np.ndarray) -> Any:
        """What the stored bytes (code + 128) add to every dot: 128 × the query's sum."""
        qsum = np.float32(0.0)
        for j in range(q.shape[0]):
            qsum += q[j]
        return np.float32(CODE_OFFSET) * qsum

    @njit(inline="always")
    def passes(bitmap: np.ndarray, v: int) -> bool:
        """Slot ``v``'s bit (little bit order); an empty bitmap passes every slot, one too short fails those past it."""
        if len(bitmap) == 0:
            return True
        b = v >> 3
        return b < len(bitmap) and (bitmap[b] >> (v & 7)) & 1 == 1

    @njit(nogil=True, fastmath=True, cache=True)
    def _plain(q: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray, entry: int,
               top_level: int, view: int, count: int, allow: np.ndarray, visited: np.ndarray,
               stamp: np.uint32) -> np.ndarray:
        """The ``count`` nearest slots ``allow`` passes of a walk whose beam holds ``view`` slots, nearest first."""
        rows = codes.shape[0]
        offset = code_offset(q)
        cur, best = descend(q, codes, links, starts, cum, entry, top_level, offset)
        cap = 64 * view + 4096
        cand_k, cand_i = np.empty(cap, np.float32), np.empty(cap, np.int64)
        beam_k, beam_i = np.empty(view + 1, np.float32), np.empty(view + 1, np.int64)
        res_k, res_i = np.empty(count + 1, np.float32), np.empty(count + 1, np.int64)
        lo, hi = cum[0], cum[1]
        batch, scores = np.empty(hi - lo, np.int64), np.empty(hi - lo, np.float32)
        nc = push(cand_k, cand_i, 0, -best, cur)
        nb = push(beam_k, beam_i, 0, best, cur)
        every = len(allow) == 0  # every slot passes: the answer is the beam's best, no heap of its own
        nr = push(res_k, res_i, 0, best, cur) if not every and passes(allow, cur) else 0
        visited[cur] = stamp
        while nc > 0:
            c = cand_i[0]
            if nb >= view and -cand_k[0] < beam_k[0]:
                break
            nc = pop(cand_k, cand_i, nc)
            m = 0
            for p in range(starts[c] + lo, starts[c] + hi):  # the unvisited neighbours, their rows asked for at once
                v = links[p]
                if v < 0:
                    break
                if v >= rows or visited[v] == stamp:
                    continue
                visited[v] = stamp
                m = gather(codes, v, batch, m)
            score(codes, batch, m, q, offset, scores)
            for t in range(m):
                v, d = batch[t], scores[t]
                if not every and passes(allow, v):  # every passing slot seen may be returned, as in faiss's
                    nr = keep(res_k, res_i, nr, count, d, v)
                if nb < view or d > beam_k[0]:
                    if nc < cap:
                        nc = push(cand_k, cand_i, nc, -d, v)
                    nb = keep(beam_k, beam_i, nb, view, d, v)
        if every:
            order = np.argsort(-beam_k[:nb], kind="mergesort")[:count]
            return beam_i[:nb][order]
        order = np.argsort(-res_k[:nr], kind="mergesort")
        return res_i[:nr][order]

    @njit(nogil=True, fastmath=True, cache=True)
    def _filter_first(q: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray,
                      entry: int, top_level: int, ef: int, allow: np.ndarray, visited: np.ndarray,
                      stamp: np.uint32) -> np.ndarray:
        """The beam of ``ef`` passing slots, nearest first by the codes' inner product with ``q``."""
        rows, allowed = codes.shape[0], allow.shape[0]
        offset = code_offset(q)
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
        batch, scores = np.empty(degree, np.int64), np.empty(degree, np.float32)
        failing = np.empty(degree, np.int64)
        while nc > 0:
            c = cand_i[0]
            if nr >= ef and -cand_k[0] < res_k[0]:
                break
            nc = pop(cand_k, cand_i, nc)
            found = 0  # passing neighbours taken from this slot: at most a bottom-layer node's links
            m = 0  # those not seen before: their rows asked for at once, then scored in this order
            f = 0  # those that fail, not seen before: where their links lie is asked for at once
            for p in range(starts[c] + lo, starts[c] + hi):  # first the neighbours that pass
                v = links[p]
                if v < 0:
                    break
                if v >= allowed or not allow[v]:
                    if v < rows and visited[v] != stamp:
                        prefetch(starts, v)
                        failing[f] = v
                        f += 1
                    continue
                found += 1
                if visited[v] == stamp:
                    continue
                visited[v] = stamp
                m = gather(codes, v, batch, m)
            for t in range(min(f, degree - found)):  # then their links (each gives ~share × degree that pass)
                prefetch(links, starts[failing[t]] + lo)
                prefetch(links, starts[failing[t]] + hi - 1)
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
                    m = gather(codes, u, batch, m)
            score(codes, batch, m, q, offset, scores)
            for t in range(m):
                nc, nr = consider(batch[t], scores[t], ef, cand_k, cand_i, nc, res_k, res_i, nr)
        order = np.argsort(-res_k[:nr], kind="mergesort")
        return res_i[:nr][order]

    @njit(nogil=True, fastmath=True, cache=True)
    def _cosines(q: np.ndarray, codes: np.ndarray, residuals: np.ndarray, slots: np.ndarray, step: float,
                 residual_steps: int) -> np.ndarray:
        """Cosines at ``slots`` from the code bytes (code + 128) and the residuals' nibbles (sixteenths of a code
        step, counted from -8), each row asked for before any is read (0 for a zero query)."""
        for t in range(len(slots)):
            fetch(codes, slots[t])
            fetch(residuals, slots[t])
        dim, width = q.shape[0], residuals.shape[1]
        weight = np.float32(1.0 / residual_steps)
        low, high = np.zeros(width, np.float32), np.zeros(width, np.float32)  # a nibble's weight in each dimension
        for j in range(dim):
            if j % 2 == 0:
                low[j // 2] = q[j] * weight
            else:
                high[j // 2] = q[j] * weight
        norm, total = np.float32(0.0), np.float32(0.0)
        for j in range(dim):
            norm += q[j] * q[j]
            total += q[j]
        if norm == 0:  # a zero query: cosine 0 with everything, as exact search's
            return np.zeros(len(slots), np.float32)
        offset = (np.float32(CODE_OFFSET) + np.float32(residual_steps // 2) * weight) * total  # bytes' offsets
        factor = np.float32(step) / np.sqrt(norm)
        out = np.empty(len(slots), np.float32)
        for t in range(len(slots)):
            i = slots[t]
            r = np.float32(0.0)
            for j in range(width):
                b = residuals[i, j]
                r += np.float32(b & 15) * low[j] + np.float32(b >> 4) * high[j]
            out[t] = (dot(codes, i, q) + r - offset) * factor
        return out

    @njit(inline="always")
    def closeness(cos: np.ndarray) -> np.ndarray:
        """Vespa's closeness for angular distance, 1 / (1 + arccos(cos)), in float64 (no fast-math here)."""
        out = np.empty(len(cos), np.float64)
        for t in range(len(cos)):
            out[t] = 1.0 / (1.0 + np.arccos(min(max(np.float64(cos[t]), -1.0), 1.0)))
        return out

    @njit(nogil=True, cache=True)
    def _nearest(q: np.ndarray, codes: np.ndarray, residuals: np.ndarray, links: np.ndarray, starts: np.ndarray,
                 cum: np.ndarray, entry: int, top_level: int, view: int, count: int, allow: np.ndarray,
                 visited: np.ndarray, stamp: np.uint32, step: float, residual_steps: int, doc_of_slot: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The plain walk's ``count`` nearest passing slots (those ``doc_of_slot`` covers), re-scored; of them the
        ``k`` best by cosine, then by document: (documents, closeness, cosines, how many slots the walk found)."""
        found = _plain(q, codes, links, starts, cum, entry, top_level, view, count, allow, visited, stamp)
        m = 0
        for t in range(len(found)):  # a slot published after this search's snapshot of the documents is not seen
            if found[t] < len(doc_of_slot):
                found[m] = found[t]
                m += 1
        docs, rel, cos = _ranked(q, codes, residuals, found[:m], step, residual_steps, doc_of_slot, k)
        return docs, rel, cos, m

    @njit(nogil=True, cache=True)
    def _ranked(q: np.ndarray, codes: np.ndarray, residuals: np.ndarray, slots: np.ndarray, step: float,
                residual_steps: int, doc_of_slot: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``slots`` re-scored; the ``k`` best by cosine, then by document: (documents, closeness, cosines)."""
        cos = _cosines(q, codes, residuals, slots, step, residual_steps)
        docs = doc_of_slot[slots]
        by_doc = np.argsort(docs, kind="mergesort")  # then stably by cosine: cosine first, document on ties
        order = by_doc[np.argsort(-cos[by_doc], kind="mergesort")][:k]
        best = cos[order]
        return docs[order], closeness(best), best

    @njit(nogil=True, cache=True)
    def _linked(links: np.ndarray, starts: np.ndarray, lo: int, hi: int, slots: np.ndarray, mask: np.ndarray,
                marks: np.ndarray, stamp: np.uint32) -> tuple[int, int]:
        """Of the distinct slots the bottom layer links ``slots`` to (those ``mask`` covers): how many, and how many
        of them ``mask`` passes; ``marks`` as a walk's visited marks."""
        n = passing = 0
        for t in range(len(slots)):
            for p in range(starts[slots[t]] + lo, starts[slots[t]] + hi):
                v = links[p]
                if v < 0:
                    break
                if v >= len(mask) or marks[v] == stamp:
                    continue
                marks[v] = stamp
                n += 1
                if mask[v]:
                    passing += 1
        return n, passing

    @njit(nogil=True, fastmath=True, cache=True)
    def _scores(q: np.ndarray, codes: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The codes' inner product with ``q`` at ``slots`` (less the same constant for every slot); each row asked
        for AHEAD rows before it is scored."""
        out = np.empty(len(slots), np.float32)
        for t in range(min(AHEAD, len(slots))):
            fetch(codes, slots[t])
        for t in range(len(slots)):
            if t + AHEAD < len(slots):
                fetch(codes, slots[t + AHEAD])
            out[t] = dot(codes, slots[t], q)
        return out

    @njit(nogil=True, cache=True)
    def _listed(mask: np.ndarray, words: np.ndarray, head: int, count: int) -> np.ndarray:
        """The first ``count`` indexes of ``mask``'s true entries, in order; ``words``: its bytes from ``head`` on, as
        whole aligned 8-byte words. A word with none is passed over in one test; in one with some, each is found by
        its trailing zero bits."""
        out = np.empty(count, np.int64)
        m = _listed_bytes(mask, 0, head, out, 0)
        for i in range(len(words)):
            w = words[i]
            while w and m < count:
                low = trailing_zeros(w) & 56  # the first nonzero byte's lowest bit
                out[m] = head + 8 * i + (low >> 3)
                m += 1
                w &= ~(np.uint64(255) << np.uint64(low))
        m = _listed_bytes(mask, head + 8 * len(words), len(mask), out, m)
        return out[:m]

    @njit(inline="always")
    def _listed_bytes(mask: np.ndarray, lo: int, hi: int, out: np.ndarray, m: int) -> int:
        """:func:`_listed`'s bytes outside whole words, one by one, while ``out`` has room; the new count."""
        for j in range(lo, hi):
            if mask[j] and m < len(out):
                out[m] = j
                m += 1
        return m


def warm() -> None:
    """Compile the walks, or load them from numba's cache, for every kind of array a search hands them (numba
    compiles one version per kind: a read-only mask or residual array, from a kept filter or a memory-mapped graph,
    is another), so no search waits for a compiler."""
    _needs_numba("the compiled walks")
    dim = 8
    codes = np.full((2, dim), CODE_OFFSET, np.uint8)
    links = np.full(64, -1, np.int32)
    links[0], links[32] = 1, 0  # two slots linked to each other on the bottom layer (32 links a slot)
    starts, cum = np.array([0, 32, 64], np.int64), np.array([0, 32], np.int64)
    q, visited = np.ones(dim, np.float32), np.zeros(2, np.uint32)
    walk(q, codes, links, starts, cum, 0, 0, 2, 2, np.zeros(0, np.uint8), visited, 1)
    code_scores(q, codes, np.arange(2))
    for readonly in (False, True):
        mask = np.zeros(2, np.bool_)
        mask.flags.writeable = not readonly
        listed(mask, 0)
    for stamp, readonly in ((2, False), (3, True)):
        allow, residuals = np.ones(2, np.bool_), np.full((2, dim // 2), 0x88, np.uint8)
        allow.flags.writeable = residuals.flags.writeable = not readonly
        filter_first(q, codes, links, starts, cum, 0, 0, 2, allow, visited, stamp)
        cosines(q, codes, residuals, np.arange(2), 0.01, 16)
        nearest(q, codes, residuals, links, starts, cum, 0, 0, 2, 2, np.zeros(0, np.uint8), visited, stamp + 2, 0.01,
                16, np.arange(2), 2)
        ranked(q, codes, residuals, np.arange(2), 0.01, 16, np.arange(2), 2)
        linked(links, starts, 0, 32, np.arange(2), allow, visited, stamp + 4)


def _needs_numba(what: str) -> None:
    if not HAVE_NUMBA:
        raise RuntimeError(f"{what} needs numba (pip install numba)")


def walk(query: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray, entry: int,
         top_level: int, view: int, count: int, allow: np.ndarray, visited: np.ndarray, stamp: int) -> np.ndarray:
    """The ``count`` slots ``allow`` passes (a bitmap, ``np.packbits(..., bitorder="little")``; empty: every slot)
    that the plain walk, with a beam of ``view`` slots, finds nearest ``query``, nearest first by the int8 codes
    (fewer only when it sees fewer that pass). ``codes`` (the stored bytes, one row a slot), ``links``, ``starts``
    and ``cum`` are faiss's arrays as :class:`clipseek.hnsw.AnnIndex` maps them; ``visited`` a scratch array of at
    least one entry a slot, none equal to ``stamp`` (the caller's count of walks)."""
    _needs_numba("the compiled walk")
    q = np.ascontiguousarray(query, dtype=np.float32)
    found: np.ndarray = _plain(q, codes, links, starts, cum, entry, top_level, view, count, allow, visited,
                               np.uint32(stamp))
    return found


def filter_first(query: np.ndarray, codes: np.ndarray, links: np.ndarray, starts: np.ndarray, cum: np.ndarray,
                 entry: int, top_level: int, ef: int, allow: np.ndarray, visited: np.ndarray, stamp: int) -> np.ndarray:
    """The ``ef`` slots ``allow`` passes (a bool per slot; slots past its end fail) that the filter-first walk
    finds nearest ``query``, nearest first by the int8 codes; the other arguments as :func:`walk` takes them."""
    _needs_numba("the filter-first walk")
    q = np.ascontiguousarray(query, dtype=np.float32)
    found: np.ndarray = _filter_first(q, codes, links, starts, cum, entry, top_level, ef, allow, visited,
                                      np.uint32(stamp))
    return found


def nearest(query: np.ndarray, codes: np.ndarray, residuals: np.ndarray, links: np.ndarray, starts: np.ndarray,
            cum: np.ndarray, entry: int, top_level: int, view: int, count: int, allow: np.ndarray, visited: np.ndarray,
            stamp: int, step: float, residual_steps: int, doc_of_slot: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`walk`, :func:`cosines` of the ``count`` slots it finds (those below ``len(doc_of_slot)``) and their
    order in one call: the ``k`` best by cosine, then document, as (documents, Vespa's closeness, cosines, how many
    slots the walk found)."""
    _needs_numba("the compiled walk")
    q = np.ascontiguousarray(query, dtype=np.float32)
    docs, rel, cos, found = _nearest(q, codes, residuals, links, starts, cum, entry, top_level, view, count, allow,
                                     visited, np.uint32(stamp), step, residual_steps, doc_of_slot, k)
    return docs, rel, cos, int(found)


def ranked(query: np.ndarray, codes: np.ndarray, residuals: np.ndarray, slots: np.ndarray, step: float,
           residual_steps: int, doc_of_slot: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cosines` of ``slots`` and their order in one call: the ``k`` best by cosine, then document
    (``doc_of_slot[slot]``), as (documents, Vespa's closeness, cosines)."""
    _needs_numba("the compiled re-scoring")
    q = np.ascontiguousarray(query, dtype=np.float32)
    found: tuple[np.ndarray, np.ndarray, np.ndarray] = _ranked(
        q, codes, residuals, np.ascontiguousarray(slots, dtype=np.int64), step, residual_steps, doc_of_slot, k)
    return found


def linked(links: np.ndarray, starts: np.ndarray, lo: int, hi: int, slots: np.ndarray, mask: np.ndarray,
           marks: np.ndarray, stamp: int) -> tuple[int, int]:
    """Of the distinct slots the bottom layer (links ``lo .. hi`` of each node's run) links ``slots`` to, those
    below ``len(mask)``: how many, and how many ``mask`` passes; ``marks`` as :func:`walk`'s ``visited``."""
    _needs_numba("the compiled links count")
    n, passing = _linked(links, starts, lo, hi, np.ascontiguousarray(slots, dtype=np.int64), mask, marks,
                         np.uint32(stamp))
    return int(n), int(passing)


def cosines(query: np.ndarray, codes: np.ndarray, residuals: np.ndarray, slots: np.ndarray, step: float,
            residual_steps: int) -> np.ndarray:
    """:meth:`clipseek.hnsw.AnnIndex.cosines` for a query of norm > 0: the rows' bytes read where they lie (asked
    for all at once), not gathered and widened by numpy first. ``step``: what a code step is of a normalised
    component."""
    _needs_numba("the compiled re-scoring")
    q = np.ascontiguousarray(query, dtype=np.float32)
    found: np.ndarray = _cosines(q, codes, residuals, np.ascontiguousarray(slots, dtype=np.int64), step,
                                 residual_steps)
    return found


def code_scores(query: np.ndarray, codes: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Scores that rank ``slots`` as the int8 codes' inner product with ``query`` does (each less the same
    constant): the rows at the slots only, read where they lie, without faiss's pass over every slot's bit."""
    _needs_numba("the code scan")
    q = np.ascontiguousarray(query, dtype=np.float32)
    scores: np.ndarray = _scores(q, codes, np.ascontiguousarray(slots, dtype=np.int64))
    return scores


def listed(mask: np.ndarray, count: int) -> np.ndarray:
    """``np.flatnonzero(mask)`` for a bool mask with ``count`` true entries (``np.count_nonzero``), in a fraction
    of its time where they are few (a million, an ad hoc check: 1 % of them in 59-178 µs against 172-381, 10 % in
    213-891 against 341-2,206; scattered ones the slower), and slower where they are many (50 %, scattered: 1.3
    against 0.8 ms)."""
    _needs_numba("the compiled listing")
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    head = min(-mask.ctypes.data % 8, len(mask))
    whole = (len(mask) - head) // 8 * 8
    found: np.ndarray = _listed(mask, mask[head: head + whole].view(np.uint64), head, count)
    return found
