"""Paired bootstrap over queries: is model B better than model A on the same queries, or is it noise?

Per-query nDCG@10 comes from the TREC runs `gecko evaluate --run-file` writes and the split's qrels;
the interval is the 2.5th..97.5th percentile of the mean difference over query sets resampled with
replacement (Efron & Tibshirani 1993; Sakai 2006 for IR), the same resample for every pair of models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from gecko_cli.eval.metrics import ndcg_at


def read_run(path: Path) -> dict[str, list[str]]:
    """A TREC run file -> query id -> document ids, best first (by the rank column)."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            qid, _, doc, rank, *_ = line.split()
            ranked.setdefault(qid, []).append((int(rank), doc))
    return {q: [d for _, d in sorted(rows)] for q, rows in ranked.items()}


def per_query_ndcg(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Sequence[str]],
                   k: int = 10) -> dict[str, float]:
    """nDCG@k of every judged query (0 when the run has no ranking for it).

    >>> per_query_ndcg({"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": ["d1", "d3"]})
    {'q1': 1.0, 'q2': 0.0}
    """
    return {q: ndcg_at(rels, run.get(q, []), k) for q, rels in qrels.items()}


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], samples: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """Mean of b - a over the queries both judge, and its 95% percentile-bootstrap interval.

    >>> out = paired_bootstrap({"q1": 0.5, "q2": 0.5, "q3": 0.5}, {"q1": 0.6, "q2": 0.6, "q3": 0.6})
    >>> round(out["diff"], 6), round(out["low"], 6), round(out["high"], 6), out["queries"]
    (0.1, 0.1, 0.1, 3)
    """
    queries = sorted(set(a) & set(b))
    if not queries:
        raise ValueError("paired_bootstrap: no query in common")
    diffs = np.array([b[q] - a[q] for q in queries])
    picks = np.random.default_rng(seed).integers(0, len(diffs), size=(samples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diffs.mean()), "low": float(low), "high": float(high), "queries": len(queries)}
