"""Does LLM re-ranking help? SciFact **train** claims (the dev set), embedded retriever top-20,
re-ranked by QL, RC and fusions of them; nDCG@10 of each ordering against the train qrels.

The paper (large LLM, BEIR): retriever 51.3 -> QL 52.8, RC 54.1, fused 56.8.

    python benchmarks/rerank_quality.py [--queries 100] [--top-k 20]

The scored records are kept in out/rerank_quality.jsonl (a re-run with the same cache dir
repeats no LLM call), so every fusion setting is compared on the same scores.
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

from gecko_cli.eval.data import read_qrels  # noqa: E402
from gecko_cli.search.fusion import fuse_candidates  # noqa: E402
from gecko_cli.eval.metrics import retrieval_metrics  # noqa: E402
from ties import by_id_ties, top_is_tied  # noqa: E402

DATA = ROOT / "examples" / "data" / "scifact"
TASK = "Given a scientific claim, find a passage that supports or refutes it"
# Every ordering compared: single scores, then RRF over sets of them at k = 0 (Gecko) and 60, each
# set in both orders (a fused tie goes to the first listed score's favourite), and with the fused
# ties broken by id instead, as gecko did before.
FUSIONS = [("ql", "rc"), ("ql", "retriever_score"), ("rc", "retriever_score"), ("ql", "rc", "retriever_score")]
FUSIONS += [tuple(reversed(f)) for f in FUSIONS]


def top_tie_share(records: list[dict], fields: list[str], k: float) -> float:
    """Share of records whose best fused score is shared by two or more candidates."""
    return round(sum(top_is_tied(r["candidates"], fields, k) for r in records) / len(records), 4)


def orderings(records: list[dict]) -> dict[str, dict[str, list[str]]]:
    """name -> query id -> candidate ids, best first."""
    out: dict[str, dict[str, list[str]]] = {}
    for record in records:
        cands = record["candidates"]
        for name in ("retriever_score", "ql", "rc"):
            out.setdefault(name, {})[record["id"]] = [c["id"] for c in sorted(cands, key=lambda c: -c[name])]
        for fields in FUSIONS:
            for k in (0, 60):
                name = f"rrf({'+'.join(fields)}) k={k}"
                out.setdefault(name, {})[record["id"]] = [c["id"] for c in fuse_candidates(cands, list(fields), k)]
                if list(fields) == sorted(fields):  # once per set of fields (ties by id ignore the order)
                    legacy = f"rrf({'+'.join(fields)}) k={k} ties by id"
                    out.setdefault(legacy, {})[record["id"]] = by_id_ties(cands, list(fields), k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()
    qrels = read_qrels(DATA / "qrels" / "train.tsv")
    texts = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (DATA / "queries.jsonl").open()}
    chosen = sorted(qrels, key=int)[: args.queries]
    records = "".join(json.dumps({"id": q, "task": TASK, "query": texts[q]}) + "\n" for q in chosen)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gecko_cli", "rerank", "--scorers", "ql,rc", "--fuse", "ql,rc",
                           "--corpus", str(DATA / "corpus.jsonl"), "--top-k", str(args.top_k), "--no-seed"],
                          input=records.encode(), capture_output=True, check=True)
    seconds = time.monotonic() - start
    kept = ROOT / "out" / "rerank_quality.jsonl"
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(proc.stdout)
    out = [json.loads(l) for l in proc.stdout.splitlines()]
    sub = {q: qrels[q] for q in chosen}
    metrics = {name: retrieval_metrics(sub, r) for name, r in orderings(out).items()}
    ndcg = {name: round(m["ndcg@10"], 4) for name, m in metrics.items()}
    # The top candidate is what FRet trains on as the positive: is it relevant? (nDCG@1 with
    # binary qrels; SciFact's are all 1.)
    top1 = {name: round(m["ndcg@1"], 4) for name, m in metrics.items()}
    result = {"date": time.strftime("%Y-%m-%d"), "queries": len(out), "top_k": args.top_k,
              "split": "SciFact train (dev)", "llm": "SmolLM2-135M-Instruct (embedded)",
              "rerank_seconds": round(seconds, 1), "pairs": sum(len(r["candidates"]) for r in out),
              "ndcg@10": ndcg, "best": max(ndcg, key=ndcg.get),
              "top1_relevant": top1, "best_top1": max(top1, key=top1.get),
              "top_fused_tie_share_k0": {"+".join(f): top_tie_share(out, list(f), 0) for f in FUSIONS[:4]},
              "stderr_summary": [l for l in proc.stderr.decode().splitlines() if l.startswith("gecko rerank:")]}
    path = ROOT / "benchmarks" / "results" / "rerank_quality.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
