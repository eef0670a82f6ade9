"""Why does FRet relabel so many positives here? Splits the relabelled share of a `gecko rerank`
output by whether the retriever found the seed, and re-fuses it with each tie rule.

The input (no LLM call here: the scores are in the records) is made with

    head -200 examples/passages.jsonl | gecko generate > out/tie/queries.jsonl
    gecko rerank --corpus examples/data/scifact/corpus.jsonl --top-k 20 < out/tie/queries.jsonl > out/tie/fret.jsonl

    python -m benchmarks run relabel_share [--fret out/tie/fret.jsonl --top-k 20]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.common import ROOT, missing_paths, read_jsonl
from benchmarks.registry import Benchmark, Context
from benchmarks.ties import by_id_ties, top_is_tied
from gecko_cli.search.fusion import fuse_candidates, rank_by


@dataclass
class Params:
    fret: str = "out/tie/fret.jsonl"  # a `gecko rerank` output (relative to the repository root)
    top_k: int = 20  # the --top-k it was made with


def seed_id(record: dict) -> str:
    return str(record["seed"].get("id", record["seed"].get("_id")))


def share(hits: int, total: int) -> float:
    return round(hits / total, 4) if total else 0.0


def ql_ranks_seed_first(record: dict) -> bool:
    cands = record["candidates"]
    ranks = rank_by([float(c["ql"]) for c in cands], [str(c["id"]) for c in cands])
    return next(r for c, r in zip(cands, ranks) if str(c["id"]) == seed_id(record)) == 1


def relabel_report(records: list[dict], top_k: int) -> dict[str, Any]:
    """Shares of records whose fused top candidate is not the seed, by tie rule and by whether the
    retriever found the seed."""
    # gecko retrieve appends a seed it missed after its top k, so such a record has k + 1 candidates.
    missed = [len(r["candidates"]) > top_k for r in records]
    report: dict[str, Any] = {"records": len(records), "seed_missed_by_search": sum(missed), "relabelled_share": {}}
    for name, fields in (("retriever settles ties", ["retriever_score", "ql"]),
                         ("ql settles ties", ["ql", "retriever_score"])):
        tops = [str(fuse_candidates(r["candidates"], fields)[0]["id"]) for r in records]
        relabelled = [t != seed_id(r) for t, r in zip(tops, records)]
        report["relabelled_share"][name] = {
            "all": share(sum(relabelled), len(records)),
            "seed_found": share(sum(x for x, m in zip(relabelled, missed) if not m), missed.count(False)),
            "seed_missed": share(sum(x for x, m in zip(relabelled, missed) if m), missed.count(True))}
    old = [by_id_ties(r["candidates"], ["ql", "retriever_score"])[0] != seed_id(r) for r in records]
    report["relabelled_share"]["ties by id (before 2026-12-03)"] = {"all": share(sum(old), len(records))}
    report["top_spot_tied_share"] = share(sum(top_is_tied(r["candidates"], ["ql", "retriever_score"])
                                              for r in records), len(records))
    report["ql_ranks_seed_first"] = {"seed_found": sum(ql_ranks_seed_first(r) for r, m in zip(records, missed) if not m)}
    return report


def run(params: Params, context: Context) -> dict[str, Any]:
    return {"input": params.fret, **relabel_report(read_jsonl(ROOT / params.fret), params.top_k)}


BENCHMARK = Benchmark(
    name="relabel_share",
    summary="how often FRet's positive is not the seed, split by whether the retriever found it (no LLM)",
    params=Params, run=run,
    # The golden rerank output of the tests: four candidates at most, so top_k 3 marks one seed missed.
    quick={"fret": "tests/data/fret_scored.jsonl", "top_k": 3},
    needs=lambda p: missing_paths(ROOT / p.fret) and f"{missing_paths(ROOT / p.fret)}: make it with the "
                                                     "commands in benchmarks/relabel_share.py",
)
