"""hnswlib vs exact search, and a second `gecko retrieve` served from the caches.

1. 100,000 random unit vectors of dimension 384 and 1,000 queries: recall@20 of the
   hnswlib index (M=16, ef_construction=200, gecko's defaults) against exact search, and the
   queries/s ratio, at ef 100..1600 (goals: recall >= 0.99 and >= 20x at once).
   The same at the same scale on real embeddings (100,000 sentences of the shared corpora,
   1,000 SciFact claims), and on SciFact abstracts and claims.
2. `gecko retrieve` over real SciFact abstracts twice with one cache dir: the second run
   re-uses the cached embeddings and the persisted index (time ratio reported).

Writes benchmarks/results/retrieve.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gecko_cli.search.index import Manifest, Searcher  # noqa: E402
from gecko_cli.search.vectors import exact_top_k  # noqa: E402


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top k that the index found."""
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))


def ann_sweep(corpus: np.ndarray, q: np.ndarray, k: int, efs: tuple[int, ...], name: str) -> dict:
    """Exact top k, then one hnswlib index (gecko's defaults) searched at each ef: recall and the
    speed ratio against exact search, measured side by side; the goal is >= 0.99 and >= 20x at once."""
    start = time.perf_counter()
    exact, _ = exact_top_k(q, corpus, k)
    exact_time = time.perf_counter() - start
    start = time.perf_counter()
    searcher = Searcher(corpus, Manifest(name, corpus.shape[1], name, len(corpus)), root=None)
    build = time.perf_counter() - start
    sweep = []
    for ef in efs:
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


def ann_vs_exact(n: int = 100_000, dim: int = 384, queries: int = 1_000, k: int = 20,
                 efs: tuple[int, ...] = (100, 200, 400, 800, 1600)) -> dict:
    """One index (gecko's defaults M=16, ef_construction=200), searched at several ef.

    i.i.d. Gaussian directions in 384 dimensions are the hardest case for any graph index: every
    point is nearly equidistant from every other, so a query's true top 20 are barely closer than
    the rest. The sweep shows what recall costs there; real embeddings are measured below.
    """
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(n, dim)).astype(np.float32)
    q = rng.normal(size=(queries, dim)).astype(np.float32)
    return {"corpus": n, "dim": dim, "queries": queries, "k": k, **ann_sweep(corpus, q, k, efs, "random")}


def real_embeddings(k: int = 20) -> dict:
    """The same comparison on real data: SciFact abstracts and test claims, embedded by the default model."""
    from gecko_cli.search.embed import load_encoder

    data = ROOT / "examples" / "data" / "scifact"
    docs = [json.loads(l) for l in (data / "corpus.jsonl").open()]
    claims = [json.loads(l)["text"] for l in (data / "queries.jsonl").open()]
    encoder = load_encoder(None)
    corpus = encoder.encode([(d["title"] + " " + d["text"]).strip() for d in docs])
    queries = encoder.encode(claims)
    out = {"corpus": len(docs), "queries": len(claims), "k": k}
    start = time.perf_counter()
    exact, _ = exact_top_k(queries, corpus, k)
    exact_time = time.perf_counter() - start
    searcher = Searcher(corpus, Manifest("bench-real", corpus.shape[1], "scifact", len(docs)), root=None)
    for ef in (100, 400):
        searcher.ef = ef
        start = time.perf_counter()
        approx, _ = searcher.search(queries, k)
        out[f"ef{ef}"] = {"recall@20": round(recall(approx, exact, k), 4),
                          "speedup": round(exact_time / (time.perf_counter() - start), 1)}
    return out


def real_sentences(n: int = 100_000, queries: int = 1_000, k: int = 20, efs: tuple[int, ...] = (100, 200, 400)) -> dict:
    """The random-vector comparison at the same scale on real embeddings: 100,000 sentences cut from
    every corpus in ../shared/data and examples/data (SciFact, BoolQ, CACM, CISI, Cranfield,
    MEDLINE abstracts; STS Benchmark and SICK-R sentences), embedded by the default model, and
    1,000 SciFact claims as queries. Embeddings go through gecko's cache (a re-run encodes nothing)."""
    import csv
    import hashlib
    import re

    from gecko_cli.search.embed import load_encoder

    shared = ROOT.parent / "shared" / "data"
    texts: set[str] = set()
    for corpus in sorted(shared.glob("*/corpus.jsonl")):
        for line in corpus.open(encoding="utf-8"):
            doc = json.loads(line)
            texts.update(s.strip() for s in re.split(r"(?<=[.!?])\s+", doc.get("text", "")) if len(s.split()) >= 4)
    for tsv in sorted(shared.glob("*/*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts.update(v.strip() for key, v in row.items() if key and key.startswith("sentence") and v)
    # A fixed, unbiased sample: the n texts with the smallest hash.
    corpus_texts = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:n]
    claims = [json.loads(l)["text"] for l in (ROOT / "examples" / "data" / "scifact" / "queries.jsonl").open()][:queries]
    encoder = load_encoder(None)
    corpus, q = encoder.encode(corpus_texts), encoder.encode(claims)
    return {"corpus": len(corpus_texts), "of_distinct_sentences": len(texts), "queries": len(claims), "k": k,
            **ann_sweep(corpus, q, k, efs, "sentences")}


def second_run_cached(docs: int = 1000) -> dict:
    lines = (ROOT / "examples" / "data" / "scifact" / "corpus.jsonl").read_text().splitlines()[:docs]
    records = []
    for line in lines:
        d = json.loads(line)
        records.append(json.dumps({"id": d["_id"] + "#0", "seed": {"id": d["_id"], "title": d["title"], "text": d["text"]},
                                   "task": "search result", "query": d["title"]}))
    data = ("\n".join(records) + "\n").encode()
    times = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "GECKO_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gecko_cli", "retrieve"], input=data, env=env,
                           capture_output=True, check=True)
            times.append(time.perf_counter() - start)
    return {"records": docs, "first_seconds": round(times[0], 1), "second_seconds": round(times[1], 1),
            "ratio": round(times[0] / times[1], 1)}


PARTS = {"ann_vs_exact": ann_vs_exact, "real_sentences_100k": real_sentences,
         "real_scifact_embeddings": real_embeddings, "second_retrieve_cached": second_run_cached}


def main() -> None:
    """All parts, or only those named on the command line (merged into the existing results)."""
    out = ROOT / "benchmarks" / "results" / "retrieve.json"
    names = sys.argv[1:] or list(PARTS)
    result = json.loads(out.read_text()) if sys.argv[1:] and out.exists() else {}
    result.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores"})
    for name in names:
        result[name] = PARTS[name]()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
