"""hnswlib vs exact search, and a second `gecko retrieve` served from the caches.

1. 100,000 random unit vectors of dimension 384 and 1,000 queries: recall@20 of the hnswlib index
   (M=16, ef_construction=200, gecko's defaults) against exact search, and the queries/s ratio, at
   ef 100..1600 (goals: recall >= 0.99 and >= 20x at once). The same at the same scale on real
   embeddings (100,000 sentences of the shared corpora, 1,000 SciFact claims), and on SciFact
   abstracts and claims.
2. `gecko retrieve` over real SciFact abstracts twice with one cache dir: the second run re-uses
   the cached embeddings and the persisted index (time ratio reported).

    python -m benchmarks run retrieve [--parts ann_vs_exact,second_retrieve_cached]

Naming some parts merges them into the existing result file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from benchmarks.common import GECKO, SCIFACT, SHARED_DATA, gecko_env, missing_paths, read_jsonl
from benchmarks.registry import Benchmark, Context

PARTS = ("ann_vs_exact", "real_sentences_100k", "real_scifact_embeddings", "second_retrieve_cached")


@dataclass
class Params:
    parts: str = ",".join(PARTS)  # a subset is merged into the existing result file
    k: int = 20
    random_vectors: int = 100_000
    random_queries: int = 1_000
    random_efs: str = "100,200,400,800,1600"
    sentences: int = 100_000
    sentence_queries: int = 1_000
    sentence_efs: str = "100,200,400"
    scifact_docs: int = 0  # 0: the whole corpus
    scifact_queries: int = 0  # 0: every claim
    second_run_docs: int = 1000


def efs(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top k that the index found."""
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))


def ann_sweep(corpus: np.ndarray, q: np.ndarray, k: int, ef_list: tuple[int, ...], name: str) -> dict[str, Any]:
    """Exact top k, then one hnswlib index (gecko's defaults) searched at each ef: recall and the
    speed ratio against exact search, measured side by side; the goal is >= 0.99 and >= 20x at once."""
    from gecko_cli.search.index import Manifest, Searcher
    from gecko_cli.search.vectors import exact_top_k

    start = time.perf_counter()
    exact, _ = exact_top_k(q, corpus, k)
    exact_time = time.perf_counter() - start
    start = time.perf_counter()
    searcher = Searcher(corpus, Manifest(name, corpus.shape[1], name, len(corpus)), root=None)
    build = time.perf_counter() - start
    sweep = []
    for ef in ef_list:
        searcher.ef = ef
        start = time.perf_counter()
        approx, _ = searcher.search(q, k)
        ann_time = time.perf_counter() - start
        sweep.append({"ef": ef, "recall@20": round(recall(approx, exact, k), 4),
                      "hnsw_queries_per_second": round(len(q) / ann_time, 1), "speedup": round(exact_time / ann_time, 1)})
    good = [row for row in sweep if row["recall@20"] >= 0.99]
    return {"M": 16, "ef_construction": 200, "build_seconds": round(build, 1),
            "exact_queries_per_second": round(len(q) / exact_time, 1), "sweep": sweep,
            "goal_met": any(row["speedup"] >= 20 for row in good),
            "fastest_at_recall_0.99": max(good, key=lambda r: r["speedup"]) if good else None}


def ann_vs_exact(p: Params) -> dict[str, Any]:
    """One index (gecko's defaults M=16, ef_construction=200), searched at several ef.

    i.i.d. Gaussian directions in 384 dimensions are the hardest case for any graph index: every
    point is nearly equidistant from every other, so a query's true top 20 are barely closer than
    the rest. The sweep shows what recall costs there; real embeddings are measured below.
    """
    dim = 384
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(p.random_vectors, dim)).astype(np.float32)
    q = rng.normal(size=(p.random_queries, dim)).astype(np.float32)
    return {"corpus": p.random_vectors, "dim": dim, "queries": p.random_queries, "k": p.k,
            **ann_sweep(corpus, q, p.k, efs(p.random_efs), "random")}


