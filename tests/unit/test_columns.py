"""Range predicates answered from the in-memory attribute columns agree with SQLite's answers, writes included."""

import numpy as np
import pytest

from clipseek import yql
from clipseek.collection import Collection, Document, Filter
from clipseek.matching import as_ids

OPS = ["=", "<", ">", "<=", ">="]


def docs(rng, n, start=0):
    out = []
    for i in range(start, start + n):
        maybe = rng.random(4) < 0.15  # some values missing (NULL)
        out.append(Document(f"d{i}", width=None if maybe[0] else int(rng.integers(0, 50)),
                            taken=None if maybe[1] else float(rng.integers(0, 20)) + 0.5,
                            size=None if maybe[2] else int(rng.integers(2**62, 2**62 + 3)),
                            lat=None if maybe[3] else float(rng.uniform(-1, 1)),
                            vectors={"f_image": rng.standard_normal(4).astype(np.float32)}))
    return out


def answers(coll, predicates):
    return [as_ids(coll.store.matching(p)).tolist() for p in predicates]


def test_columns_answer_as_sqlite_does(tmp_path):
    rng = np.random.default_rng(7)
    with Collection.create(tmp_path / "c") as c:
        c.add_field("f_image", "m", 4)
        c.feed(docs(rng, 400))
        predicates = [yql.Predicate(name, op, value) for name, values in (
            ("width", [0, 10, 25.5, 49, 60, 10.0, -0.5, 1e30, -1e30]), ("taken", [0.5, 7, 10.5, 19.5]),
            ("size", [2**62, 2**62 + 1, 2**62 + 2, float(2**62), float(2**62) + 1024.0]),
            ("lat", [-0.5, 0.0, 0.25])) for value in values for op in OPS]
        c.store.MATCHED_KEPT = 0  # every call evaluates (the kept answers are tested in test_store)
        c.store.columns.WARM_AFTER = 10**9
        from_sqlite = answers(c, predicates)
        assert not c.store.columns.in_memory
        c.store.columns.WARM_AFTER = 0
        assert answers(c, predicates) == from_sqlite and c.store.columns.in_memory
        assert sum(map(len, from_sqlite)) > 0
        # writes reach the columns: new documents (ids past the columns' end), replacements, removals
        c.feed(docs(rng, 300, start=350))
        for i in range(0, 100, 3):
            c.remove(f"d{i}")
        c.update("d200", attributes={"width": None, "taken": 123.0})
        assert c.store.columns.dtype("width") == np.int8  # the narrowest type that holds 0..49
        warm = answers(c, predicates)
        c.store.columns.reset()
        c.store.columns.WARM_AFTER = 10**9
        assert answers(c, predicates) == warm
        # a write past the column's type widens it, and bounds past the type's range pass every value or none
        c.store.columns.WARM_AFTER = 0
        answers(c, predicates[:1])
        for docid, width in (("d201", 300), ("d202", -70000), ("d203", 2**40)):
            c.update(docid, attributes={"width": width})
            assert c.store.columns.dtype("width").itemsize == {300: 2, -70000: 4, 2**40: 8}[width]
        predicates += [yql.Predicate("width", op, v) for v in (127, 128, -129, 299.5, 300, 2**40, 2**63 - 1, 1e19)
                       for op in OPS]
        warm = answers(c, predicates)
        c.store.columns.reset()
        c.store.columns.WARM_AFTER = 10**9
        assert answers(c, predicates) == warm


def test_a_filtered_search_reads_the_columns(tmp_path):
    rng = np.random.default_rng(8)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("f_image", "m", 4)
        c.feed(docs(rng, 300))
        q = rng.standard_normal(4)
        c.store.MATCHED_KEPT = 0  # each search evaluates its filter (by SQLite, then by the columns)
        c.store.columns.WARM_AFTER = 10**9
        before = [h.docid for h in c.search(q, field="f_image", hits=20, filter=Filter(min_width=20)).hits]
        c.store.columns.WARM_AFTER = 0
        after = [h.docid for h in c.search(q, field="f_image", hits=20, filter=Filter(min_width=20)).hits]
        assert c.store.columns.in_memory and after == before and len(after) == 20


FILTERS = ["width >= 20", "width < 3", "width >= 10 and taken < 12", "width < 5 or lat > 0.5",
           "(width >= 45 or size = 4611686018427387904) and lat < 0",
           'width >= 10 and documentid contains "d302"', 'width < 3 or documentid contains "d7"',
           'width >= 10 and documentid contains "d300"']  # SQLite's ids with a mask; d300's width is 2: none


def brute_force(coll, q, keep, k):
    """The k nearest documents passing ``keep``, by numpy over every document's attributes and vector."""
    scored = []
    for d in coll.iter_documents():
        if keep(d) and "f_image" in d.vectors:
            v = d.vectors["f_image"]
            scored.append((-float(v @ q) / float(np.linalg.norm(v) * np.linalg.norm(q)), d.docid))
    return [docid for _, docid in sorted(scored)[:k]]


