"""clipseek.walks: the graph walks compiled by numba. The plain walk, against faiss's own; the filtered walk through
passing slots only (ACORN-1), on its own and as the engine's plan for filters passing a small share of the
documents."""

import numpy as np
import pytest

from clipseek import hnsw, vectors, walks
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


def faiss_and_compiled(monkeypatch, graph, q, count, ef, allow=None, walk=None):
    """The same search by faiss's walk and by the compiled one (which must be the one that runs)."""
    calls = []
    compiled = walks.walk

    def spy(*a, **kw):
        calls.append(1)
        return compiled(*a, **kw)

    monkeypatch.setattr(walks, "walk", spy)
    found = []
    for on in (False, True):
        monkeypatch.setattr(hnsw, "COMPILED", on)
        found.append(graph.search(q, count, ef, allow=allow, walk=walk))
    assert calls == [1]
    return found


@pytest.mark.parametrize("share", [1.0, 0.9, 0.5, 0.1])
def test_the_compiled_walk_finds_what_faisss_walk_finds(graph_data, monkeypatch, share):
    """Over every slot (share 1), through dead or filtered ones (a bitmap, kept out of the answer, walked through
    with a view of beam / share), and with a bitmap shorter than the graph: the same slots as faiss's walk, nearest
    first, for nearly every query (both are HNSW's search over the same graph; only float rounding of near-ties in
    the codes' distances may part them)."""
    graph, x, queries, rng = graph_data
    mask = rng.random(len(x)) < share
    bitmap = None if share == 1.0 else np.packbits(mask, bitorder="little")
    same = overlap = 0
    for q in queries:
        view = int(40 / share)
        ours, theirs = faiss_and_compiled(monkeypatch, graph, q, 20, 40, bitmap, view)[::-1]
        assert len(ours) == 20 and len(set(ours.tolist())) == 20 and mask[ours].all()
        assert np.all(np.diff(by_codes(graph, q, ours)) <= 1e-3)  # nearest first
        same += ours.tolist() == theirs.tolist()
        overlap += len(set(ours.tolist()) & set(theirs.tolist()))
    assert same >= 0.95 * len(queries) and overlap >= 0.99 * 20 * len(queries), (same, overlap)
    short = np.packbits(np.ones(2000, bool), bitorder="little")  # slots past the bitmap's end are never returned
    for q in queries[:10]:
        ours, theirs = faiss_and_compiled(monkeypatch, graph, q, 10, 40, short, 120)[::-1]
        assert ours.max() < 2000 and len(ours) == 10 and len(set(ours.tolist()) & set(theirs.tolist())) >= 9


def test_the_unfiltered_search_in_one_compiled_call_is_the_walk_then_the_rescoring_then_the_order(graph_data):
    """AnnIndex.nearest (walk, re-scoring and order in one call) answers as its parts do: the walk's best, their
    cosines from codes and residuals, the k best by cosine then document; slots past the documents' snapshot are
    left out; a zero query scores 0 and keeps document order."""
    graph, x, queries, rng = graph_data
    doc_of_slot = rng.permutation(len(x)).astype(np.int64)  # documents numbered apart from slots
    for q in [*queries[:30], np.zeros(48, np.float32)]:
        docs, rel, cos, found = graph.nearest(q, 10, 26, 40, None, 40, doc_of_slot)
        slots = graph.search(q, 26, 40)
        want_cos = graph.cosines(q, slots)
        order = np.lexsort((doc_of_slot[slots], -want_cos))[:10]
        assert found == 26 and docs.tolist() == doc_of_slot[slots][order].tolist()
        assert np.allclose(cos, want_cos[order], atol=1e-6)
        assert np.allclose(rel, 1 / (1 + np.arccos(np.clip(want_cos[order].astype(np.float64), -1, 1))), atol=1e-6)
    short = doc_of_slot[:3000]  # a search whose snapshot of the documents covers the first 3,000 slots only
    docs, _, _, found = graph.nearest(x[4500], 10, 26, 40, None, 40, short)
    assert found < 26 and set(docs.tolist()) <= set(short.tolist())


