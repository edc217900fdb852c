"""clipseek.filter_first: the filtered walk through passing slots only (ACORN-1), on its own and as the engine's
plan for filters passing a small share of the documents."""

import numpy as np
import pytest

from clipseek import vectors
from clipseek.collection import Collection, Document, Filter
from clipseek.hnsw import AnnIndex, HnswParams

from ..conftest import need_module

need_module("numba", "it installs with clipseek (pyproject.toml) where numba has wheels")

PARAMS = HnswParams(16, 100)


def clustered(rng, n, dim, clusters=40, noise=1.0):
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)) * (noise / dim ** 0.5)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def graph_data():
    rng = np.random.default_rng(21)
    x = clustered(rng, 6000, 48)
    graph = AnnIndex(48, PARAMS)
    graph.extend(x, len(x))
    queries = x[rng.integers(0, len(x), 80)] + rng.standard_normal((80, 48)).astype(np.float32) * 0.05
    return graph, x, queries, rng


def by_codes(graph, q, slots):
    """What the walk ranks by: the int8 codes' inner product with the query."""
    return graph.codes(slots).astype(np.float64) @ q.astype(np.float64)


def nearest_by_codes(graph, q, slots, k):
    return set(slots[np.argsort(-by_codes(graph, q, slots), kind="stable")[:k]].tolist())


@pytest.mark.parametrize("share", [0.05, 0.1, 0.25])
def test_the_walk_returns_passing_slots_only_and_finds_the_nearest(graph_data, share):
    """Every slot it returns passes, once, nearest first by the codes; its best 10 are the 10 nearest passing slots
    (by the codes it ranks with) for ≥ 97 % of them. A walk that only followed passing links, without the two-hop
    step through failing ones, strands in a few clusters at these shares."""
    graph, x, queries, rng = graph_data
    allow = rng.random(len(x)) < share
    passing = np.flatnonzero(allow)
    found = 0
    for q in queries:
        beam = graph.filter_first(q, 40, allow)
        assert len(beam) == 40 and len(set(beam.tolist())) == 40 and allow[beam].all()
        assert np.all(np.diff(by_codes(graph, q, beam)) <= 1e-3)  # nearest first
        found += len(set(beam[:10].tolist()) & nearest_by_codes(graph, q, passing, 10))
    assert found / (10 * len(queries)) >= 0.97, found


def test_a_mask_shorter_than_the_graph_fails_the_slots_past_its_end_and_new_slots_are_walked(graph_data):
    graph, x, queries, rng = graph_data
    allow = np.ones(3000, bool)
    for q in queries[:20]:
        assert graph.filter_first(q, 30, allow).max() < 3000
    grown = AnnIndex(48, PARAMS)  # a graph that grows after its first walks: its marks grow with it
    grown.extend(x, 2000)
    grown.filter_first(queries[0], 10, np.ones(2000, bool))
    grown.extend(x, len(x))
    everyone = np.ones(len(x), bool)
    for slot in (2500, 5999):
        assert grown.filter_first(x[slot], 10, everyone)[0] == slot


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    rng = np.random.default_rng(8)
    data = clustered(rng, 8000, 32)
    widths = rng.permutation(8000) % 100
    c = Collection.create(tmp_path_factory.mktemp("ff") / "c", exact_threshold=0)
    c.add_field("f_image", "m", 32)
    c.feed([Document(str(i), width=int(w), vectors={"f_image": v}) for i, (v, w) in enumerate(zip(data, widths))])
    c.search(data[0], field="f_image")
    yield c, data, widths, rng
    c.close()


def test_the_engine_walks_small_shares_filter_first_and_keeps_exact_searchs_hits(coll, monkeypatch):
    """A filter passing 5-25 % goes through the filter-first walk (faiss's walk is never asked), and finds what
    exact filtered search finds (recall@10 ≥ 0.99); with the walk turned off, faiss's walk finds them too. A
    filter passing 30 % or more is faiss's walk either way."""
    c, data, widths, rng = coll
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.integers(0, 8000, 40)] + rng.standard_normal((40, 32)).astype(np.float32) * 0.05
    calls = {"ff": 0, "faiss": 0}
    ff, walk = AnnIndex.filter_first, AnnIndex.search

    def spy_ff(self, *a, **kw):
        calls["ff"] += 1
        return ff(self, *a, **kw)

    def spy_walk(self, *a, **kw):
        calls["faiss"] += 1
        return walk(self, *a, **kw)

    monkeypatch.setattr(AnnIndex, "filter_first", spy_ff)
    monkeypatch.setattr(AnnIndex, "search", spy_walk)
    for first in (True, False):
        monkeypatch.setattr(vectors, "FILTER_FIRST", first)
        for top in (4, 9, 24):
            calls.update(ff=0, faiss=0)
            keep = np.flatnonzero(widths <= top)
            found = 0
            for q in queries:
                res = c.search(q, field="f_image", hits=10, target_hits=10, explore_additional_hits=30,
                               filter=Filter(max_width=top))
                assert res.plan == "hnsw"
                truth = keep[np.lexsort((keep, -(unit[keep] @ q)))[:10]]
                found += len({str(i) for i in truth} & {h.docid for h in res.hits})
            assert found / 400 >= 0.99, (first, top, found)
            assert (calls["ff"], calls["faiss"] > 0) == ((40, False) if first else (0, True)), (first, top, calls)
    monkeypatch.setattr(vectors, "FILTER_FIRST", True)
    calls.update(ff=0, faiss=0)
    c.search(queries[0], field="f_image", hits=10, filter=Filter(max_width=29))
    assert calls["ff"] == 0 and calls["faiss"] > 0


def test_a_filter_below_the_approximate_threshold_scans_its_own_rows_for_exact_searchs_hits(coll, monkeypatch):
    """Below Vespa's approximate-threshold (5 %) the search is exact in Vespa. Where the graph is built, the
    filter's rows alone are ranked by their int8 codes and the best few × targetHits scored from float32: exact
    search's hits and relevance. Without numba, exact search itself, as without the graph."""
    c, data, widths, rng = coll
    queries = data[rng.integers(0, 8000, 30)] + rng.standard_normal((30, 32)).astype(np.float32) * 0.05
    for q in queries:
        for top in (0, 3):  # 1 % and 4 %: 80 and 320 documents, more than the 74 a scan scores from float32
            res = c.search(q, field="f_image", hits=10, target_hits=10, filter=Filter(max_width=top))
            exact = c.search(q, field="f_image", hits=10, target_hits=10, filter=Filter(max_width=top),
                             approximate=False)
            assert res.plan == "scan" and exact.plan == "exact"
            assert [h.docid for h in res.hits] == [h.docid for h in exact.hits]
            assert [h.relevance for h in res.hits] == pytest.approx([h.relevance for h in exact.hits], abs=1e-6)
    monkeypatch.setattr(vectors, "FILTER_FIRST", False)
    assert c.search(queries[0], field="f_image", hits=10, target_hits=10, filter=Filter(max_width=3)).plan == "exact"
