"""Evaluation cores: retrieval (BEIR), STS, and positive-vs-negatives on training records.

Used by `gecko evaluate` and by `gecko finetune --eval`.

Every `--dims` value comes from one encoding pass: the full vectors are encoded
(and cached) once, then truncated and re-normalised per dimension (Matryoshka).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from gecko_cli.eval.data import BeirDataset, StsPairs
from gecko_cli.search.embed import Encoder, truncate
from gecko_cli.contract.errors import UsageError
from gecko_cli.eval.metrics import pair_ranking_metrics, pearson, retrieval_metrics, spearman
from gecko_cli.contract.text_format import Templates
from gecko_cli.search.vectors import exact_top_k

RUN_DEPTH = 100  # every metric is cut at 100 or less; the TREC run keeps the same depth


def check_dims(dims: Sequence[int], full: int) -> list[int]:
    """The dimensions to report (default: the model's own), each 1..full.

    >>> check_dims([], 384), check_dims([384, 64], 384)
    ([384], [384, 64])
    """
    bad = [d for d in dims if not 0 < d <= full]
    if bad:
        raise UsageError(f"--dims {bad[0]}: the model has {full} dimensions")
    return list(dims) or [full]


def rank_corpus(queries: np.ndarray, corpus: np.ndarray, query_ids: Sequence[str],
                doc_ids: Sequence[str], depth: int = RUN_DEPTH) -> dict[str, list[tuple[str, float]]]:
    """Exact cosine ranking: query id -> [(doc id, score)] best first, `depth` long."""
    idx, scores = exact_top_k(queries, corpus, depth)
    return {q: [(doc_ids[i], float(s)) for i, s in zip(row_idx, row_scores)]
            for q, row_idx, row_scores in zip(query_ids, idx, scores)}


def trec_run_lines(run: dict[str, list[tuple[str, float]]], tag: str) -> Iterator[str]:
    """`qid Q0 docid rank score tag` lines (trec_eval's run format).

    >>> list(trec_run_lines({"q1": [("d9", 0.5)]}, "gecko"))
    ['q1 Q0 d9 1 0.500000000 gecko']
    """
    for qid, ranked in run.items():
        for rank, (doc, score) in enumerate(ranked, 1):
            yield f"{qid} Q0 {doc} {rank} {score:.9f} {tag}"


Run = dict[str, list[tuple[str, float]]]


def evaluate_retrieval(encoder: Encoder, data: BeirDataset, dims: Sequence[int],
                       templates: Templates) -> tuple[list[dict[str, Any]], dict[int, Run]]:
    """One metrics row per dimension for a BEIR dataset split, and the ranking per dimension."""
    doc_ids = list(data.corpus)
    query_ids = list(data.queries)
    docs = encoder.encode([templates.render_document(d["text"], d["title"]) for d in data.corpus.values()],
                          what=f"{data.name} documents")
    queries = encoder.encode([templates.render_query(data.queries[q]) for q in query_ids],
                             what=f"{data.name} queries")
    rows, runs = [], {}
    for dim in check_dims(dims, docs.shape[1]):
        run = runs[dim] = rank_corpus(truncate(queries, dim), truncate(docs, dim), query_ids, doc_ids)
        metrics = retrieval_metrics(data.qrels, {q: [d for d, _ in r] for q, r in run.items()})
        rows.append({"dataset": data.name, "split": data.split, "dim": dim,
                     "n_queries": len(query_ids), **_rounded(metrics)})
    return rows, runs


def evaluate_sts(encoder: Encoder, pairs: StsPairs, dims: Sequence[int], templates: Templates) -> list[dict[str, Any]]:
    """Spearman and Pearson of cosine similarity against the gold scores, per dimension.

    Both sentences go on the query side: a symmetric task (Gecko §3.1).
    """
    unique = list(dict.fromkeys(pairs.first + pairs.second))
    vectors = encoder.encode([templates.render_query(s) for s in unique], what=f"{pairs.name} sentences")
    position = {s: i for i, s in enumerate(unique)}
    a_idx = [position[s] for s in pairs.first]
    b_idx = [position[s] for s in pairs.second]
    rows = []
    for dim in check_dims(dims, vectors.shape[1]):
        cut = truncate(vectors, dim)
        cosine = np.sum(cut[a_idx] * cut[b_idx], axis=1)
        rows.append({"dataset": pairs.name, "split": pairs.split, "dim": dim, "n_pairs": len(pairs.scores),
                     "spearman": round(spearman(cosine, pairs.scores), 6),
                     "pearson": round(pearson(cosine, pairs.scores), 6)})
    return rows


def evaluate_pairs(encoder: Encoder, records: Iterable[dict[str, Any]], dims: Sequence[int],
                   templates: Templates, name: str = "<stdin>") -> list[dict[str, Any]]:
    """Accuracy@1 and MRR of each training record's positive against its own negatives."""
    records = [r for r in records if r.get("negatives")]
    queries = [templates.render_query(r["query"], r.get("task")) for r in records]
    docs = [templates.render_document(d["text"], d.get("title")) for r in records
            for d in [r["positive"], *r["negatives"]]]
    q_vec = encoder.encode(queries, what="queries")
    d_vec = encoder.encode(docs, what="passages")
    sizes = [1 + len(r["negatives"]) for r in records]
    starts = np.cumsum([0, *sizes])
    rows = []
    for dim in check_dims(dims, q_vec.shape[1] if len(records) else 1):
        q, d = truncate(q_vec, dim), truncate(d_vec, dim)
        scores = [d[starts[i]:starts[i + 1]] @ q[i] for i in range(len(records))]
        metrics = pair_ranking_metrics(np.array([s[0] for s in scores]), [s[1:] for s in scores])
        rows.append({"dataset": name, "split": "records", "dim": dim, "n_queries": len(records),
                     **_rounded(metrics)})
    return rows


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in metrics.items()}


def run_file_path(template: str, model: str, dataset: str, dim: int) -> Path:
    """`--run-file` with its `{model}`, `{dataset}` and `{dim}` slots filled.

    >>> str(run_file_path("runs/{dataset}-{dim}.trec", "m", "scifact", 384))
    'runs/scifact-384.trec'
    """
    safe_model = Path(model).name.replace("/", "_") or "model"
    return Path(template.format(model=safe_model, dataset=dataset, dim=dim))


def check_run_file(template: str, models: int, datasets: int, dims: int) -> None:
    """One TREC run per file: several models, datasets or dims need slots in the path."""
    for count, slot in ((models, "{model}"), (datasets, "{dataset}"), (dims, "{dim}")):
        if count > 1 and slot not in template:
            raise UsageError(f"--run-file: several runs need {slot} in the path, "
                             "for example runs/{model}.{dataset}.{dim}.trec")