def real_embeddings(p: Params) -> dict[str, Any]:
    """The same comparison on real data: SciFact abstracts and claims, embedded by the default model."""
    from gecko_cli.search.embed import load_encoder
    from gecko_cli.search.index import Manifest, Searcher
    from gecko_cli.search.vectors import exact_top_k

    docs = read_jsonl(SCIFACT / "corpus.jsonl", p.scifact_docs or None)
    claims = [c["text"] for c in read_jsonl(SCIFACT / "queries.jsonl", p.scifact_queries or None)]
    encoder = load_encoder(None)
    corpus = encoder.encode([(d["title"] + " " + d["text"]).strip() for d in docs])
    queries = encoder.encode(claims)
    out: dict[str, Any] = {"corpus": len(docs), "queries": len(claims), "k": p.k}
    start = time.perf_counter()
    exact, _ = exact_top_k(queries, corpus, p.k)
    exact_time = time.perf_counter() - start
    searcher = Searcher(corpus, Manifest("bench-real", corpus.shape[1], "scifact", len(docs)), root=None)
    for ef in (100, 400):
        searcher.ef = ef
        start = time.perf_counter()
        approx, _ = searcher.search(queries, p.k)
        out[f"ef{ef}"] = {"recall@20": round(recall(approx, exact, p.k), 4),
                          "speedup": round(exact_time / (time.perf_counter() - start), 1)}
    return out


def sentence_texts() -> set[str]:
    """Every sentence of 4+ words in the shared corpora, and every STS sentence."""
    texts: set[str] = set()
    for corpus in sorted(SHARED_DATA.glob("*/corpus.jsonl")):
        for doc in read_jsonl(corpus):
            texts.update(s.strip() for s in re.split(r"(?<=[.!?])\s+", doc.get("text", "")) if len(s.split()) >= 4)
    for tsv in sorted(SHARED_DATA.glob("*/*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts.update(v.strip() for key, v in row.items() if key and key.startswith("sentence") and v)
    return texts


def real_sentences(p: Params) -> dict[str, Any]:
    """The random-vector comparison at the same scale on real embeddings: sentences cut from every
    shared corpus (SciFact, BoolQ, CACM, CISI, Cranfield, MEDLINE abstracts; STS Benchmark and
    SICK-R sentences), embedded by the default model, and SciFact claims as queries. Embeddings go
    through gecko's cache (a re-run encodes nothing)."""
    from gecko_cli.search.embed import load_encoder

    texts = sentence_texts()
    # A fixed, unbiased sample: the n texts with the smallest hash.
    corpus_texts = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:p.sentences]
    claims = [c["text"] for c in read_jsonl(SCIFACT / "queries.jsonl", p.sentence_queries)]
    encoder = load_encoder(None)
    corpus, q = encoder.encode(corpus_texts), encoder.encode(claims)
    return {"corpus": len(corpus_texts), "of_distinct_sentences": len(texts), "queries": len(claims), "k": p.k,
            **ann_sweep(corpus, q, p.k, efs(p.sentence_efs), "sentences")}


def second_run_cached(p: Params) -> dict[str, Any]:
    """Two `gecko retrieve` processes over the same records and one cache dir."""
    records = [{"id": d["_id"] + "#0", "seed": {"id": d["_id"], "title": d["title"], "text": d["text"]},
                "task": "search result", "query": d["title"]}
               for d in read_jsonl(SCIFACT / "corpus.jsonl", p.second_run_docs)]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    times = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([*GECKO, "retrieve"], input=data, env=gecko_env(GECKO_CACHE_DIR=cache),
                           capture_output=True, check=True)
            times.append(time.perf_counter() - start)
    return {"records": len(records), "first_seconds": round(times[0], 1), "second_seconds": round(times[1], 1),
            "ratio": round(times[0] / times[1], 1)}


RUNS: dict[str, Callable[[Params], dict[str, Any]]] = {
    "ann_vs_exact": ann_vs_exact, "real_sentences_100k": real_sentences,
    "real_scifact_embeddings": real_embeddings, "second_retrieve_cached": second_run_cached}


def run(params: Params, context: Context) -> dict[str, Any]:
    """Every part named; a subset is merged into the result file's existing parts."""
    names = params.parts.split(",")
    result: dict[str, Any] = {}
    if set(names) != set(PARTS) and context.out.exists():
        result = json.loads(context.out.read_text()).get("results", {})
    for name in names:
        result[name] = RUNS[name](params)
    return result


def needs(params: Params) -> str | None:
    return missing_paths(SHARED_DATA) if "real_sentences_100k" in params.parts.split(",") else None


BENCHMARK = Benchmark(
    name="retrieve",
    summary="hnswlib vs exact search (recall@20, speed) on random and real embeddings; a cached second retrieve",
    params=Params, run=run,
    quick={"random_vectors": 2000, "random_queries": 50, "random_efs": "100,400", "sentences": 200,
           "sentence_queries": 10, "sentence_efs": "100", "scifact_docs": 40, "scifact_queries": 10,
           "second_run_docs": 10},
    needs=needs,
)
