"""Paired bootstrap over queries: is model B better than model A on the same queries, or is it noise?

Per-query nDCG@10 comes from the TREC runs `gecko evaluate --run-file` writes and the split's qrels;
the interval is the 2.5th..97.5th percentile of the mean difference over query sets resampled with
replacement (Efron & Tibshirani 1993; Sakai 2006 for IR), the same resample for every pair of models.

Models of different runs (fret_train keeps every model's TREC runs under WORKDIR/runs/) are compared
from the command line, each against the first:

    python -m benchmarks.bootstrap QRELS NAME=RUN.trec NAME=RUN.trec ...
"""

from __future__ import annotations

import sys
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


def compare_runs(qrels: Mapping[str, Mapping[str, int]], runs: Sequence[tuple[str, Path]]) -> list[str]:
    """Lines: each run's mean nDCG@10 x100, and for every run after the first its difference from
    the first with the 95% paired-bootstrap interval."""
    scored = [(name, per_query_ndcg(qrels, read_run(path))) for name, path in runs]
    first_name, first = scored[0]
    lines = []
    for index, (name, scores) in enumerate(scored):
        line = f"{name:<28} {100 * sum(scores.values()) / len(scores):6.2f}"
        if index:
            b = paired_bootstrap(first, scores)
            line += f"  {100 * b['diff']:+.2f} [{100 * b['low']:+.2f}, {100 * b['high']:+.2f}] vs {first_name}"
        lines.append(line)
    return lines


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print("usage: python -m benchmarks.bootstrap QRELS NAME=RUN.trec [NAME=RUN.trec ...]", file=sys.stderr)
        return 2
    from gecko_cli.eval.data import read_qrels

    runs = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in argv[1:]]
    missing = [str(p) for p in [Path(argv[0]), *(p for _, p in runs)] if not p.is_file()]
    if missing:
        print(f"benchmarks.bootstrap: no such file: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("\n".join(compare_runs(read_qrels(Path(argv[0])), runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
