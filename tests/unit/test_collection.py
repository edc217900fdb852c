from __future__ import annotations

import json
import math
import os
import threading

import numpy as np
import pytest

from clipseek import vectors
from clipseek.collection import Collection, Document, Filter
from clipseek.errors import (
    CollectionLockedError,
    CollectionVersionError,
    FieldError,
    NotACollectionError,
    QueryError,
    ReadOnlyError,
    VectorError,
    YqlSyntaxError,
)
from clipseek.hnsw import SNAPSHOT_FORMAT
from clipseek.summaries import Summaries

DIM = 16


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture
def coll(tmp_path):
    c = Collection.create(tmp_path / "c")
    c.add_field("tiny_image", "tiny", DIM)
    yield c
    c.close()


def make_docs(n, seed=0, dim=DIM):
    rng = np.random.RandomState(seed)
    return [Document(f"d{i}", image_file_name=f"{i}.jpg", path=f"/photos/{'cats' if i % 3 == 0 else 'dogs'}/{i}.jpg",
                     format="PNG" if i % 2 else "JPEG", width=100 + i, height=50 + i, mtime=1000.0 + i,
                     vectors={"tiny_image": rng.randn(dim).astype(np.float32)}) for i in range(n)]


def unit_centres(rng, k, dim):
    centres = rng.standard_normal((k, dim))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def around(rng, points, n, noise):
    """``n`` points near randomly chosen ``points`` (Gaussian noise of norm ~``noise``): clusters, or queries."""
    dim = points.shape[1]
    return points[rng.integers(0, len(points), n)] + rng.standard_normal((n, dim)) * (noise / dim ** 0.5)


def brute(docs, q, k, keep=lambda d: True):
    scored = []
    for d in docs:
        if keep(d):
            v = d.vectors["tiny_image"]
            cos = float(np.dot(v, q) / np.linalg.norm(v) / np.linalg.norm(q))
            scored.append((1 / (1 + math.acos(max(-1, min(1, cos)))), d.docid))
    scored.sort(key=lambda t: (-t[0], int(t[1][1:])))
    return [d for _, d in scored[:k]]


def test_closeness_is_vespa_angular_hand_computed(coll):
    # q at 60° from a, 90° from b: closeness = 1/(1+π/3) and 1/(1+π/2)
    q, a, b = np.zeros(DIM), np.zeros(DIM), np.zeros(DIM)
    q[0] = 1
    a[0], a[1] = 0.5 * 3, math.sqrt(3) / 2 * 3  # not normalised: angular ignores length
    b[2] = 1
    coll.feed([Document("a", vectors={"tiny_image": a}), Document("b", vectors={"tiny_image": b})])
    res = coll.search(q, field="tiny_image", hits=5)
    assert [h.docid for h in res.hits] == ["a", "b"]
    assert res.hits[0].relevance == pytest.approx(1 / (1 + math.pi / 3), abs=1e-6)
    assert res.hits[1].relevance == pytest.approx(1 / (1 + math.pi / 2), abs=1e-6)


def test_exact_and_hnsw_agree_with_brute_force(coll):
    docs = make_docs(600)
    coll.feed(docs)
    rng = np.random.RandomState(7)
    found = 0
    for _ in range(5):
        q = rng.randn(DIM)
        expected = brute(docs, q, 10)
        exact = coll.search(q, field="tiny_image", hits=10, approximate=False)
        assert exact.plan == "exact" and [h.docid for h in exact.hits] == expected
        coll.exact_threshold = 0
        ann = coll.search(q, field="tiny_image", hits=10, target_hits=50)
        coll.exact_threshold = 4096
        assert ann.plan == "hnsw" and len(ann.hits) == 10
        found += len(set(h.docid for h in ann.hits) & set(expected))
    assert found >= 45  # recall@10 >= 0.9 over the queries (the graph is built with threads: not bit-exact)


def test_hits_offset_and_target_hits(coll):
    docs = make_docs(40)
    coll.feed(docs)
    q = np.ones(DIM)
    full = brute(docs, q, 40)
    page = coll.search(q, field="tiny_image", hits=5, offset=5, target_hits=20)
    assert [h.docid for h in page.hits] == full[5:10] and page.total_count == 20 and page.documents == 40
    few = coll.search(q, field="tiny_image", hits=10, target_hits=3)
    assert [h.docid for h in few.hits] == full[:3]


@pytest.mark.parametrize("threshold", [4096, 0])
def test_ties_are_ordered_by_document_on_every_path(tmp_path, threshold):
    rng = np.random.default_rng(1)
    same = rng.standard_normal(DIM)
    with Collection.create(tmp_path / "c", exact_threshold=threshold) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed([Document(f"t{i}", vectors={"tiny_image": same}) for i in (3, 1, 4, 0, 2)])  # fed in this order
        c.feed([Document(f"o{i}", vectors={"tiny_image": rng.standard_normal(DIM)}) for i in range(200)])
        by_vector = c.search(same, field="tiny_image", hits=5, target_hits=10)
        by_yql = c.search(yql_query="select * from sources * where {targetHits:10}nearestNeighbor(tiny_image, q)",
                          query_tensors={"q": same}, hits=5)
        assert [h.docid for h in by_vector.hits] == [h.docid for h in by_yql.hits] == ["t3", "t1", "t4", "t0", "t2"]
        assert by_vector.plan == ("exact" if threshold else "hnsw")


