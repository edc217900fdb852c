"""The prototype that sized the engine's filter-first walk (ACORN-1), beside the engine: what such a walk over the
collection's own graph gives the filtered searches that issue 16's target missed (a filter passing 10 %: p50 within
3 × the unfiltered search's).

The engine walked a filtered search with faiss, through the slots the filter fails, in a view of ~2 × beam / share
slots: ~10-15 × the unfiltered search's time at 10 %. ACORN-1 (Patel et al., SIGMOD 2024) walks only slots that
pass: from each slot it expands, a neighbour that fails the filter is replaced by that neighbour's own neighbours
that pass (two hops). faiss's Python API offers no such walk over an existing HNSW graph, and a walk in numpy costs
microseconds a hop, so this prototype compiles one with numba. The engine has walked this way since this prototype
was measured (``clipseek/walks.py``: the same walk, with ACORN-1's limit of as many passing neighbours per
expansion as a node has links, and a wider beam below 10 %), so the engine's column now shows it.

It reads the collection's graph snapshot through faiss's public API (the ``.faiss`` file: links and int8 codes)
and the residuals file beside it, walks with the query as float32 against the int8 codes, and re-scores the
best 2 × targetHits (at least targetHits + 16) from codes and residuals, as the engine does. Its unfiltered walk
is timed too, so the prototype's own ratio (filtered / unfiltered, same code) is the figure that carries over;
the engine's own filtered and unfiltered ``Collection.search`` p50s are beside it, interleaved per filter.

Data as bench/ann.py and bench/filters.py: ~1,000 clusters of 512-dim unit vectors; filters passing 5, 10 and 30 %
of the documents three ways: ``width = j % 100`` (runs of 10 consecutive rows, as bench/ann.py), scattered at
random, and along one direction (bench/filters.py's one-sided filter). Recall@10 against exact filtered search.

    python bench/acorn.py [--n 200000] [--queries 200] [--beam 44]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ann import DIM, FIELD, dataset, exact_top, recall
from clipseek import hnsw, walks
from clipseek.collection import Collection, Document, Filter

try:
    import numba as nb
except ImportError:
    raise SystemExit("bench/acorn.py compiles its walk with numba, which installs with clipseek where it has "
                     "wheels: pip install numba") from None

import faiss

SHARES = (5, 10, 30)


# the engine's own heap and scoring helpers (clipseek.walks), which this prototype's walk was the first of
_dot, _push, _pop, _consider = walks.dot, walks.push, walks.pop, walks.consider


@nb.njit(fastmath=True)
def walk(q: np.ndarray, codes: np.ndarray, residuals: np.ndarray, links: np.ndarray, starts: np.ndarray,
         cum: np.ndarray, entry: int, top_level: int, ef: int, allow: np.ndarray, filtered: bool,
         visited: np.ndarray, stamp: int, rescored: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``rescored`` best slots of an HNSW beam of ``ef`` (of the slots ``allow`` passes, when ``filtered``:
    ACORN-1), with their cosines from codes and residuals."""
    dim = codes.shape[1]
    qsum = np.float32(0.0)
    for j in range(dim):
        qsum += q[j]
    offset = np.float32(128.0) * qsum  # codes are stored as code + 128
    cur, best = walks.descend(q, codes, links, starts, cum, entry, top_level, offset)
    cap = 64 * ef + 4096
    cand_k, cand_i = np.empty(cap, np.float32), np.empty(cap, np.int64)
    res_k, res_i = np.empty(ef + 1, np.float32), np.empty(ef + 1, np.int64)
    nc = _push(cand_k, cand_i, 0, -best, cur)
    nr = 0
    visited[cur] = stamp
    if not filtered or allow[cur]:
        nr = _push(res_k, res_i, 0, best, cur)
    lo, hi = cum[0], cum[1]
    while nc > 0:
        c = cand_i[0]
        if nr >= ef and -cand_k[0] < res_k[0]:
            break
        nc = _pop(cand_k, cand_i, nc)
        for p in range(starts[c] + lo, starts[c] + hi):
            v = links[p]
            if v < 0:
                break
            if visited[v] == stamp:
                continue
            visited[v] = stamp
            if filtered and not allow[v]:  # ACORN-1: this neighbour's own neighbours that pass instead
                for p2 in range(starts[v] + lo, starts[v] + hi):
                    u = links[p2]
                    if u < 0:
                        break
                    if visited[u] == stamp or not allow[u]:
                        continue
                    visited[u] = stamp
                    nc, nr = _consider(u, _dot(codes, u, q) - offset, ef, cand_k, cand_i, nc, res_k, res_i, nr)
                continue
            nc, nr = _consider(v, _dot(codes, v, q) - offset, ef, cand_k, cand_i, nc, res_k, res_i, nr)
    order = np.argsort(-res_k[:nr])[:rescored]
    slots = res_i[:nr][order]
    cos = np.empty(len(slots), np.float32)
    norm = np.float32(0.0)
    for j in range(dim):
        norm += q[j] * q[j]
    norm = np.sqrt(norm)
    for t in range(len(slots)):  # code + residual: code - 128 + (nibble - 8) / 16 per component
        i = slots[t]
        s = np.float32(0.0)
        for j in range(residuals.shape[1]):
            r = residuals[i, j]
            s += (np.float32(codes[i, 2 * j]) - 128.0 + (np.float32(r & 15) - 8.0) / 16.0) * q[2 * j]
            s += (np.float32(codes[i, 2 * j + 1]) - 128.0 + (np.float32(r >> 4) - 8.0) / 16.0) * q[2 * j + 1]
        cos[t] = s / (127.0 * scale * norm)
    return slots, cos


