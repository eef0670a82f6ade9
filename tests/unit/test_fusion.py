import pytest

from gecko_cli.search.fusion import fuse_candidates, fused_ranks, rank_by, rrf


def test_rank_ties_broken_by_id():
    assert rank_by([1.0, 1.0, 3.0], ["z", "a", "m"]) == [3, 2, 1]


def test_rrf_k0_by_hand():
    # QL ranks a,b,c = 1,2,3; RC ranks them 3,1,2  ->  1+1/3, 1/2+1, 1/3+1/2
    assert rrf([[1, 2, 3], [3, 1, 2]], k=0) == pytest.approx([4 / 3, 3 / 2, 5 / 6])


def test_rrf_k60_by_hand():
    assert rrf([[1, 2, 3], [3, 1, 2]], k=60) == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])


def test_k_changes_the_winner():
    # d1 is first for one scorer and last for the other; d2 is second for both.
    # At k = 0, d1 and d5 tie on top (1 + 1/5) and d2 trails (1/2 + 1/2); at k = 60, d2 wins.
    ranks = [[1, 2, 3, 4, 5], [5, 2, 3, 4, 1]]
    assert rrf(ranks, k=0) == pytest.approx([6 / 5, 1, 2 / 3, 1 / 2, 6 / 5])
    assert max(range(5), key=lambda i: rrf(ranks, k=0)[i]) == 0  # the tie: max keeps the first
    assert max(range(5), key=lambda i: rrf(ranks, k=60)[i]) == 1


def test_weights():
    assert rrf([[1, 2], [2, 1]], k=0, weights=[1.0, 0.0]) == [1.0, 0.5]
    with pytest.raises(ValueError):
        rrf([[1, 2]], weights=[1, 2])


def test_fuse_candidates_sorted_with_ranks():
    cands = [{"id": "a", "ql": -5.0, "rc": 2.0}, {"id": "b", "ql": -1.0, "rc": 1.0}, {"id": "c", "ql": -3.0, "rc": 3.0}]
    out = fuse_candidates(cands, ["ql", "rc"], k=0)
    assert [c["id"] for c in out] == ["c", "b", "a"]  # c: 1/2+1 ; b: 1+1/3 ; a: 1/3+1/2
    assert [(c["rank_ql"], c["rank_rc"], c["rank"]) for c in out] == [(2, 1, 1), (1, 3, 2), (3, 2, 3)]


def test_fused_tie_goes_to_the_first_listed_scores_favourite():
    # a and b tie at 1/1 + 1/2 (k = 0): the first listed score decides, whatever the ids.
    cands = [{"id": "a", "ql": -9.0, "retriever_score": 0.9}, {"id": "z", "ql": -2.0, "retriever_score": 0.5},
             {"id": "m", "ql": -20.0, "retriever_score": 0.1}]
    assert [c["id"] for c in fuse_candidates(cands, ["ql", "retriever_score"])] == ["z", "a", "m"]
    assert [c["id"] for c in fuse_candidates(cands, ["retriever_score", "ql"])] == ["a", "z", "m"]


def test_fused_tie_across_four_scores_ignores_float_summation_order():
    # Each candidate's fused score is 1/1 + 1/2 + 1/3 + 1/4 summed in another order, which
    # differs in the last bit for some orders; the first score's ranks must still decide.
    ranks = [[1, 2, 3, 4], [2, 3, 4, 1], [3, 4, 1, 2], [4, 1, 2, 3]]
    fused = rrf(ranks, k=0)
    assert len(set(fused)) > 1  # the float sums really differ
    assert fused_ranks(fused, ranks, ["d", "c", "b", "a"]) == [1, 2, 3, 4]


def test_fused_tie_falls_back_to_id_when_every_score_ties():
    assert fused_ranks([1.0, 1.0], [[1, 1], [1, 1]], ["b", "a"]) == [2, 1]
