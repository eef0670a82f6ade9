"""query_writer.sh's Python steps (`make query-writer`: another LLM writes the queries, after make e2e).

    python -m benchmarks.query_writer same-seeds out/query-writer out/e2e   # the embedded writer's records
    python -m benchmarks.query_writer report out/query-writer URL           # -> benchmarks/results/e2e_query_writer.json

The report is written in the result envelope; it needs the whole experiment's outputs and an LLM
server, so it is not a registered benchmark (no --quick run covers it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bootstrap import paired_bootstrap, per_query_ndcg, read_run
from benchmarks.common import RESULTS, SCIFACT, filter_jsonl, read_jsonl
from benchmarks.registry import envelope

NAME = "e2e_query_writer"
# (a, b) pairs compared by a paired bootstrap over the dev queries
PAIRS = [("model-other-fused", "model-smol-fused"), ("model-other-seed", "model-smol-seed"),
         ("model-other-fused", "all-MiniLM-L6-v2"), ("model-smol-fused", "all-MiniLM-L6-v2"),
         ("model-other-seed", "all-MiniLM-L6-v2"), ("model-other-fused", "model-other-seed")]


def same_seeds(out: Path, e2e: Path) -> None:
    """smol-fret.jsonl: the e2e run's records for exactly the passages the other writer got through."""
    done = {r["seed"]["id"] for r in read_jsonl(out / "queries.jsonl")}
    done |= {json.loads(r["raw"])["id"] for r in read_jsonl(out / "generate-rejects.jsonl")}
    filter_jsonl(e2e / "fret.jsonl", out / "smol-fret.jsonl", lambda r: r["seed"]["id"] in done)


def seed_ranks(path: Path) -> list[int]:
    """The seed's rank by retriever score; 21 when the search missed it (it was appended)."""
    ranks = []
    for r in read_jsonl(path):
        ids = [str(c["id"]) for c in sorted(r["candidates"], key=lambda c: -c["retriever_score"])]
        ranks.append(21 if len(ids) > 20 else ids.index(str(r["seed"]["id"])) + 1)
    return ranks


def per_query(path: Path, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Per-query nDCG@10 of a TREC run file, over the judged queries it ranks."""
    run = read_run(path)
    return per_query_ndcg({q: qrels[q] for q in run if q in qrels}, run)


def compare(out: Path, qrels: dict, a: str, b: str, dim: int) -> dict[str, Any]:
    """Paired bootstrap of the mean per-query nDCG@10 difference a - b: is it more than the noise?"""
    x, y = (per_query(out / "runs" / f"{m}-{dim}.trec", qrels) for m in (a, b))
    diff = paired_bootstrap(y, x, samples=2000)
    return {"a": a, "b": b, "dim": dim, "queries": diff["queries"], "mean_diff": round(diff["diff"], 4),
            "ci95": [round(diff["low"], 4), round(diff["high"], 4)]}


def report(out: Path, url: str) -> dict[str, Any]:
    from gecko_cli.eval.data import read_qrels

    first = read_jsonl(out / "queries.jsonl", 1)[0]["_provenance"][0]
    result: dict[str, Any] = {
        "what": "query writer ablation: the other LLM's queries vs the embedded SmolLM2-135M's on the same "
                "SciFact passages; same rerank, mining, fine-tuning; nDCG@10 on the DEV set (SciFact train claims)",
        "other_llm": {"url": url, "model": first.get("model")},
        "passages": len(read_jsonl(out / "passages.jsonl")),
        "timings": read_jsonl(out / "timings.jsonl"), "writers": {}}
    for who in ("smol", "other"):
        ranks = seed_ranks(out / f"{who}-fret.jsonl")
        audit = json.loads((out / f"audit-{who}-fused.json").read_text())
        result["writers"][who] = {
            "records": len(ranks),
            "seed_first_by_retriever": round(sum(r == 1 for r in ranks) / len(ranks), 4),
            "seed_in_top20": round(sum(r <= 20 for r in ranks) / len(ranks), 4),
            "positive_not_seed_share": audit["positive_not_seed_share"],
            "finetune": {p: json.loads((out / f"finetune-{who}-{p}.json").read_text()) for p in ("fused", "seed")}}
    result["dev_ndcg@10"] = [{"model": r["model"], "dim": r["dim"], "ndcg@10": r["ndcg@10"]}
                             for r in read_jsonl(out / "dev-metrics.jsonl")]
    qrels = read_qrels(SCIFACT / "qrels" / "train.tsv")
    for row in result["dev_ndcg@10"]:  # the runs re-score to evaluate's own figures, or the test below means nothing
        mine = per_query(out / "runs" / f"{Path(row['model']).name}-{row['dim']}.trec", qrels)
        assert abs(np.mean(list(mine.values())) - row["ndcg@10"]) < 1e-4, (row, np.mean(list(mine.values())))
    result["paired_bootstrap"] = [compare(out, qrels, a, b, dim) for dim in (384, 128) for a, b in PAIRS]
    return result


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "same-seeds":
        same_seeds(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "report":
        out, url = Path(argv[1]), argv[2]
        result = envelope(NAME, {"source": str(out), "url": url}, report(out, url))
        path = RESULTS / f"{NAME}.json"
        path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(f"{NAME}: wrote {path}", file=sys.stderr)
        return 0
    print("usage: python -m benchmarks.query_writer same-seeds OUT E2E | report OUT URL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
