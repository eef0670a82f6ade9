"""Rank fusion (pure): reciprocal rank fusion over any score fields of the candidates.

Gecko (Appendix A) fuses the query-likelihood and relevance-classification rankings
with RRF and k = 0: R(d) = 1/rank_QL(d) + 1/rank_RC(d). k = 60 is the usual default
elsewhere (Cormack et al., 2009). Higher scores rank first.

At k = 0 with two scorers, exact fused ties happen: a candidate ranked (1, 2) and one ranked
(2, 1) both get 1.5 (how often: docs/decisions.md, "Fused ties go to the first listed score"),
and the top is the positive FRet trains on. A fused tie goes to the candidate the first listed
score ranks higher (then the second, ...), so the order of `--fuse`/`--scores` says whose
judgement settles it; only then the id, so a run is reproducible. (Breaking them by id let
the spelling of an id pick the positive.)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def rank_by(scores: Sequence[float], ids: Sequence[str]) -> list[int]:
    """1-based ranks, highest score first, ties broken by id.

    >>> rank_by([0.2, 0.9, 0.2], ["b", "c", "a"])
    [3, 1, 2]
    """
    return _ranks(sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i])))


def _ranks(order: Sequence[int]) -> list[int]:
    """1-based rank of each index, given the indices best first."""
    ranks = [0] * len(order)
    for position, i in enumerate(order, 1):
        ranks[i] = position
    return ranks


def rrf(rank_lists: Sequence[Sequence[int]], k: float = 0.0,
        weights: Sequence[float] | None = None) -> list[float]:
    """Reciprocal rank fusion: sum over scorers of w / (k + rank).

    >>> rrf([[1, 2, 3], [3, 1, 2]], k=0)
    [1.3333333333333333, 1.5, 0.8333333333333333]
    >>> [round(x, 5) for x in rrf([[1, 2], [2, 1]], k=60)]
    [0.03252, 0.03252]
    """
    weights = list(weights) if weights is not None else [1.0] * len(rank_lists)
    if len(weights) != len(rank_lists):
        raise ValueError(f"{len(weights)} weights for {len(rank_lists)} scores")
    n = len(rank_lists[0]) if rank_lists else 0
    return [sum(w / (k + ranks[i]) for w, ranks in zip(weights, rank_lists)) for i in range(n)]


def fused_ranks(fused: Sequence[float], rank_lists: Sequence[Sequence[int]], ids: Sequence[str]) -> list[int]:
    """1-based ranks by fused score; ties go to the better rank under the first score, then the
    next, then the smaller id.

    Fused scores are compared rounded to 12 decimals: 1/1 + 1/2 + 1/3 summed in another order
    can differ in the last bit, and that must not decide a tie.

    >>> fused_ranks([1.5, 1.5, 0.5], [[2, 1, 3], [1, 2, 3]], ["a", "b", "c"])
    [2, 1, 3]
    """
    key = lambda i: (-round(fused[i], 12), *(ranks[i] for ranks in rank_lists), ids[i])  # noqa: E731
    return _ranks(sorted(range(len(fused)), key=key))


def fuse_candidates(candidates: Sequence[Mapping[str, Any]], scores: Sequence[str], k: float = 0.0,
                    weights: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Candidates sorted by fused rank, each with `rank_<score>`, `rrf` and `rank`.

    The two candidates below tie at 1/1 + 1/2; QL is listed first, so b, QL's favourite, wins:

    >>> out = fuse_candidates([{"id": "a", "ql": -9.0, "rc": 0.1}, {"id": "b", "ql": -2.0, "rc": -0.5}], ["ql", "rc"])
    >>> [(c["id"], c["rank_ql"], c["rank_rc"], c["rank"]) for c in out]
    [('b', 1, 2, 1), ('a', 2, 1, 2)]
    >>> [c["id"] for c in fuse_candidates(out, ["rc", "ql"])]
    ['a', 'b']
    """
    ids = [str(c["id"]) for c in candidates]
    rank_lists = [rank_by([float(c[name]) for c in candidates], ids) for name in scores]
    fused = rrf(rank_lists, k, weights)
    final = fused_ranks(fused, rank_lists, ids)
    out = []
    for i, candidate in enumerate(candidates):
        ranked = {**candidate, **{f"rank_{name}": ranks[i] for name, ranks in zip(scores, rank_lists)}}
        out.append({**ranked, "rrf": fused[i], "rank": final[i]})
    return sorted(out, key=lambda c: c["rank"])