def test_compiled_ranking_and_links_count_answer_as_numpys(graph_data, monkeypatch):
    """AnnIndex.ranked (re-scoring and order in one call) and AnnIndex.linked (the distinct slots the bottom layer
    links a beam to, and how many pass), compiled, against their numpy forms (what runs before the walks load)."""
    graph, x, queries, rng = graph_data
    doc_of_slot = rng.permutation(len(x)).astype(np.int64)
    for share in (0.1, 0.5):
        mask = rng.random(len(x)) < share
        for q in queries[:20]:
            slots = graph.search(q, 40, 40)
            docs, rel, cos = graph.ranked(q, slots, doc_of_slot, 10)
            want = graph.cosines(q, slots)
            order = np.lexsort((doc_of_slot[slots], -want))[:10]
            assert docs.tolist() == doc_of_slot[slots][order].tolist() and np.allclose(cos, want[order], atol=1e-6)
            short = mask[:3000]  # slots past the mask's end are not counted
            compiled = graph.linked(slots, mask), graph.linked(slots, short)
            monkeypatch.setattr(hnsw, "COMPILED", False)
            assert graph.ranked(q, slots, doc_of_slot, 10) is None
            assert (graph.linked(slots, mask), graph.linked(slots, short)) == compiled
            assert compiled[0][0] > len(slots) and compiled[1][0] < compiled[0][0]
            monkeypatch.setattr(hnsw, "COMPILED", True)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_compiled_listing_of_a_masks_true_entries_is_numpys(seed):
    """Word by word, over any length and any start (a view into a longer mask need not start on a word), with
    the count given cutting it short, and bytes of a bool view that are neither 0 nor 1 counted once."""
    rng = np.random.default_rng(seed)
    for n in (0, 1, 7, 8, 9, 64, 1001, 20011):
        for share in (0.0, 0.01, 0.2, 0.9, 1.0):
            for start in range(9):
                mask = (rng.random(n + start) < share)[start:]
                count = int(np.count_nonzero(mask))
                assert walks.listed(mask, count).tolist() == np.flatnonzero(mask).tolist()
                assert walks.listed(mask, count // 2).tolist() == np.flatnonzero(mask)[: count // 2].tolist()
    raw = rng.integers(0, 4, 1000).astype(np.uint8) * rng.integers(0, 2, 1000).astype(np.uint8)
    mask = raw.view(np.bool_)
    assert walks.listed(mask, int(np.count_nonzero(mask))).tolist() == np.flatnonzero(raw).tolist()


def test_the_compiled_walk_returns_fewer_only_when_fewer_pass_and_walks_a_growing_graph(graph_data):
    graph, x, queries, rng = graph_data
    mask = np.zeros(len(x), bool)
    mask[[3, 500, 4000]] = True  # three passing slots in a graph walked with a view of every slot
    found = graph.search(queries[0], 10, 10, allow=np.packbits(mask, bitorder="little"), walk=len(x))
    assert sorted(found.tolist()) == [3, 500, 4000]
    grown = AnnIndex(48, PARAMS)  # its arrays move as it grows: the walk reads them anew
    grown.extend(x, 1500)
    grown.search(queries[0], 10, 20)
    grown.extend(x, len(x))
    for slot in (1700, 5999):
        assert grown.search(x[slot], 10, 20)[0] == slot


@pytest.mark.parametrize("share", [0.05, 0.1, 0.25])
def test_the_filter_first_walk_returns_passing_slots_only_and_finds_the_nearest(graph_data, share):
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
    """A filter passing 5-25 % goes through the filter-first walk (the plain walk is never asked), and finds what
    exact filtered search finds (recall@10 ≥ 0.99); with the filter-first walk turned off, the plain walk through
    every slot finds them too. A filter passing 30 % or more takes the plain walk either way."""
    c, data, widths, rng = coll
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.integers(0, 8000, 40)] + rng.standard_normal((40, 32)).astype(np.float32) * 0.05
    calls = {"ff": 0, "plain": 0}
    ff, walk = AnnIndex.filter_first, AnnIndex.search

    def spy_ff(self, *a, **kw):
        calls["ff"] += 1
        return ff(self, *a, **kw)

    def spy_walk(self, *a, **kw):
        calls["plain"] += 1
        return walk(self, *a, **kw)

    monkeypatch.setattr(AnnIndex, "filter_first", spy_ff)
    monkeypatch.setattr(AnnIndex, "search", spy_walk)
    for first in (True, False):
        monkeypatch.setattr(vectors, "FILTER_FIRST", first)
        for top in (4, 9, 24):
            calls.update(ff=0, plain=0)
            keep = np.flatnonzero(widths <= top)
            found = 0
            for q in queries:
                res = c.search(q, field="f_image", hits=10, target_hits=10, explore_additional_hits=30,
                               filter=Filter(max_width=top))
                assert res.plan == "hnsw"
                truth = keep[np.lexsort((keep, -(unit[keep] @ q)))[:10]]
                found += len({str(i) for i in truth} & {h.docid for h in res.hits})
            assert found / 400 >= 0.99, (first, top, found)
            assert (calls["ff"], calls["plain"] > 0) == ((40, False) if first else (0, True)), (first, top, calls)
    monkeypatch.setattr(vectors, "FILTER_FIRST", True)
    calls.update(ff=0, plain=0)
    c.search(queries[0], field="f_image", hits=10, filter=Filter(max_width=29))
    assert calls["ff"] == 0 and calls["plain"] > 0


