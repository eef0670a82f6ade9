"""Ranking and similarity metrics (pure), with trec_eval's definitions.

`qrels` maps doc id -> graded relevance (> 0 is relevant, as in trec_eval);
`ranking` is the retrieved doc ids, best first. nDCG uses linear gains and
log2(rank + 1) discounts (trec_eval's `ndcg_cut`, which BEIR and MTEB report);
MAP@k divides by every relevant document (`map_cut`); MRR@k is `recip_rank` on
the ranking cut at k.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

NDCG_AT = (1, 3, 5, 10, 100)
RECALL_AT = (10, 100)
MRR_AT = (10,)
MAP_AT = (100,)


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains in rank order.

    >>> round(dcg([1, 0, 1]), 4)
    1.5
    """
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at(qrels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """nDCG@k with graded gains.

    >>> round(ndcg_at({"a": 1, "b": 1}, ["x", "a", "b"], 3), 4)
    0.6934
    """
    ideal = dcg(sorted((r for r in qrels.values() if r > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([max(qrels.get(d, 0), 0) for d in ranking[:k]]) / ideal


def recall_at(qrels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """Share of the relevant documents found in the top k.

    >>> recall_at({"a": 1, "b": 2}, ["a", "x"], 2)
    0.5
    """
    relevant = {d for d, r in qrels.items() if r > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at(qrels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k, else 0.

    >>> mrr_at({"b": 1}, ["a", "b"], 10)
    0.5
    """
    for i, doc in enumerate(ranking[:k]):
        if qrels.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def map_at(qrels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    """Average precision over the top k, divided by all relevant documents.

    >>> map_at({"a": 1, "c": 1}, ["a", "b", "c"], 3)
    0.8333333333333333
    """
    relevant = sum(1 for r in qrels.values() if r > 0)
    hits, total = 0, 0.0
    for i, doc in enumerate(ranking[:k]):
        if qrels.get(doc, 0) > 0:
            hits += 1
            total += hits / (i + 1)
    return total / relevant if relevant else 0.0


def retrieval_metrics(qrels: Mapping[str, Mapping[str, int]],
                      rankings: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean of every metric over the queries that have a relevant document.

    >>> retrieval_metrics({"q": {"a": 1}}, {"q": ["a"]})["ndcg@10"]
    1.0
    """
    names = ([(f"ndcg@{k}", ndcg_at, k) for k in NDCG_AT] + [(f"recall@{k}", recall_at, k) for k in RECALL_AT]
             + [(f"mrr@{k}", mrr_at, k) for k in MRR_AT] + [(f"map@{k}", map_at, k) for k in MAP_AT])
    queries = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    sums = {name: 0.0 for name, _, _ in names}
    for query in queries:
        ranking = rankings.get(query, [])
        for name, metric, k in names:
            sums[name] += metric(qrels[query], ranking, k)
    return {name: total / len(queries) if queries else 0.0 for name, total in sums.items()}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties).

    >>> spearman([1, 2, 3], [10, 20, 15])
    0.5
    """
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation.

    >>> round(pearson([1, 2, 3], [2, 4, 6]), 6)
    1.0
    """
    from scipy.stats import pearsonr

    return float(pearsonr(x, y).statistic)


def pair_ranking_metrics(positive: np.ndarray, negatives: list[np.ndarray]) -> dict[str, float]:
    """Accuracy@1 and MRR of each positive score against its own negatives' scores.

    A tie with a negative counts against the positive (rank = 1 + negatives >= positive).

    >>> pair_ranking_metrics(np.array([0.9, 0.2]), [np.array([0.1]), np.array([0.5, 0.1])])
    {'accuracy@1': 0.5, 'mrr': 0.75}
    """
    ranks = np.array([1 + int(np.sum(neg >= pos)) for pos, neg in zip(positive, negatives)])
    if len(ranks) == 0:
        return {"accuracy@1": 0.0, "mrr": 0.0}
    return {"accuracy@1": float(np.mean(ranks == 1)), "mrr": float(np.mean(1.0 / ranks))}