def test_filters_as_column_masks_find_what_id_lists_and_brute_force_find(tmp_path):
    rng = np.random.default_rng(9)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("f_image", "m", 4)
        c.feed(docs(rng, 400))
        c.store.MATCHED_KEPT = 0
        c.store.columns.WARM_AFTER = 0
        c.search(yql_query="select * from sources * where width > 0")  # the columns are built
        assert c.store.columns.in_memory
        c.feed(docs(rng, 100, start=400))  # ids past the columns' first end
        for i in range(0, 150, 4):
            c.remove(f"d{i}")  # dead slots
        for i in range(1, 150, 5):  # a new vector: the old slot dies, the document moves to a new one
            c.update(f"d{i}", vectors={"f_image": rng.standard_normal(4).astype(np.float32)})
        c.update("d300", attributes={"width": 2})

        def search(where, q, **kw):
            yql_text = ("select * from sources * where {targetHits:10, approximate:%s}nearestNeighbor(f_image, q)"
                        " and (%s)" % ("false" if kw.get("exact") else "true", where))
            return [h.docid for h in c.search(yql_query=yql_text, query_tensors={"q": q}, hits=10).hits]

        keeps = {
            FILTERS[0]: lambda d: d.width is not None and d.width >= 20,
            FILTERS[1]: lambda d: d.width is not None and d.width < 3,
            FILTERS[2]: lambda d: d.width is not None and d.width >= 10 and d.taken is not None and d.taken < 12,
            FILTERS[3]: lambda d: (d.width is not None and d.width < 5) or (d.lat is not None and d.lat > 0.5),
            FILTERS[4]: lambda d: ((d.width is not None and d.width >= 45) or d.size == 2**62)
            and d.lat is not None and d.lat < 0,
            FILTERS[5]: lambda d: d.width is not None and d.width >= 10 and d.docid == "d302",
            FILTERS[6]: lambda d: (d.width is not None and d.width < 3) or d.docid == "d7",
            FILTERS[7]: lambda d: False,
        }
        for where in FILTERS:
            for q in rng.standard_normal((3, 4)):
                warm_hnsw, warm_exact = search(where, q), search(where, q, exact=True)
                assert c.store.matching(yql.Predicate("width", "<", 3)).dtype == bool  # a mask from the columns
                c.store.columns.reset()
                c.store.columns.WARM_AFTER = 10**9  # the same searches by SQLite's id lists
                cold_hnsw, cold_exact = search(where, q), search(where, q, exact=True)
                c.store.columns.WARM_AFTER = 0
                assert warm_exact == cold_exact == brute_force(c, q, keeps[where], 10), where
                assert warm_hnsw == cold_hnsw, where
                assert len(set(warm_hnsw) & set(warm_exact)) >= min(9, len(warm_exact)), where  # HNSW finds them


def test_a_fresh_collections_filter_and_one_with_removed_documents_find_the_nearest_that_pass(tmp_path):
    """Documents fed once and in order sit in slots in their own order, which a filter's mask uses as it is; once a
    document is removed or moves to a new slot, the mask is mapped slot by slot. Both find what brute force finds."""
    rng = np.random.default_rng(10)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("f_image", "m", 4)
        c.feed(docs(rng, 250))
        c.feed(docs(rng, 250, start=250))
        c.store.columns.WARM_AFTER = 0

        def check(bound):
            for q in rng.standard_normal((4, 4)):
                for exact in (True, False):
                    result = c.search(q, field="f_image", hits=10, target_hits=10, approximate=not exact,
                                      explore_additional_hits=90, filter=Filter(min_width=bound))
                    found = [h.docid for h in result.hits]
                    want = brute_force(c, q, lambda d: d.width is not None and d.width >= bound, 10)
                    assert found == want if exact else len(set(found) & set(want)) >= 9, (bound, exact)

        for bound in (40, 25.5):
            check(bound)
        # a document without a vector takes an id but no slot: from there on, slot s holds another document
        c.feed([Document("novec", width=99)])
        q = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
        c.feed([Document("late", width=0, vectors={"f_image": q})])  # the nearest, and outside the filter
        for exact in (True, False):
            found = [h.docid for h in c.search(q, field="f_image", hits=10, approximate=not exact,
                                               filter=Filter(min_width=40)).hits]
            assert len(found) == 10 and "late" not in found, exact
        check(40)
        c.remove("d3")
        c.update("d9", vectors={"f_image": rng.standard_normal(4).astype(np.float32)})
        for bound in (40, 26):
            check(bound)


@pytest.mark.parametrize("write", ["grow", "remove", "null", "replace"])
def test_columns_with_every_value_present_answer_as_sqlite_does_after_a_write_that_leaves_gaps(tmp_path, write):
    """While every document in the columns' range of ids has a value, a comparison is not and-ed with the presence
    mask; ids with no value (below the first document, room grown into, a removed or replaced document, a NULL
    written later) must still never pass."""
    rng = np.random.default_rng(11)

    def full(n, start):
        return [Document(f"d{i}", width=int(rng.integers(0, 50)), taken=float(rng.integers(0, 20)),
                         size=int(rng.integers(0, 9)), lat=float(rng.uniform(-1, 1)),
                         vectors={"f_image": rng.standard_normal(4).astype(np.float32)})
                for i in range(start, start + n)]

    predicates = [yql.Predicate(name, op, value) for name, values in (
        ("width", [0, 10, 49, 60, -1]), ("taken", [0.0, 7.5]), ("size", [0, 4]), ("lat", [-2.0, 0.0]))
        for value in values for op in OPS]
    with Collection.create(tmp_path / "c") as c:
        c.add_field("f_image", "m", 4)
        c.feed(full(200, 0))
        c.store.MATCHED_KEPT = 0
        c.store.columns.WARM_AFTER = 0
        before = answers(c, predicates)  # built now, with every value present; kept current by the write
        assert c.store.columns.in_memory
        if write == "grow":  # ids past the columns' end: they grow, with room past the new ids
            c.feed(full(50, 200))
        elif write == "remove":
            c.remove("d3")
        elif write == "null":
            c.update("d7", attributes={"width": None, "taken": None, "size": None, "lat": None})
        else:
            c.feed(full(1, 9))
        warm = answers(c, predicates)
        assert warm != before
        c.store.columns.reset()
        c.store.columns.WARM_AFTER = 10**9
        assert answers(c, predicates) == warm