def test_a_filter_below_the_approximate_threshold_scans_its_own_rows_for_exact_searchs_hits(coll, monkeypatch):
    """Below Vespa's approximate-threshold (5 %) the search is exact in Vespa. Where the graph is built, the
    filter's rows alone are ranked by their int8 codes and the best few × targetHits scored from float32: exact
    search's hits and relevance. Without the compiled walks (numba missing, or a process that has not loaded them
    yet), exact search itself, as without the graph."""
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
    monkeypatch.setattr(hnsw, "COMPILED", False)
    assert c.search(queries[0], field="f_image", hits=10, target_hits=10, filter=Filter(max_width=3)).plan == "exact"


WARM_UP = """
import sys
import numpy as np
from clipseek import hnsw
from clipseek.collection import Collection
c = Collection.open(sys.argv[1], readonly=True)
q = np.asarray([float(v) for v in sys.argv[2].split(",")], dtype=np.float32)
found = []
for i in range(hnsw.WARM_AFTER + 2):
    if i == hnsw.WARM_AFTER - 1:  # before the search that loads them: faiss's walks alone, numba not imported
        assert "clipseek.walks" not in sys.modules and "numba" not in sys.modules
    res = c.search(q, field="f_image", hits=10, target_hits=10, explore_additional_hits=30)
    found.append([h.docid for h in res.hits])
assert "clipseek.walks" in sys.modules and hnsw.loaded_walks() is not None
print(found[0] == found[-1])
"""


def in_a_new_process(script, coll, row):
    """What ``script`` prints, run in a fresh Python on the collection with document ``row``'s vector as query."""
    import subprocess
    import sys

    c, data, widths, rng = coll
    c.checkpoint()
    q = ",".join(str(float(v)) for v in data[row])
    out = subprocess.run([sys.executable, "-c", script, str(c.path), q], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_a_process_walks_with_faiss_until_its_warm_after_th_search_then_with_the_compiled_walks(coll):
    """A one-off search never imports numba (~0.8 s to load the compiled walks); the WARM_AFTER-th graph search
    of a process loads them, and the searches after it find the same hits."""
    assert in_a_new_process(WARM_UP, coll, 5) == "True"


BROKEN = """
import sys, warnings
import numpy as np
from clipseek import hnsw
from clipseek.collection import Collection
sys.modules["numba"] = None  # installed, but it fails to import
c = Collection.open(sys.argv[1], readonly=True)
q = np.asarray([float(v) for v in sys.argv[2].split(",")], dtype=np.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    found = [[h.docid for h in c.search(q, field="f_image", hits=10, target_hits=10).hits]
             for _ in range(hnsw.WARM_AFTER + 5)]
assert hnsw.loaded_walks() is None and found[0] == found[-1] and len(found[-1]) == 10
print(sum("did not load" in str(w.message) for w in caught))
"""


def test_compiled_walks_that_fail_to_load_warn_once_and_searches_go_on_with_faisss(coll):
    assert in_a_new_process(BROKEN, coll, 9) == "1"
