"""Range predicates answered from the in-memory attribute columns agree with SQLite's answers, writes included."""

import numpy as np

from clipseek import yql
from clipseek.collection import Collection, Document, Filter

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
    return [coll.store.matching(p).tolist() for p in predicates]


def test_columns_answer_as_sqlite_does(tmp_path):
    rng = np.random.default_rng(7)
    with Collection.create(tmp_path / "c") as c:
        c.add_field("f_image", "m", 4)
        c.feed(docs(rng, 400))
        predicates = [yql.Predicate(name, op, value) for name, values in (
            ("width", [0, 10, 25.5, 49, 60]), ("taken", [0.5, 7, 10.5, 19.5]),
            ("size", [2**62, 2**62 + 1, 2**62 + 2]), ("lat", [-0.5, 0.0, 0.25])) for value in values for op in OPS]
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
