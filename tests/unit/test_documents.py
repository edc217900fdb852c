"""clipseek.documents: the documents a predicate matched are kept for the next search with the same predicate,
and never outlive a change to the documents (a write here, or another process's, seen by a reader)."""

import numpy as np

from clipseek import yql
from clipseek.collection import Collection, Document, Filter

DIM = 8
WHERE = "select * from sources * where width <= 20"


def make(rng, names, width):
    return [Document(name, width=width, vectors={"f_image": rng.standard_normal(DIM).astype(np.float32)})
            for name in names]


def matched(coll):
    """The documents `width <= 20` matches, by a YQL search without vectors (the store's kept answer)."""
    res = coll.search(yql_query=WHERE, hits=400)
    assert res.total_count == len(res.hits)  # ids of documents that are gone would count, without a hit
    return {h.docid for h in res.hits}


def test_a_repeated_predicate_is_kept_until_the_documents_change(tmp_path):
    rng = np.random.default_rng(3)
    widths = {f"d{i}": int(w) for i, w in enumerate(rng.integers(0, 100, 300))}
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("f_image", "m", DIM)
        docs = [Document(d, width=w, vectors={"f_image": rng.standard_normal(DIM).astype(np.float32)})
                for d, w in widths.items()]
        c.feed(docs)
        p = yql.Predicate("width", "<=", 20)
        once = c.store.matching(p)  # a predicate asked once is not kept (its memory is lent to the next)
        first = c.store.matching(p)
        assert first is not once and (first == once).all()
        assert c.store.matching(p) is first and not first.flags.writeable  # kept, and nobody can change it
        assert matched(c) == {d for d, w in widths.items() if w <= 20}

        reader = Collection.open(tmp_path / "c", readonly=True, exact_threshold=0)
        assert matched(reader) == matched(c)

        c.feed(make(rng, ["new1", "new2"], 5))  # new documents that pass
        widths.update(new1=5, new2=5)
        assert matched(c) == {d for d, w in widths.items() if w <= 20}
        widths["d0"] = 99 if widths["d0"] <= 20 else 1
        c.update("d0", attributes={"width": widths["d0"]})  # one moves across the boundary
        assert matched(c) == {d for d, w in widths.items() if w <= 20}
        gone = next(d for d, w in widths.items() if w <= 20 and d != "d0")
        c.remove(gone)
        del widths[gone]
        want = {d for d, w in widths.items() if w <= 20}
        assert matched(c) == want
        assert matched(reader) == want  # another collection object sees the other's commits
        reader.close()


def test_a_kept_filter_never_returns_a_removed_or_moved_vector(tmp_path):
    rng = np.random.default_rng(4)
    with Collection.create(tmp_path / "c", exact_threshold=0) as c:
        c.add_field("f_image", "m", DIM)
        c.feed(make(rng, [f"a{i}" for i in range(300)], 10) + make(rng, [f"b{i}" for i in range(300)], 90))
        target = c.get("a7").vectors["f_image"]
        flt = Filter(max_width=20)

        def top():
            res = c.search(target, field="f_image", hits=1, filter=flt)
            assert res.plan == "hnsw"
            return res.hits[0].docid

        assert top() == top() == "a7"
        c.remove("a7")
        assert top() != "a7"
        c.feed([Document("a7", width=10, vectors={"f_image": target})])  # back, in a new slot
        assert top() == "a7"
        c.update("a7", attributes={"width": 90})  # out of the filter, same slot
        assert top() != "a7"