@pytest.mark.parametrize("threshold", [4096, 0])
def test_filters_never_lose_hits(coll, threshold):
    docs = make_docs(900)
    coll.feed(docs)
    coll.exact_threshold = threshold
    q = np.random.RandomState(3).randn(DIM)
    flt = Filter(folder="/photos/cats", formats=["png"], min_width=300)
    def keep(d):
        return d.path.startswith("/photos/cats/") and d.format == "PNG" and d.width >= 300

    expected = brute(docs, q, 10, keep)
    res = coll.search(q, field="tiny_image", hits=10, filter=flt)
    assert len(res.hits) == 10
    assert [h.docid for h in res.hits] == expected or len(set(h.docid for h in res.hits) & set(expected)) >= 9
    assert all(keep(docs[int(h.docid[1:])]) for h in res.hits)


@pytest.mark.parametrize("chunk_rows", [1, 7, 10**6])
def test_exact_filtered_search_scores_every_passing_row_whatever_the_chunks(coll, monkeypatch, chunk_rows):
    """Exact search gathers a filter's scattered rows a chunk at a time: every chunk, the last one short, is
    scored into its own place."""
    monkeypatch.setattr(vectors, "GATHER_BYTES", 4 * DIM * chunk_rows)
    docs = make_docs(300)
    coll.feed(docs)
    q = np.random.RandomState(5).randn(DIM)
    for low in (0, 200, 299):
        res = coll.search(q, field="tiny_image", hits=400, target_hits=400, approximate=False,
                          filter=Filter(min_width=low))
        expected = brute(docs, q, 400, lambda d, low=low: d.width >= low)
        assert [h.docid for h in res.hits] == expected and res.plan == "exact"
        assert [h.relevance for h in res.hits] == pytest.approx(sorted((h.relevance for h in res.hits), reverse=True))


def test_graph_skips_dead_slots_and_tiny_filters_without_losing_hits(coll):
    """Removed documents stay in the graph as dead slots: the selector keeps them out of every answer."""
    docs = make_docs(1000)
    coll.feed(docs)
    coll.exact_threshold = 0
    q = np.random.RandomState(5).randn(DIM)
    coll.search(q, field="tiny_image", hits=10)  # build the graph with everything in it
    for d in docs:
        if int(d.docid[1:]) % 10:
            coll.remove(d.docid)
    survivors = [d for d in docs if int(d.docid[1:]) % 10 == 0]
    res = coll.search(q, field="tiny_image", hits=10, target_hits=50)
    assert res.plan == "hnsw" and len(res.hits) == 10
    assert all(int(h.docid[1:]) % 10 == 0 for h in res.hits)
    assert len(set(h.docid for h in res.hits) & set(brute(survivors, q, 10))) >= 9
    # a filter passing 8 of 100 documents (> Vespa's 5% approximate-threshold) goes through the graph
    flt = Filter(min_width=1020)
    keep = lambda d: d.width >= 1020  # noqa: E731
    assert sum(keep(d) for d in survivors) == 8
    res = coll.search(q, field="tiny_image", hits=5, target_hits=5, filter=flt)
    assert res.plan == "hnsw" and len(res.hits) == 5 and all(keep(docs[int(h.docid[1:])]) for h in res.hits)
    assert len(set(h.docid for h in res.hits) & set(brute(survivors, q, 5, keep))) >= 4
    # below it (3 of 100), exact search: the best 2 exactly
    flt, keep = Filter(min_width=1070), (lambda d: d.width >= 1070)  # noqa: E731
    res = coll.search(q, field="tiny_image", hits=5, target_hits=2, filter=flt)
    assert res.plan == "exact" and [h.docid for h in res.hits] == brute(survivors, q, 2, keep)


def test_a_graph_that_cannot_reach_enough_slots_falls_back_to_exact(coll, monkeypatch):
    """When even a full-width beam finds too few candidates (a part of the graph unreachable), every candidate
    slot is scored exactly: live ones, and only the filter's when there is a filter."""
    from clipseek.hnsw import AnnIndex
    docs = make_docs(600)
    coll.feed(docs)
    coll.exact_threshold = 0
    for d in docs[:60]:
        coll.remove(d.docid)
    survivors, q = docs[60:], np.random.RandomState(7).randn(DIM)
    coll.search(q, field="tiny_image")  # build the graph, then make it reach nothing
    monkeypatch.setattr(AnnIndex, "search", lambda self, *a, **kw: np.zeros(0, dtype=np.int64))
    res = coll.search(q, field="tiny_image", hits=10)
    assert res.plan == "hnsw" and [h.docid for h in res.hits] == brute(survivors, q, 10)
    flt, keep = Filter(folder="/photos/cats"), (lambda d: d.path.startswith("/photos/cats/"))  # noqa: E731
    res = coll.search(q, field="tiny_image", hits=10, filter=flt)  # (a scan of them all costs less here)
    assert res.plan == "exact" and [h.docid for h in res.hits] == brute(survivors, q, 10, keep)
    monkeypatch.setattr(vectors, "SCAN_ROWS_PER_VIEW", 0)  # as when the filter's slots are too many to scan
    res = coll.search(q, field="tiny_image", hits=10, filter=flt)
    assert res.plan == "hnsw" and [h.docid for h in res.hits] == brute(survivors, q, 10, keep)


