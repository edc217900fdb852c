"""Filtered search when the filter follows the vectors: recall and p50 latency of the engine's filtered search for
a filter that is independent of the vectors (as in bench/ann.py) and for one that is not.

bench/ann.py's filters pass documents by ``width = j % 100``, which has nothing to do with where a document's
vector lies, so the documents that pass are spread evenly over the graph. Real filters often follow the content
(a folder of one trip, a camera, a season): the documents that pass then sit together, often away from the query.
Here each document also gets ``height`` = its rank (0-99) along one random direction, and a filter
``height < share`` passes the documents furthest to one side of the collection.

Same data as bench/ann.py (its ``dataset``: ~1,000 clusters of 512-dim unit vectors), one collection, the same
beam (targetHits 10 + exploreAdditionalHits 38, bench/ann.py's beam for recall 0.99 at 200k), single thread.
Recall is against exact search over the documents the filter passes (float32, numpy). Each filter is the same for
all queries (evaluated once and kept, as a repeated filter is).

    python bench/filters.py [--n 200000] [--queries 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ann import DIM, FIELD, dataset, exact_top, recall
from clipseek import hnsw
from clipseek.collection import Collection, Document, Filter

SHARES = (5, 10, 30, 50)  # % of the documents a filter passes
BEAM = 48


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    hnsw.load_walks()  # as `clipseek serve` does when it starts
    data, queries = dataset(args.n, args.queries)
    direction = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    along = data @ direction
    rank = np.empty(args.n, np.int64)
    rank[np.argsort(along)] = np.arange(args.n) * 100 // args.n  # 0-99: the percentile along the direction
    widths = np.arange(args.n) % 100

    work = Path(tempfile.mkdtemp())
    try:
        coll = Collection.create(work / "c", exact_threshold=0)
        coll.add_field(FIELD, "ViT-B/32", DIM)
        for i in range(0, args.n, 10_000):
            coll.feed([Document(str(j), image_file_name=f"{j:06d}.jpg", width=int(widths[j]), height=int(rank[j]),
                                vectors={FIELD: data[j]}) for j in range(i, min(i + 10_000, args.n))])
        t = time.perf_counter()
        coll.search(queries[0], field=FIELD, hits=10)  # builds the graph (all cores)
        print(f"{args.n} x {DIM} vectors, {args.queries} queries, beam {BEAM}; graph built in "
              f"{time.perf_counter() - t:.0f} s")
        for i in range(40):  # the in-memory columns are built after a few distinct predicates, as in a server
            coll.search(queries[0], field=FIELD, hits=10, filter=Filter(max_width=-1 - i))

        def timed(flt: Filter | None) -> tuple[float, list[list[int]], str]:
            times, found, plans = [], [], set()
            for q in queries:
                t = time.perf_counter()
                r = coll.search(q, field=FIELD, hits=10, target_hits=10, explore_additional_hits=BEAM - 10,
                                filter=flt)
                times.append(time.perf_counter() - t)
                found.append([int(h.docid) for h in r.hits])
                plans.add(r.plan)
            return statistics.median(times), found, "/".join(sorted(plans))

        base, _, _ = timed(None)
        print(f"unfiltered p50 {base * 1e3:.2f} ms")
        print(f"{'filter':<46} {'passes':>6} {'recall@10':>9} {'p50 ms':>7} {'x unfiltered':>12}  plan")
        for name, column, values in (("independent of the vectors (width = j % 100)", "width", widths),
                                     ("along a direction (height = rank along it)", "height", rank)):
            for share in SHARES:
                rows = np.flatnonzero(values < share)
                truth = rows[exact_top(queries, data[rows])]
                flt = Filter(max_width=share - 1) if column == "width" else Filter(max_height=share - 1)
                p50, found, plans = timed(flt)
                print(f"{name:<46} {share:>5} % {recall(found, truth):9.4f} {p50 * 1e3:7.2f} {p50 / base:11.1f}x  "
                      f"{plans}")
        coll.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
