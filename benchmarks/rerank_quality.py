"""Does LLM re-ranking help? SciFact **train** claims (the dev set), embedded retriever top-20,
re-ranked by QL, RC and their fusion; nDCG@10 of each ordering against the train qrels.

The paper (large LLM, BEIR): retriever 51.3 -> QL 52.8, RC 54.1, fused 56.8.

    python benchmarks/rerank_quality.py [--queries 100] [--top-k 20]

Writes benchmarks/results/rerank_quality.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gecko_cli.data import read_qrels  # noqa: E402
from gecko_cli.fusion import fuse_candidates  # noqa: E402
from gecko_cli.metrics import retrieval_metrics  # noqa: E402

DATA = ROOT / "examples" / "data" / "scifact"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()
    qrels = read_qrels(DATA / "qrels" / "train.tsv")
    texts = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (DATA / "queries.jsonl").open()}
    chosen = sorted(qrels, key=int)[: args.queries]
    records = "".join(json.dumps({"id": q, "task": "Given a scientific claim, find a passage that supports or refutes it",
                                  "query": texts[q]}) + "\n" for q in chosen)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gecko_cli", "rerank", "--corpus", str(DATA / "corpus.jsonl"),
                           "--top-k", str(args.top_k), "--no-seed"], input=records.encode(), capture_output=True, check=True)
    seconds = time.monotonic() - start
    out = [json.loads(l) for l in proc.stdout.splitlines()]
    rankings: dict[str, dict[str, list[str]]] = {"retriever": {}, "ql": {}, "rc": {}}
    fused = {f"rrf_k{k}": {} for k in (0, 60)}
    for record in out:
        cands = record["candidates"]
        for name in ("retriever_score", "ql", "rc"):
            key = "retriever" if name == "retriever_score" else name
            rankings[key][record["id"]] = [c["id"] for c in sorted(cands, key=lambda c: -c[name])]
        for k in (0, 60):
            fused[f"rrf_k{k}"][record["id"]] = [c["id"] for c in fuse_candidates(cands, ["ql", "rc"], k)]
        fused.setdefault("rrf_ql_retriever_k0", {})[record["id"]] = [
            c["id"] for c in fuse_candidates(cands, ["ql", "retriever_score"], 0)]
    rankings.update(fused)
    sub = {q: qrels[q] for q in chosen}
    result = {"date": time.strftime("%Y-%m-%d"), "queries": len(out), "top_k": args.top_k, "llm": "SmolLM2-135M-Instruct (embedded)",
              "rerank_seconds": round(seconds, 1), "pairs": sum(len(r["candidates"]) for r in out),
              "ndcg@10": {name: round(retrieval_metrics(sub, r)["ndcg@10"], 4) for name, r in rankings.items()},
              "stderr_summary": [l for l in proc.stderr.decode().splitlines() if l.startswith("gecko rerank:")]}
    path = ROOT / "benchmarks" / "results" / "rerank_quality.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