@pytest.fixture(scope="module")
def sided(tmp_path_factory):
    """8,000 clustered 64-dim documents with ``height`` = their percentile (0-99) along one random direction, so a
    filter on height passes the documents to one side of the collection, and ``width`` = their number % 100, so
    a filter on width passes documents anywhere; the graph built."""
    rng = np.random.default_rng(11)
    dim, n = 64, 8000
    data = around(rng, unit_centres(rng, 40, dim), n, 1.0).astype(np.float32)
    height = np.empty(n, np.int64)
    height[np.argsort(data @ rng.standard_normal(dim))] = np.arange(n) * 100 // n
    c = Collection.create(tmp_path_factory.mktemp("sided") / "c", exact_threshold=0)
    c.add_field("f_image", "m", dim)
    c.feed([Document(str(i), width=i % 100, height=int(height[i]), vectors={"f_image": v})
            for i, v in enumerate(data)])
    c.search(data[0], field="f_image")
    yield c, data, height, around(rng, data, 60, 0.3)
    c.close()


def exact_hits(data, keep, q, k=10):
    order = np.lexsort((np.arange(len(data)), -(data @ q) / np.linalg.norm(data, axis=1)))
    return [str(i) for i in order[keep[order]][:k]]


def test_a_filter_that_follows_the_vectors_does_not_lose_hits_to_the_walk(sided):
    """A walk through the graph keeps a view sized for a filter independent of the vectors. A filter passing the
    documents furthest to one side leaves that walk, which heads for the query, few of them to see (recall@10 here
    ~0.97 at 30 %, ~0.99 at 50 %): the beam's links pass such a filter more often than chance allows, and the
    search turns to a wide walk, or, costing less (at 10 % here), scores every passing document from its code."""
    c, data, height, queries = sided
    for top in (9, 29, 49):
        found, plans = 0, set()
        for q in queries:
            res = c.search(q, field="f_image", hits=10, target_hits=10, explore_additional_hits=38,
                           filter=Filter(max_height=top))
            found += len(set(exact_hits(data, height <= top, q)) & {h.docid for h in res.hits})
            plans.add(res.plan)
        assert found / 600 >= 0.99, (top, found, plans)
        assert top > 9 or "scan" in plans
    found = 0  # independent of the vectors: the walk
    for q in queries:
        res = c.search(q, field="f_image", hits=10, target_hits=10, explore_additional_hits=38,
                       filter=Filter(max_width=9))
        found += len(set(exact_hits(data, np.arange(len(data)) % 100 <= 9, q)) & {h.docid for h in res.hits})
        assert res.plan == "hnsw"
    assert found / 600 >= 0.98, found


def test_a_scan_finds_exact_searchs_hits_and_relevance(sided):
    """A scan ranks the filter's documents by their int8 codes and scores the best few times targetHits from
    their float32 rows: the hits and relevance of exact search."""
    c, data, height, queries = sided
    keep = height <= 9
    unit_rows = data / np.linalg.norm(data, axis=1, keepdims=True)
    scanned = 0
    for q in queries:
        res = c.search(q, field="f_image", hits=10, target_hits=10, explore_additional_hits=38,
                       filter=Filter(max_height=9))
        if res.plan != "scan":
            continue
        scanned += 1
        assert [h.docid for h in res.hits] == exact_hits(data, keep, q)
        cos = unit_rows[[int(h.docid) for h in res.hits]] @ (q / np.linalg.norm(q))
        assert [h.relevance for h in res.hits] == pytest.approx(1 / (1 + np.arccos(np.clip(cos, -1, 1))), abs=1e-6)
    assert scanned >= 30, scanned
    # targetHits 200: 4 × 200 is more than all 800 of them, every one scored from its row, as in exact search
    res = c.search(queries[0], field="f_image", hits=200, target_hits=200, filter=Filter(max_height=9))
    assert res.plan == "exact" and [h.docid for h in res.hits] == exact_hits(data, keep, queries[0], 200)