class Prototype:
    """The snapshot's graph and codes (faiss's public API) and residuals, and the compiled walk over them."""

    def __init__(self, snapshot: Path) -> None:
        meta = json.loads(snapshot.with_suffix(".json").read_text())
        self.index = faiss.read_index(str(snapshot))
        hnsw, storage = self.index.hnsw, faiss.downcast_index(self.index.storage)
        n = self.index.ntotal

        def array(vec, dtype=None):  # faiss's own std::vector, in place
            out = np.asarray(faiss.rev_swig_ptr(vec.data(), vec.size()))
            return out.view(dtype) if dtype else out

        self.codes = array(storage.codes).reshape(n, DIM)
        self.links = array(hnsw.neighbors)
        self.starts = array(hnsw.offsets, np.int64)
        self.cum = array(hnsw.cum_nneighbor_per_level).astype(np.int64)
        self.entry, self.top = int(hnsw.entry_point), int(hnsw.max_level)
        self.residuals = np.fromfile(snapshot.with_suffix(".r4"), dtype=np.uint8).reshape(n, -1)
        self.scale = float(meta["scale"])
        self.visited = np.zeros(n, np.uint32)
        self.stamp = 0
        self.none = np.zeros(1, np.bool_)

    def search(self, q: np.ndarray, k: int, ef: int, allow: np.ndarray | None = None) -> np.ndarray:
        self.stamp += 1
        slots, cos = walk(q, self.codes, self.residuals, self.links, self.starts, self.cum, self.entry, self.top,
                          ef, self.none if allow is None else allow, allow is not None, self.visited,
                          np.uint32(self.stamp), max(2 * k, k + 16), self.scale)
        return slots[np.argsort(-cos)[:k]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--beam", type=int, default=44, help="targetHits 10 + exploreAdditionalHits (bench/ann.py's "
                                                          "beam for recall 0.99 at 200k)")
    args = ap.parse_args()
    hnsw.load_walks()  # as `clipseek serve` does when it starts
    data, queries = dataset(args.n, args.queries)
    along = data @ np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    rank = np.empty(args.n, np.int64)
    rank[np.argsort(along)] = np.arange(args.n) * 100 // args.n  # 0-99: the percentile along the direction
    widths = np.arange(args.n) % 100
    scattered = np.random.default_rng(2).permutation(args.n) * 100 // args.n  # 0-99 at random
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        coll = Collection.create(work / "c", exact_threshold=0)
        coll.add_field(FIELD, "ViT-B/32", DIM)
        for i in range(0, args.n, 10_000):
            coll.feed([Document(str(j), image_file_name=f"{j:06d}.jpg", width=int(widths[j]), height=int(rank[j]),
                                size=int(scattered[j]), vectors={FIELD: data[j]})
                       for j in range(i, min(i + 10_000, args.n))])
        coll.search(queries[0], field=FIELD, hits=10)  # builds the graph (all cores)
        coll.checkpoint()
        proto = Prototype(next((work / "c" / "ann").glob(f"{FIELD}.*.faiss")))
        t = time.perf_counter()
        proto.search(queries[0], 10, args.beam)
        print(f"{args.n} x {DIM} vectors, {args.queries} queries, beam {args.beam}, single thread; "
              f"the prototype compiled in {time.perf_counter() - t:.1f} s")
        for i in range(40):  # the in-memory columns are built after a few distinct predicates, as in a server
            coll.search(queries[0], field=FIELD, hits=10, filter=Filter(max_width=-1 - i))
        explore = args.beam - 10

        def engine(condition: str) -> tuple[float, list[list[int]]]:
            yql = (f"select * from image_search where {{targetHits: 10, hnsw.exploreAdditionalHits: {explore}}}"
                   f"nearestNeighbor({FIELD}, q){condition}")
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                r = coll.search(yql_query=yql, query_tensors={"q": q}, hits=10)
                times.append(time.perf_counter() - t)
                found.append([int(h.docid) for h in r.hits])
            return statistics.median(times), found

        def prototype(allow: np.ndarray | None) -> tuple[float, list[list[int]]]:
            times, found = [], []
            for q in queries:  # documents were fed in order: slot j is document j
                t = time.perf_counter()
                hits = proto.search(q, 10, args.beam, allow)
                times.append(time.perf_counter() - t)
                found.append(hits.tolist())
            return statistics.median(times), found

        base_e, base_p = engine("")[0], prototype(None)[0]
        base_e, base_p = min(base_e, engine("")[0]), min(base_p, prototype(None)[0])
        print(f"unfiltered p50: engine (Collection.search) {base_e * 1e3:.2f} ms; prototype (walk + re-scoring "
              f"alone) {base_p * 1e3:.2f} ms")
        print(f"{'filter':<30} {'engine p50':>11} {'x unf.':>7} {'recall':>7}   {'prototype p50':>13} {'x unf.':>7} "
              f"{'recall':>7}")
        for label, column, values in (("width < s (runs of 10)", "width", widths),
                                      ("size < s (scattered)", "size", scattered),
                                      ("height < s (one side)", "height", rank)):
            for share in SHARES:
                mask = values < share
                rows = np.flatnonzero(mask)
                exact = rows[exact_top(queries, data[rows])]
                e_p50, e_found = engine(f" and {column} < {share}")
                p_p50, p_found = prototype(mask)
                print(f"{f'{label}, {share} %':<30} {e_p50 * 1e3:9.2f} ms {e_p50 / base_e:6.1f}x "
                      f"{recall(e_found, exact):7.4f}   {p_p50 * 1e3:10.2f} ms {p_p50 / base_p:6.1f}x "
                      f"{recall(p_found, exact):7.4f}")
        coll.close()


if __name__ == "__main__":
    main()
