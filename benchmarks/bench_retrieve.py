"""hnswlib vs exact search, and a second `gecko retrieve` served from the caches.

1. 100,000 random unit vectors of dimension 384 and 1,000 queries: recall@20 of the
   hnswlib index (M=16, ef_construction=200, ef=100, gecko's defaults) against exact
   search, and the queries/s ratio (goals: recall >= 0.99, >= 20x).
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

from gecko_cli.index import Manifest, Searcher  # noqa: E402
from gecko_cli.search import exact_top_k  # noqa: E402


def ann_vs_exact(n: int = 100_000, dim: int = 384, queries: int = 1_000, k: int = 20) -> dict:
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(n, dim)).astype(np.float32)
    q = rng.normal(size=(queries, dim)).astype(np.float32)
    start = time.perf_counter()
    searcher = Searcher(corpus, Manifest("bench", dim, "random", n), root=None)
    build = time.perf_counter() - start
    start = time.perf_counter()
    approx, _ = searcher.search(q, k)
    ann_time = time.perf_counter() - start
    start = time.perf_counter()
    exact, _ = exact_top_k(q, corpus, k)
    exact_time = time.perf_counter() - start
    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))
    return {"corpus": n, "dim": dim, "queries": queries, "k": k, "M": 16, "ef_construction": 200, "ef": 100,
            "build_seconds": round(build, 1), "recall@20": round(recall, 4),
            "hnsw_queries_per_second": round(queries / ann_time, 1),
            "exact_queries_per_second": round(queries / exact_time, 1),
            "speedup": round(exact_time / ann_time, 1)}


def real_embeddings(k: int = 20) -> dict:
    """The same comparison on real data: SciFact abstracts and test claims, embedded by the default model."""
    from gecko_cli.embed import load_encoder

    data = ROOT / "examples" / "data" / "scifact"
    docs = [json.loads(l) for l in (data / "corpus.jsonl").open()]
    claims = [json.loads(l)["text"] for l in (data / "queries.jsonl").open()]
    encoder = load_encoder(None)
    corpus = encoder.encode([(d["title"] + " " + d["text"]).strip() for d in docs])
    queries = encoder.encode(claims)
    out = {"corpus": len(docs), "queries": len(claims), "k": k}
    exact, _ = exact_top_k(queries, corpus, k)
    for ef in (100, 400):
        searcher = Searcher(corpus, Manifest("bench-real", corpus.shape[1], "scifact", len(docs)), root=None, ef=ef)
        approx, _ = searcher.search(queries, k)
        out[f"recall@20_ef{ef}"] = round(float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)])), 4)
    return out


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


def main() -> None:
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "ann_vs_exact": ann_vs_exact(), "real_scifact_embeddings": real_embeddings(),
              "second_retrieve_cached": second_run_cached()}
    out = ROOT / "benchmarks" / "results" / "retrieve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