def test_yql_nearest_neighbor_with_predicates(coll):
    docs = make_docs(60)
    coll.feed(docs)
    q = np.random.RandomState(1).randn(DIM)
    yql = ('select * from sources * where ({targetHits:5, approximate:false}nearestNeighbor(tiny_image, q)) '
           'and format contains "png" and height < 100;')
    res = coll.search(yql_query=yql, query_tensors={"q": q.tolist()})
    assert [h.docid for h in res.hits] == brute(docs, q, 5, lambda d: d.format == "PNG" and d.height < 100)
    old_style = coll.search(yql_query='select image_file_name from sources image_search where '
                                      '[{"targetHits": 3}]nearestNeighbor(tiny_image, q)', query_tensors={"q": q})
    assert [h.docid for h in old_style.hits] == brute(docs, q, 3)
    assert old_style.hits[0].fields["image_file_name"].endswith(".jpg")
    assert set(old_style.hits[0].fields) == {"image_file_name"}  # the select list is honoured, as in Vespa 8
    assert {"image_file_name", "width", "path"} <= set(res.hits[0].fields)


def test_yql_true_or_and_limit(coll):
    coll.feed(make_docs(12))
    everything = coll.search(yql_query="select * from sources * where true limit 20", query_tensors={})
    assert everything.total_count == 12 and all(h.relevance == 0 for h in everything.hits)
    either = coll.search(yql_query='select * from sources * where width = 100 or width = 105', query_tensors={})
    assert sorted(h.docid for h in either.hits) == ["d0", "d5"]


@pytest.mark.parametrize("bad, column", [
    ("select * where true", 10),
    ("select * from sources * where nearestNeighbor(tiny_image, q)", 31),
    ("select * from sources * where {targetHits:0}nearestNeighbor(tiny_image, q)", 45),
    ("select * from sources * where width ~ 3", 37),
    ("select * from sources * where (width = 3", 41),
    ("select * from sources * where true order by width", 36),
])
def test_malformed_yql_names_the_position(coll, bad, column):
    with pytest.raises(YqlSyntaxError) as info:
        coll.search(yql_query=bad, query_tensors={})
    assert f"column {column}" in str(info.value)


def test_bad_vectors_and_fields_are_typed_errors(coll):
    coll.feed(make_docs(3))
    with pytest.raises(VectorError, match="takes 16 values"):
        coll.feed([Document("x", vectors={"tiny_image": np.ones(8)})])
    with pytest.raises(VectorError, match="NaN"):
        coll.feed([Document("x", vectors={"tiny_image": [float("nan")] * DIM})])
    with pytest.raises(VectorError, match="'x': field tiny_image is too long to store .* scale it down"):
        coll.feed([Document("x", vectors={"tiny_image": [2e37] * DIM})])  # finite, but its length is not
    with pytest.raises(VectorError, match="16-dim"):
        coll.search(np.ones(512), field="tiny_image")
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(VectorError, match="NaN or infinity"):
            coll.search([1.0] * (DIM - 1) + [bad], field="tiny_image")
    for scale in (2e37, 1e-30):  # finite, however large or small: the same hits, the same relevance
        same = coll.search(np.arange(DIM) * scale, field="tiny_image").hits
        assert [(h.docid, h.relevance) for h in same] == [
            (h.docid, pytest.approx(h.relevance)) for h in coll.search(np.arange(DIM), field="tiny_image").hits]
    with pytest.raises(FieldError, match="tiny_image"):
        coll.search(np.ones(DIM), field="vit_b_32_image")
    with pytest.raises(VectorError, match="encoded with ViT-B/32"):
        coll.search(np.ones(DIM), field="tiny_image", model="ViT-B/32")
    with pytest.raises(FieldError, match="holds 16-dim vectors of model tiny"):
        coll.add_field("tiny_image", "ViT-B/32", 512)
    with pytest.raises(QueryError):
        coll.search(np.ones(DIM), field="tiny_image", hits=-1)
    assert len(coll.search(np.ones(DIM), field="tiny_image", hits=10**9).hits) == 3  # capped, not an error
    assert len(coll) == 3 and coll.get("x") is None  # nothing half-written


def test_live_updates_visible_to_next_search_and_remove_excludes(coll):
    docs = make_docs(50)
    coll.feed(docs)
    target = docs[10].vectors["tiny_image"]
    assert coll.search(target, field="tiny_image", hits=1).hits[0].docid == "d10"
    coll.remove("d10")
    assert "d10" not in [h.docid for h in coll.search(target, field="tiny_image", hits=50, target_hits=50).hits]
    coll.update("d20", vectors={"tiny_image": target})
    assert coll.search(target, field="tiny_image", hits=1).hits[0].docid == "d20"
    coll.exact_threshold = 0  # same through the graph
    assert coll.search(target, field="tiny_image", hits=1).hits[0].docid == "d20"
    coll.remove("d20")
    assert coll.search(target, field="tiny_image", hits=1).hits[0].docid != "d20"


