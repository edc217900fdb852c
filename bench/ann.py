"""ANN search, side by side in one run: clipseek's collection (an HNSW graph over int8 codes built by faiss, walked by
clipseek's compiled walk, + re-scoring) vs faiss IndexHNSWFlat.

    .venv/bin/python bench/ann.py [--n 200000] [--queries 1000] [--no-faiss]

Data: N × 512 L2-normalised vectors drawn around ~1,000 clusters; queries are perturbed data points. Each
clipseek document also has the summary field of Vespa's text-image sample app (image_file_name), which every hit
returns, and a ``width`` of ``j % 100`` that the filtered searches use. Both indexes use M=16 and construction
effort 500. Searches run single-threaded over the same beam widths (clipseek: targetHits 10 +
exploreAdditionalHits = the beam; faiss: efSearch), interleaved (best of 3 rounds). For each engine, the smallest
beam reaching recall@10 ≥ 0.99 against exact float32 search is reported with its QPS. Beside them, clipseek's graph
walk alone (its snapshot loaded as a bare ``AnnIndex``: the compiled walk over the int8 codes, no re-scoring, no
hits; and the same walk by faiss, which a process takes before it loads the compiled walks) shows how much of a
query is the walk, and the field's vector index alone (``VectorIndex.nearest``: the walk, the re-scoring of the
beam's best and their order; no where-tree, no summaries, no hits) how much is the re-scoring. The process loads
the compiled walks first, as ``clipseek serve`` does when it starts.

Memory is measured, not added up: a fresh process per engine loads what a query needs (clipseek: the collection
opened read-only, as ``clipseek serve`` opens it; faiss: its index file), runs the whole query sweep at that
engine's 0.99 beam, and reports its resident set then less its resident set before loading (after importing
its libraries). Both sides count
alike: the graph, every vector row the queries read, and (clipseek) the hits' summaries and id maps.

Also: filtered search (a filter passing 1, 10, 50 and 90 % of the documents: p50 latency against the unfiltered
search's, timed interleaved with it, query by query; recall against exact filtered search; once with the same
filter for every query, which the collection evaluates once and keeps, and once with a filter no earlier query
used), exact search latency, build time, and the time to reopen the collection and answer a first query.
``--no-faiss`` skips faiss's index (a long build at a million rows).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from clipseek import hnsw
from clipseek.collection import Collection, Document, Filter
from clipseek.hnsw import AnnIndex, HnswParams

DIM = 512
FIELD = "vit_b_32_image"
BEAMS = (16, 24, 32, 36, 40, 44, 48, 56, 64, 96, 128, 192, 256)  # the same for both engines (1M needs > 128)
ROUNDS = 3  # interleaved repetitions; the best time of each counts
FILTER_SHARES = (1, 10, 50, 90)  # % of the documents a filter passes (width < share)


def dataset(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """~1,000 clusters (each point: its centre plus noise of norm 0.6); queries: data points plus noise of norm 0.3."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data = np.empty((n, DIM), dtype=np.float32)
    for i in range(0, n, 100_000):  # in blocks: a million rows never need a float64 temporary
        m = min(i + 100_000, n) - i
        noise = rng.standard_normal((m, DIM)).astype(np.float32) * (0.6 / DIM ** 0.5)
        block = centers[rng.integers(0, 1000, m)] + noise
        data[i: i + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    q = data[rng.integers(0, n, queries)] + rng.standard_normal((queries, DIM)).astype(np.float32) * (0.3 / DIM ** 0.5)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return data, q.astype(np.float32)


def exact_top(queries: np.ndarray, data: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact float32 top-k rows per query, in blocks of rows (a million × 1,000 scores would not fit)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for i in range(0, len(data), 200_000):
        s = queries @ data[i: i + 200_000].T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + i], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


PROBE = """
import json, sys, numpy as np
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096
engine, path, queries, beam = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), int(sys.argv[4])
if engine == 'clipseek':
    import onnxruntime, faiss, sqlite3  # the libraries' own code is not the index's memory
    from clipseek import hnsw
    from clipseek.collection import Collection
    hnsw.load_walks()  # numba and the compiled walks' machine code: library code too, as a server loads it
    before = rss()
    c = Collection.open(path, readonly=True)
    for q in queries:
        c.search(q, field=%(field)r, hits=10, target_hits=10, explore_additional_hits=beam - 10)
else:
    import faiss
    faiss.omp_set_num_threads(1)
    before = rss()
    index = faiss.read_index(path)
    index.hnsw.efSearch = beam
    for q in queries:
        index.search(q[None, :], 10)
print(json.dumps({'grew': rss() - before}))
""" % {"field": FIELD}


def resident_after_sweep(engine: str, path: Path, queries_file: Path, beam: int) -> int:
    """RSS growth of a fresh process that loads ``engine``'s index from ``path`` and runs the query sweep."""
    out = subprocess.run([sys.executable, "-c", PROBE, engine, str(path), str(queries_file), str(beam)],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["grew"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--no-faiss", action="store_true", help="clipseek alone (a million rows: faiss's build is long)")
    ap.add_argument("--filtered-queries", type=int, default=200, help="queries timed per filter (p50)")
    args = ap.parse_args()
    hnsw.load_walks()  # as `clipseek serve` does when it starts (a process would at its 32nd search)
    use_faiss = not args.no_faiss
    if use_faiss:
        import faiss
    data, queries = dataset(args.n, args.queries)
    truth = exact_top(queries, data)
    print(f"{args.n} x {DIM} vectors, {args.queries} queries, recall@10 against exact float32, single-thread search")
    work = Path(tempfile.mkdtemp())
    queries_file = work / "queries.npy"
    np.save(queries_file, queries)

    # clipseek
    folder = work / "c"
    coll = Collection.create(folder, exact_threshold=0)
    coll.add_field(FIELD, "ViT-B/32", DIM)
    t = time.perf_counter()
    for i in range(0, args.n, 10_000):
        coll.feed([Document(str(j), image_file_name=f"{j:06d}.jpg", width=j % 100, vectors={FIELD: data[j]})
                   for j in range(i, min(i + 10_000, args.n))])
    feed_s = time.perf_counter() - t
    t = time.perf_counter()
    coll.search(queries[0], field=FIELD, hits=10)  # builds the graph (all cores)
    build_cs = time.perf_counter() - t

    index = None
    build_fa = 0.0
    if use_faiss:
        faiss.omp_set_num_threads(2)
        index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 500
        t = time.perf_counter()
        index.add(data)
        build_fa = time.perf_counter() - t
        faiss.omp_set_num_threads(1)

    # the graph walk alone, on the same snapshot the collection keeps: faiss's IndexHNSWSQ search over clipseek's
    # int8 codes at the same beam, no re-scoring, no hits (documents were fed in order: slot j is document j)
    coll.checkpoint()
    walk = AnnIndex.load(folder / "ann", FIELD, DIM, HnswParams())
    assert walk is not None and len(walk) == args.n

    def sweep_walk(beam: int) -> list[list[int]]:
        assert walk is not None
        return [walk.search(q, 10, beam)[:10].tolist() for q in queries]

    def sweep_faiss_walk(beam: int) -> list[list[int]]:  # the same walk by faiss (what it replaced)
        hnsw.COMPILED = False
        try:
            return sweep_walk(beam)
        finally:
            hnsw.COMPILED = True

    vector_index = coll.vector_index(FIELD)
    row_of_doc = np.zeros(int(vector_index.doc_of_slot.max()) + 1, dtype=np.int64)
    row_of_doc[vector_index.doc_of_slot] = np.arange(args.n)  # the collection's document numbers -> rows of data

    def sweep_index(beam: int) -> list[list[int]]:
        return [row_of_doc[vector_index.nearest(q, 10, explore=beam - 10).docs].tolist() for q in queries]

    def sweep_clipseek(beam: int) -> list[list[int]]:
        return [[int(h.docid) for h in coll.search(q, field=FIELD, hits=10, target_hits=10,
                                                   explore_additional_hits=beam - 10).hits] for q in queries]

    def sweep_faiss(beam: int) -> list[list[int]]:
        assert index is not None
        index.hnsw.efSearch = beam
        return [index.search(q[None, :], 10)[1][0].tolist() for q in queries]

    # Interleaved on a shared (noisy) machine: per beam, clipseek then faiss, ROUNDS times; best time of each.
    # The first round's results give recall (both engines are deterministic for a given beam).
    sweeps = {"clipseek": sweep_clipseek, "index": sweep_index, "walk": sweep_walk, "faiss walk": sweep_faiss_walk,
              **({"faiss": sweep_faiss} if use_faiss else {})}
    best_s: dict[tuple[str, int], float] = {}
    recalls: dict[tuple[str, int], float] = {}
    for sweep in sweeps.values():  # untimed warm-up (page-table entries of mapped rows)
        sweep(BEAMS[0])
    for _ in range(ROUNDS):
        for beam in BEAMS:
            for name, sweep in sweeps.items():
                t = time.perf_counter()
                found = sweep(beam)
                elapsed = time.perf_counter() - t
                recalls.setdefault((name, beam), recall(found, truth))
                best_s[(name, beam)] = min(elapsed, best_s.get((name, beam), elapsed))
    table = {name: [(b, recalls[(name, b)], len(queries) / best_s[(name, b)]) for b in BEAMS] for name in sweeps}

    def best(rows: list[tuple[int, float, float]]) -> tuple[int, float, float]:
        ok = [r for r in rows if r[1] >= 0.99]
        return ok[0] if ok else max(rows, key=lambda r: r[1])

    print(f"{'engine':<34} {'setting':<22} {'recall@10':>9} {'QPS':>8}")
    for beam, rec, qps in table["clipseek"]:
        print(f"{'clipseek (HNSW-SQ8 + rescore)':<34} {f'targetHits 10+{beam - 10}':<22} {rec:9.4f} {qps:8.0f}")
    for beam, rec, qps in table["index"]:
        print(f"{'  its vector index alone (rescored)':<34} {f'beam {beam}':<22} {rec:9.4f} {qps:8.0f}")
    for beam, rec, qps in table["walk"]:
        print(f"{'  its graph walk alone (int8 order)':<34} {f'beam {beam}':<22} {rec:9.4f} {qps:8.0f}")
    for beam, rec, qps in table["faiss walk"]:
        print(f"{'  the same walk by faiss':<34} {f'beam {beam}':<22} {rec:9.4f} {qps:8.0f}")
    for ef, rec, qps in table.get("faiss", []):
        print(f"{'faiss IndexHNSWFlat f32':<34} {'efSearch ' + str(ef):<22} {rec:9.4f} {qps:8.0f}")
    c = best(table["clipseek"])
    walk_qps = dict((b, q) for b, _, q in table["walk"])[c[0]]
    faiss_walk_qps = dict((b, q) for b, _, q in table["faiss walk"])[c[0]]
    index_qps = dict((b, q) for b, _, q in table["index"])[c[0]]
    print(f"at recall >= 0.99: clipseek {c[2]:.0f} QPS (beam {c[0]}, recall {c[1]:.4f}; at that beam its vector index "
          f"alone {index_qps:.0f} QPS, its graph walk alone {walk_qps:.0f} QPS, by faiss {faiss_walk_qps:.0f})", end="")
    if use_faiss:
        f = best(table["faiss"])
        print(f" vs faiss {f[2]:.0f} QPS (beam {f[0]}, recall {f[1]:.4f}): {c[2] / f[2]:.2f}x")
    else:
        print()
    print(f"build: clipseek feed {feed_s:.1f} s + graph {build_cs:.1f} s (2 threads)"
          + (f"; faiss {build_fa:.1f} s (2 threads)" if use_faiss else ""))

    # filtered search at clipseek's 0.99 beam: p50 of each, recall against exact search over the filter's rows
    beam = c[0]
    widths = np.arange(args.n) % 100
    probe = queries[: min(args.filtered_queries, len(queries))]

    def timed(kinds: dict[str, Callable[[int], Filter | None]]) -> dict[str, tuple[float, list[list[int]], str]]:
        """Each query once with each kind of filter, the kinds' order turned by one each query (interleaved: the
        host's busy moments fall on all of them alike); each kind's p50, hits and plans."""
        names = list(kinds)
        times: dict[str, list[float]] = {n: [] for n in names}
        found: dict[str, list[list[int]]] = {n: [] for n in names}
        plans: dict[str, set[str]] = {n: set() for n in names}
        for i, q in enumerate(probe):
            for name in names[i % len(names):] + names[: i % len(names)]:
                flt = kinds[name](i)
                t = time.perf_counter()
                r = coll.search(q, field=FIELD, hits=10, target_hits=10, explore_additional_hits=beam - 10,
                                filter=flt)
                times[name].append(time.perf_counter() - t)
                found[name].append([int(h.docid) for h in r.hits])
                plans[name].add(r.plan)
        return {n: (statistics.median(times[n]), found[n], "/".join(sorted(plans[n]))) for n in names}

    for i in range(40):  # a running server's state: the in-memory columns are built after a few distinct predicates
        coll.search(queries[0], field=FIELD, hits=10, filter=Filter(max_width=-1 - i))
    print(f"filtered search at beam {beam} ({len(probe)} queries; each filter's p50 against the unfiltered search's, "
          "timed interleaved with it)")
    for share in FILTER_SHARES:
        rows = np.flatnonzero(widths < share)
        exact = rows[exact_top(probe, data[rows])]
        # the new filter passes the same documents (width <= share - 1 + a millionth times the query's number: the
        # same integers pass), and no earlier query used it, so nothing evaluated for an earlier query is reused
        got = timed({"unfiltered": lambda i: None, "same": lambda i, s=share: Filter(max_width=s - 1),
                     "new": lambda i, s=share: Filter(max_width=s - 1 + (i + 1) / 1e6)})
        base_p50 = got["unfiltered"][0]
        p50, found, plans = got["same"]
        print(f"  filter passing {share:>2} %: unfiltered p50 {base_p50 * 1e3:.2f} ms; the same filter each query: "
              f"p50 {p50 * 1e3:.2f} ms ({p50 / base_p50:.2f}x unfiltered), recall@10 {recall(found, exact):.4f} "
              f"against exact filtered search, plan {plans}")
        p50, found, plans = got["new"]
        print(f"    a new filter each query: p50 {p50 * 1e3:.2f} ms ({p50 / base_p50:.2f}x unfiltered), "
              f"recall@10 {recall(found, exact):.4f}, plan {plans}")
    coll.close()

    # memory: what a query touches, as the resident set of a fresh process after the sweep
    grew_cs = resident_after_sweep("clipseek", folder, queries_file, c[0])
    print(f"resident memory after the {len(queries)}-query sweep (fresh process, less its size before loading, "
          "libraries imported): "
          f"clipseek {grew_cs / 2**20:.0f} MiB", end="")
    if use_faiss:
        import faiss

        faiss.write_index(index, str(work / "faiss.index"))
        grew_fa = resident_after_sweep("faiss", work / "faiss.index", queries_file, f[0])
        print(f" vs faiss {grew_fa / 2**20:.0f} MiB: {grew_cs / grew_fa:.2f}x")
    else:
        print()
    sizes = {p.relative_to(folder): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    print("clipseek files: " + ", ".join(f"{p} {s / 2**20:.0f} MiB" for p, s in sorted(sizes.items()) if s > 2**20))

    # reopen, as a server would, and the first query
    t = time.perf_counter()
    reopened = Collection.open(folder, readonly=True)
    reopened.search(queries[1], field=FIELD, hits=10)
    print(f"reopen {args.n} docs read-only + first query: {time.perf_counter() - t:.2f} s")
    reopened.close()
    reopened = Collection.open(folder, exact_threshold=0)
    small = Collection.create(work / "small")  # the first 10,000 vectors: exact by the planner
    small.add_field(FIELD, "ViT-B/32", DIM)
    small.feed([Document(str(j), image_file_name=f"{j:06d}.jpg", vectors={FIELD: data[j]})
                for j in range(min(10_000, args.n))])
    for n, c_ in ((min(10_000, args.n), small), (args.n, reopened)):
        sub = data[:n]
        for q in queries[-40:]:  # untimed: maps the rows, builds the in-memory summaries
            c_.search(q, field=FIELD, hits=10, approximate=False)
        t = time.perf_counter()
        for q in queries[:50]:
            np.argpartition(-(sub @ q), 10)[:10]
        numpy_ms = (time.perf_counter() - t) / 50 * 1000
        t = time.perf_counter()
        for q in queries[:50]:
            c_.search(q, field=FIELD, hits=10, approximate=False)
        print(f"exact search {n}: clipseek {(time.perf_counter() - t) / 50 * 1000:.2f} ms/query, "
              f"bare numpy {numpy_ms:.2f} ms/query")
    small.close()
    reopened.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
