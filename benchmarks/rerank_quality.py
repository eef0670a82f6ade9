"""Does LLM re-ranking help? SciFact **train** claims (the dev set), embedded retriever top-20,
re-ranked by QL, RC and fusions of them; nDCG@10 of each ordering against the train qrels.

The paper (large LLM, BEIR): retriever 51.3 -> QL 52.8, RC 54.1, fused 56.8.

    python -m benchmarks run rerank_quality [--queries 100 --top-k 20 --llm-dtype bfloat16]

The scored records are kept in out/rerank_quality.jsonl (a re-run with the same cache dir repeats
no LLM call), so every fusion setting is compared on the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SCIFACT, beir_subset, gecko, jsonl_text, parse_jsonl, read_jsonl, stopwatch
from benchmarks.registry import Benchmark, Context
from benchmarks.ties import by_id_ties, top_is_tied
from gecko_cli.eval.data import read_qrels
from gecko_cli.eval.metrics import retrieval_metrics
from gecko_cli.search.fusion import fuse_candidates

TASK = "Given a scientific claim, find a passage that supports or refutes it"
# Every ordering compared: single scores, then RRF over sets of them at k = 0 (Gecko) and 60, each
# set in both orders (a fused tie goes to the first listed score's favourite), and with the fused
# ties broken by id instead, as gecko did before.
FUSIONS = [("ql", "rc"), ("ql", "retriever_score"), ("rc", "retriever_score"), ("ql", "rc", "retriever_score")]
FUSIONS += [tuple(reversed(f)) for f in FUSIONS]


@dataclass
class Params:
    queries: int = 100  # the first N judged train claims (by id)
    top_k: int = 20
    data: str = str(SCIFACT)  # a BEIR folder with qrels/train.tsv
    kept: str = "out/rerank_quality.jsonl"  # the scored records, kept for re-use
    llm_dtype: str = "float32"  # rerank's --llm-dtype: does bf16 change the teacher's ordering?


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


def run(params: Params, context: Context) -> dict[str, Any]:
    data = Path(params.data)
    qrels = read_qrels(data / "qrels" / "train.tsv")
    texts = {q["_id"]: q["text"] for q in read_jsonl(data / "queries.jsonl")}
    chosen = sorted(qrels, key=int)[: params.queries]
    records = jsonl_text({"id": q, "task": TASK, "query": texts[q]} for q in chosen)
    with stopwatch() as watch:
        proc = gecko("rerank", "--scorers", "ql,rc", "--fuse", "ql,rc", "--corpus", str(data / "corpus.jsonl"),
                     "--top-k", str(params.top_k), "--no-seed", "--llm-dtype", params.llm_dtype, stdin=records)
    kept = ROOT / params.kept
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(proc.stdout)
    out = parse_jsonl(proc.stdout)
    sub = {q: qrels[q] for q in chosen}
    metrics = {name: retrieval_metrics(sub, r) for name, r in orderings(out).items()}
    ndcg = {name: round(m["ndcg@10"], 4) for name, m in metrics.items()}
    # The top candidate is what FRet trains on as the positive: is it relevant? (nDCG@1 with
    # binary qrels; SciFact's are all 1.)
    top1 = {name: round(m["ndcg@1"], 4) for name, m in metrics.items()}
    return {"queries": len(out), "top_k": params.top_k, "split": "SciFact train (dev)",
            "llm": "SmolLM2-135M-Instruct (embedded)", "llm_dtype": params.llm_dtype, "rerank_seconds": round(watch.wall, 1),
            "pairs": sum(len(r["candidates"]) for r in out), "ndcg@10": ndcg, "best": max(ndcg, key=ndcg.get),
            "top1_relevant": top1, "best_top1": max(top1, key=top1.get),
            "top_fused_tie_share_k0": {"+".join(f): top_tie_share(out, list(f), 0) for f in FUSIONS[:4]},
            "stderr_summary": [line for line in proc.stderr.decode().splitlines() if line.startswith("gecko rerank:")]}


def quick_setup(params: Params, context: Context) -> Params:
    """2 train claims, top 3 of the abstracts they cite and 30 others (cut to 40 words: the LLM's
    forward passes are what costs)."""
    data = beir_subset(Path(params.data), context.workdir / "scifact", {"train": 2}, extra_docs=30)
    corpus = read_jsonl(data / "corpus.jsonl")
    (data / "corpus.jsonl").write_text(jsonl_text(dict(d, text=" ".join(d["text"].split()[:40])) for d in corpus))
    return replace(params, queries=2, top_k=3, data=str(data), kept=str(context.workdir / "kept.jsonl"))


BENCHMARK = Benchmark(
    name="rerank_quality",
    summary="nDCG@10 of retriever, QL, RC and their RRF fusions on SciFact train claims (the dev set)",
    params=Params, run=run, quick_setup=quick_setup,
)