def test_get_put_roundtrip_exact_and_update_keeps_other_fields(coll):
    coll.add_field("rn50_image", "RN50", 4)
    vec = np.random.RandomState(0).randn(DIM).astype(np.float32)
    coll.put(Document("p", image_file_name="p.jpg", width=3, vectors={"tiny_image": vec, "rn50_image": [1, 2, 3, 4]}))
    coll.update("p", vectors={"rn50_image": [4, 3, 2, 1]})
    got = coll.get("p")
    assert got.image_file_name == "p.jpg" and got.width == 3
    np.testing.assert_array_equal(got.vectors["tiny_image"], vec)
    np.testing.assert_array_equal(got.vectors["rn50_image"], [4, 3, 2, 1])
    assert coll.update("missing", attributes={"width": 1}) is False
    coll.put(Document("p", image_file_name="p2.jpg"))  # put replaces the whole document
    assert coll.get("p").vectors == {} and coll.get("p").width is None


def test_searches_run_while_another_thread_feeds(coll):
    coll.feed(make_docs(100))
    errors = []
    stop = threading.Event()

    def reader():
        rng = np.random.RandomState(1)
        while not stop.is_set():
            try:
                res = coll.search(rng.randn(DIM), field="tiny_image", hits=5)
                assert len(res.hits) == 5
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    extra = make_docs(300, seed=5)
    for i in range(0, 300, 10):
        batch = [Document(f"n{j}", vectors=extra[j].vectors) for j in range(i, i + 10)]
        coll.feed(batch)
        probe = coll.search(batch[0].vectors["tiny_image"], field="tiny_image", hits=1)
        assert probe.hits[0].docid == batch[0].docid  # visible to the very next search
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and len(coll) == 400


def test_reopen_keeps_everything_and_the_graph(tmp_path):
    docs = make_docs(300)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(docs)
        q = np.ones(DIM)
        before = [h.docid for h in c.search(q, field="tiny_image", hits=10, target_hits=50).hits]
    assert list((tmp_path / "c" / "ann").glob("tiny_image.300.faiss"))
    with Collection.open(tmp_path / "c", exact_threshold=0) as c:
        assert c.vector_index("tiny_image").graph is not None  # loaded, not rebuilt
        assert [h.docid for h in c.search(q, field="tiny_image", hits=10, target_hits=50).hits] == before
        c.remove("d0")
        c.feed(make_docs(1, seed=9))  # d0 again, new vector: graph snapshot is now stale
    with Collection.open(tmp_path / "c", exact_threshold=0) as c:
        res = c.search(make_docs(1, seed=9)[0].vectors["tiny_image"], field="tiny_image", hits=1)
        assert res.hits[0].docid == "d0" and len(c) == 300


def test_a_snapshot_of_an_older_graph_format_is_rebuilt_not_loaded(tmp_path):
    docs = make_docs(300)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(docs)
        c.search(np.ones(DIM), field="tiny_image")
    sidecar = tmp_path / "c" / "ann" / "tiny_image.300.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": "usearch-i8-ip-1"}))  # older codes
    with Collection.open(tmp_path / "c", exact_threshold=0) as c:
        assert c.vector_index("tiny_image").graph is None  # not loaded: rebuilt by the first search
        assert c.search(docs[5].vectors["tiny_image"], field="tiny_image", hits=1).hits[0].docid == "d5"
    assert json.loads(sidecar.read_text())["format"] == SNAPSHOT_FORMAT


def test_an_older_clipseeks_graph_file_is_reported_then_replaced(tmp_path):
    """A usearch snapshot (clipseek before faiss) is never loaded: `check` names it, the next snapshot removes it."""
    from clipseek.check import check

    docs = make_docs(300)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(docs)
    old = tmp_path / "c" / "ann" / "tiny_image.300.usearch"
    old.parent.mkdir(exist_ok=True)
    old.write_bytes(b"\0" * 4096)
    old.with_suffix(".json").write_text(json.dumps({"format": "usearch-i8-ip-3", "covered": 300}))
    assert any("tiny_image.300.usearch" in p for p in check(tmp_path / "c").problems)
    with Collection.open(tmp_path / "c", exact_threshold=0) as c:
        assert c.search(docs[5].vectors["tiny_image"], field="tiny_image", hits=1).hits[0].docid == "d5"
    assert sorted(p.name for p in old.parent.iterdir()) == ["tiny_image.300.faiss", "tiny_image.300.json",
                                                             "tiny_image.300.r4"]


def test_bad_folders_and_locks(tmp_path):
    with pytest.raises(NotACollectionError, match="does not exist"):
        Collection.open(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotACollectionError):
        Collection.open(tmp_path / "file")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "collection.sqlite").write_text("not sqlite at all" * 100)
    with pytest.raises(NotACollectionError, match="not a SQLite database"):
        Collection.open(tmp_path / "junk")
    c = Collection.create(tmp_path / "c")
    with pytest.raises(CollectionLockedError, match="another process"):
        Collection.open(tmp_path / "c")
    reader = Collection.open(tmp_path / "c", readonly=True)
    with pytest.raises(ReadOnlyError):
        reader.add_field("x_image", "x", 3)
    c.add_field("x_image", "x", 3)
    c.feed([Document("a", vectors={"x_image": [1, 0, 0]})])
    assert reader.search([1, 0, 0], field="x_image").hits[0].docid == "a"  # sees the writer's commit
    reader.close()
    c.close()


