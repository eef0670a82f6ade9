"""Why does FRet relabel so many positives here? Splits the relabelled share of a `gecko rerank`
output by whether the retriever found the seed, and re-fuses it with each tie rule.

    head -200 examples/passages.jsonl | gecko generate > out/tie/queries.jsonl
    gecko rerank --corpus examples/data/scifact/corpus.jsonl --top-k 20 < out/tie/queries.jsonl > out/tie/fret.jsonl
    python benchmarks/relabel_share.py out/tie/fret.jsonl [--top-k 20]

Writes benchmarks/results/relabel_share.json. No LLM call: the scores are in the records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gecko_cli.search.fusion import fuse_candidates, rank_by  # noqa: E402
from ties import by_id_ties, top_is_tied  # noqa: E402


def seed_id(record: dict) -> str:
    return str(record["seed"].get("id", record["seed"].get("_id")))


def share(hits: int, total: int) -> float:
    return round(hits / total, 4) if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fret", type=Path)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()
    records = [json.loads(line) for line in args.fret.open()]
    # gecko retrieve appends a seed it missed after its top k, so such a record has k + 1 candidates.
    missed = [len(r["candidates"]) > args.top_k for r in records]
    report: dict = {"date": time.strftime("%Y-%m-%d"), "input": str(args.fret), "records": len(records),
                    "seed_missed_by_search": sum(missed), "relabelled_share": {}}
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

    def ql_ranks_seed_first(record: dict) -> bool:
        cands = record["candidates"]
        ranks = rank_by([float(c["ql"]) for c in cands], [str(c["id"]) for c in cands])
        return next(r for c, r in zip(cands, ranks) if str(c["id"]) == seed_id(record)) == 1

    report["ql_ranks_seed_first"] = {"seed_found": sum(ql_ranks_seed_first(r) for r, m in zip(records, missed) if not m)}
    out = ROOT / "benchmarks" / "results" / "relabel_share.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
