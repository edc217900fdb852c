"""clipseek.matching: the where-tree evaluator, with a stand-in document store and vector index."""

import numpy as np

from clipseek import yql
from clipseek.matching import Matcher, rank
from clipseek.vectors import Neighbors

DOCS = np.arange(1, 21)  # ids 1..20; a predicate "n <= K" matches 1..K; "odd" the odd ones
NEAR = {"a": [5, 3, 9, 1, 7, 11, 2], "b": [2, 4, 6, 8, 10, 12, 14]}  # each field's ids, nearest first


def predicate(p):
    if p.field == "odd":
        return DOCS[DOCS % 2 == 1]
    return DOCS[DOCS <= p.value]


calls = []


def nearest(nn, tensors, allowed):
    calls.append((nn.field, None if allowed is None else allowed.tolist()))
    order = [d for d in NEAR[nn.field] if allowed is None or d in set(allowed.tolist())][: nn.target_hits]
    cos = np.linspace(0.9, 0.5, len(order))
    return Neighbors(np.asarray(order, np.int64), 1 / (1 + np.arccos(cos)), cos, "exact")


def run(where, rank_field=None):
    calls.clear()
    matches = Matcher(predicate, nearest).match(where, {})
    return rank(matches, lambda: DOCS, rank_field)


def nn(field, k=3, **kw):
    return yql.NearestNeighbor(field, "q", k, **kw)


def test_a_lone_nearest_neighbor_is_its_own_ranking():
    docs, rel = run(nn("a"))
    assert docs.tolist() == [5, 3, 9] and list(rel) == sorted(rel, reverse=True)


def test_predicates_narrow_what_nearest_neighbor_may_return_whatever_their_order():
    for where in (yql.And((nn("a"), yql.Predicate("n", "<=", 4))), yql.And((yql.Predicate("n", "<=", 4), nn("a")))):
        docs, _ = run(where)
        assert docs.tolist() == [3, 1, 2] and calls == [("a", [1, 2, 3, 4])]


def test_or_is_a_union_ranked_by_closeness_then_id_with_predicate_only_matches_at_zero():
    docs, rel = run(yql.Or((nn("a", 2), yql.Predicate("n", "<=", 2))))
    assert docs.tolist() == [5, 3, 1, 2] and rel[-1] == 0 and rel[-2] == 0


def test_rank_field_scores_only_its_label():
    where = yql.Or((nn("a", 2), nn("b", 2)))
    docs, rel = run(where, rank_field="b")
    assert docs.tolist()[:2] == [2, 4] and set(docs.tolist()[2:]) == {3, 5} and all(r == 0 for r in rel[2:])


def test_the_same_label_twice_keeps_each_documents_best():
    where = yql.Or((yql.And((nn("a", 3), yql.Predicate("odd", "=", 1))), nn("a", 1)))
    docs, rel = run(where)
    assert docs.tolist() == [5, 3, 9] and rel[0] == max(rel)


def test_distance_threshold_drops_far_neighbours():
    docs, _ = run(nn("a", 3, distance_threshold=float(np.arccos(0.65))))
    assert docs.tolist() == [5, 3]  # cosines 0.9, 0.7, 0.5: the last is further than arccos(0.65) radians