def test_newer_format_is_refused_with_upgrade_message(tmp_path):
    import sqlite3
    Collection.create(tmp_path / "c").close()
    db = sqlite3.connect(tmp_path / "c" / "collection.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(CollectionVersionError, match="upgrade clipseek"):
        Collection.open(tmp_path / "c")


def test_two_processes_creating_one_collection_migrate_it_once(tmp_path):
    """A reader that opens a collection while its creator is still migrating it waits, then sees it migrated."""
    import sqlite3

    from clipseek import store
    from clipseek.collection import _lock
    folder = tmp_path / "c"
    folder.mkdir()
    lock = _lock(folder)  # as Collection.open does before it migrates
    creator = sqlite3.connect(folder / store.DB_FILE, isolation_level=None)
    creator.execute("PRAGMA journal_mode=WAL")  # as store.connect does first
    creator.execute("BEGIN IMMEDIATE")  # the creator holds the write lock, mid-migration, version still 0
    for migrate in store.MIGRATIONS:
        migrate(creator)
    creator.execute(f"PRAGMA user_version={store.FORMAT_VERSION}")
    opened, failed = [], []

    def open_reader():
        try:
            with Collection.open(folder, readonly=True) as reader:
                opened.append(len(reader))
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            failed.append(exc)

    thread = threading.Thread(target=open_reader)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # it read version 0 and now waits for the creator's lock
    creator.execute("COMMIT")
    creator.close()
    os.close(lock)
    thread.join(30)
    assert failed == [] and opened == [0]


def test_opening_a_made_collection_for_writing_commits_nothing(tmp_path):
    """Readers reload everything after another process's commit: a writer that only opens must not make one."""
    import sqlite3
    Collection.create(tmp_path / "c").close()
    other = sqlite3.connect(tmp_path / "c" / "collection.sqlite")
    before = other.execute("PRAGMA data_version").fetchone()[0]
    Collection.open(tmp_path / "c").close()
    assert other.execute("PRAGMA data_version").fetchone()[0] == before
    other.close()


def test_format_1_collections_are_migrated_by_a_writer_never_by_a_reader(tmp_path):
    import sqlite3
    with Collection.create(tmp_path / "c") as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(make_docs(5))
    db = sqlite3.connect(tmp_path / "c" / "collection.sqlite")  # back to format 1: no namespace column
    db.execute("ALTER TABLE documents DROP COLUMN namespace")
    db.execute("DROP INDEX documents_taken")  # nor the photo attributes of format 3
    from clipseek.schema import PHOTO_ATTRIBUTES

    for name in PHOTO_ATTRIBUTES:
        db.execute(f"ALTER TABLE documents DROP COLUMN {name}")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    before = (tmp_path / "c" / "collection.sqlite").read_bytes()
    with pytest.raises(NotACollectionError, match="needs a migration.*clipseek index"):
        Collection.open(tmp_path / "c", readonly=True)
    assert (tmp_path / "c" / "collection.sqlite").read_bytes() == before  # nothing written: not even the WAL
    wal = tmp_path / "c" / "collection.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    with Collection.open(tmp_path / "c") as c:
        assert len(c) == 5 and c.get("d3").namespace is None
    with Collection.open(tmp_path / "c", readonly=True) as reader:
        assert reader.search(np.ones(DIM), field="tiny_image", hits=5).hits[0].namespace is None
    with Collection.open(tmp_path / "c") as c:
        c.feed([Document("other", namespace="photos", vectors={"tiny_image": np.ones(DIM)})])
        c.put(Document("mine", namespace=c.namespace, vectors={"tiny_image": -np.ones(DIM)}))
        assert c.get("other").namespace == "photos" and c.get("mine").namespace is None
        assert c.search(np.ones(DIM), field="tiny_image", hits=1).hits[0].namespace == "photos"


def test_documents_by_namespace(coll):
    coll.feed(make_docs(3))
    coll.feed([Document("p1", namespace="photos", vectors={"tiny_image": np.ones(DIM)})])
    assert coll.namespaces() == {None, "photos"}
    assert [d.docid for d in coll.iter_documents(only_namespace=True, namespace="photos")] == ["p1"]
    assert [d.docid for d in coll.iter_documents(only_namespace=True)] == ["d0", "d1", "d2"]
    assert len(list(coll.iter_documents())) == 4


def test_a_put_under_another_namespace_moves_the_document(coll):
    coll.feed([Document("x", namespace="a", vectors={"tiny_image": np.ones(DIM)})])
    coll.put(Document("x", namespace="b", vectors={"tiny_image": np.ones(DIM)}))
    assert coll.get("x").namespace == "b" and coll.namespaces() == {"b"}


def test_the_graph_beam_is_rescored_not_just_its_first_hits(tmp_path, monkeypatch):
    """int8 codes rank near neighbours roughly; re-scoring the beam's best (2 × targetHits, at least targetHits +
    16, all of a smaller beam) gives float32's order back."""
    from clipseek.hnsw import AnnIndex
    rescored = []  # how many slots each search re-scores: apart (cosines), or with the walk in one call (nearest)
    cosines, nearest = AnnIndex.cosines, AnnIndex.nearest
    monkeypatch.setattr(AnnIndex, "cosines",
                        lambda self, q, slots: rescored.append(len(slots)) or cosines(self, q, slots))

    def spy(self, *args):
        found = nearest(self, *args)
        if found is not None:
            rescored.append(found[3])
        return found

    monkeypatch.setattr(AnnIndex, "nearest", spy)
    rng = np.random.default_rng(3)
    data = around(rng, unit_centres(rng, 20, 512), 3000, 0.6)
    queries = around(rng, data, 30, 0.3)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("big_image", "big", 512)
        c.feed([Document(str(i), vectors={"big_image": v}) for i, v in enumerate(data)])
        found = 0
        for q in queries:
            cos = (data @ q) / np.linalg.norm(data, axis=1)
            truth = {str(i) for i in np.argsort(-cos)[:10]}
            res = c.search(q, field="big_image", hits=10, target_hits=10, explore_additional_hits=90)
            found += len(truth & {h.docid for h in res.hits})
        assert res.plan == "hnsw" and found / 300 >= 0.97, found
        assert set(rescored) == {26}
        for target, explore, expected in ((3, 30, 19), (40, 60, 80), (40, 10, 50), (100, 0, 100)):
            rescored.clear()
            res = c.search(queries[0], field="big_image", hits=10, target_hits=target, explore_additional_hits=explore)
            assert rescored == [expected] and len(res.hits) == min(10, target)


def test_the_graph_codes_use_the_int8_range_and_rank_near_float32(tmp_path):
    """Codes at a fixed × 127 (what usearch made of float32): a 512-dim unit vector's components (~0.04) would
    use ±20 of ±127, and the graph's own top 10 would rank far from float32's (recall ~0.8)."""
    rng = np.random.default_rng(5)
    data = around(rng, unit_centres(rng, 20, 512), 3000, 0.6).astype(np.float32)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("big_image", "big", 512)
        c.feed([Document(str(i), vectors={"big_image": v}) for i, v in enumerate(data)])
        c.search(data[0], field="big_image")
        ann = c.vector_index("big_image").graph
        codes = np.abs(ann.codes(np.arange(3000)).astype(np.int32))
        assert codes.max() == 127 and np.percentile(codes, 99) > 60
        found = 0
        for q in around(rng, data, 50, 0.3):
            truth = set(np.argsort(-(unit @ q))[:10].tolist())
            found += len(truth & set(ann.search(q, 10, 40)[:10].tolist()))  # the graph's order, not re-scored
        assert found / 500 >= 0.9, found


def test_a_query_along_one_axis_saturates_its_codes_rather_than_wrapping(tmp_path):
    """A component past the int8 range must saturate at 127: wrapped, e_i's code would point the other way."""
    rng = np.random.default_rng(4)
    axes = np.eye(20, 64) + rng.standard_normal((20, 64)) * 0.05
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("f_image", "m", 64)
        c.feed([Document(str(i), vectors={"f_image": v}) for i, v in enumerate(rng.standard_normal((3000, 64)))])
        c.search(np.ones(64), field="f_image")  # the graph, and its code scale, from these rows
        c.feed([Document(f"axis{i}", vectors={"f_image": v}) for i, v in enumerate(axes)])
        found = [c.search(np.eye(64)[i], field="f_image", hits=1, target_hits=1,
                          explore_additional_hits=20).hits[0].docid for i in range(20)]
        assert sum(d == f"axis{i}" for i, d in enumerate(found)) >= 19, found


def test_a_graph_full_of_replaced_documents_still_searches_a_whole_beam(tmp_path):
    """Replaced documents stay in the graph as dead slots; the beam widens until targetHits + explore live
    candidates are found (as Vespa's filtered HNSW search), so recall does not sink with the share of dead slots."""
    rng = np.random.default_rng(8)
    centres = unit_centres(rng, 50, 128)

    def draw(n):
        return around(rng, centres, n, 1.5).astype(np.float32)
    data = draw(5000)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("big_image", "big", 128)
        c.feed([Document(str(i), vectors={"big_image": v}) for i, v in enumerate(data)])
        c.search(data[0], field="big_image")  # the graph now holds all 5,000
        data[:4000] = draw(4000)  # 80% of the documents replaced: 4,000 dead slots
        c.feed([Document(str(i), vectors={"big_image": v}) for i, v in enumerate(data[:4000])])
        unit = data / np.linalg.norm(data, axis=1, keepdims=True)
        found = 0
        for q in around(rng, data, 100, 0.3):
            truth = {str(i) for i in np.argsort(-(unit @ q))[:10]}
            res = c.search(q, field="big_image", hits=10, target_hits=10, explore_additional_hits=10)
            found += len(truth & {h.docid for h in res.hits})
        assert res.plan == "hnsw" and found / 1000 >= 0.99, found  # 0.98 when the beam stopped at 10 live


def test_visit_pages_through_everything(coll):
    coll.feed(make_docs(25))
    seen, cont = [], 0
    while cont is not None:
        docs, cont = coll.visit(continuation=cont, count=10)
        seen += [d.docid for d in docs]
    assert seen == [f"d{i}" for i in range(25)]


def test_reader_maps_the_graph_and_follows_the_writer(tmp_path):
    docs = make_docs(200)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(docs)
        c.search(np.ones(DIM), field="tiny_image")  # builds the graph; close() snapshots it
    reader = Collection.open(tmp_path / "c", readonly=True, exact_threshold=0)
    assert reader.vector_index("tiny_image").graph.is_view
    q = docs[7].vectors["tiny_image"]
    assert reader.search(q, field="tiny_image", hits=1).hits[0].docid == "d7"
    with Collection.open(tmp_path / "c", exact_threshold=0) as writer:
        writer.remove("d7")
        writer.feed([Document("new", vectors={"tiny_image": q})])
    res = reader.search(q, field="tiny_image", hits=2)
    assert res.plan == "hnsw" and res.hits[0].docid == "new" and "d7" not in [h.docid for h in res.hits]
    reader.close()


def test_graph_first_then_onnxruntime_does_not_crash():
    # a server maps the graph before it loads a model; graph libraries have crashed onnxruntime 1.32 that way
    # (usearch 2.26 did, which is one reason clipseek moved to faiss)
    import subprocess
    import sys
    code = ("import numpy as np\n"
            "from clipseek.hnsw import AnnIndex, HnswParams\n"
            "a = AnnIndex(4, HnswParams())\n"
            "a.extend(np.eye(4, dtype=np.float32), 4)\n"
            "import onnxruntime\n"
            "from clipseek import load_model\n"
            "load_model('tiny').embed_texts(['a red circle'])\n"
            "print('ok', a.search(np.ones(4), 2, 10).tolist() != [])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok True", result.stderr[-500:]


def _hits(c, queries, **kw):
    return [[(h.docid, h.relevance, h.fields, h.namespace) for h in c.search(q, field="tiny_image", hits=8, **kw).hits]
            for q in queries]


def _warm(c, q):
    for _ in range(Summaries.WARM_AFTER):
        c.search(q, field="tiny_image", hits=1)
    assert c.summaries.in_memory and c.summaries.memory_bytes > 0


def test_hits_from_the_in_memory_summaries_match_sqlite_through_writes(tmp_path):
    """Once warm, hits are filled from memory; after each kind of write they equal a cold reader's (SQLite's)."""
    docs = make_docs(60)
    docs[3].namespace, docs[4].content_hash, docs[5].indexed_at = "photos", "abc", 5.5
    queries = [d.vectors["tiny_image"] for d in docs[:6]]
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(docs)
        cold = _hits(c, queries) + _hits(c, queries, filter=Filter(folder="/photos/cats"))
        assert not c.summaries.in_memory
        _warm(c, queries[0])
        assert _hits(c, queries) + _hits(c, queries, filter=Filter(folder="/photos/cats")) == cold

        def same_as_cold():
            with Collection.open(tmp_path / "c", readonly=True, exact_threshold=0) as reader:
                assert not reader.summaries.in_memory
                assert _hits(c, queries) == _hits(reader, queries)

        c.update("d1", attributes={"path": "/photos/moved/1.jpg", "width": 640})
        c.put(Document("d2", namespace="other", width=7, vectors={"tiny_image": queries[2]}))
        c.feed([Document("n1", image_file_name="n.jpg", vectors={"tiny_image": queries[0]})])
        c.remove("d0")
        same_as_cold()
        moved = next(f for d, _, f, _ in _hits(c, queries)[1] if d == "d1")
        assert moved["path"] == "/photos/moved/1.jpg" and moved["width"] == 640


def test_a_warm_reader_sees_attribute_updates_of_another_writer(tmp_path):
    docs = make_docs(40)
    q = docs[9].vectors["tiny_image"]
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("tiny_image", "tiny", DIM)
        c.feed(docs)
    with Collection.open(tmp_path / "c", readonly=True, exact_threshold=0) as reader:
        _warm(reader, q)
        with Collection.open(tmp_path / "c") as writer:
            writer.update("d9", attributes={"image_file_name": "renamed.jpg"})
        assert reader.search(q, field="tiny_image", hits=1).hits[0].fields["image_file_name"] == "renamed.jpg"
        _warm(reader, q)
        assert reader.search(q, field="tiny_image", hits=1).hits[0].fields["image_file_name"] == "renamed.jpg"
