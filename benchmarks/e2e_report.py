"""Summarise a `make e2e` run (out/e2e/) as JSON: the results table, the ablation, the goals.

    python benchmarks/e2e_report.py out/e2e > benchmarks/results/e2e.json
    python benchmarks/e2e_report.py out/e2e --markdown     # the README's tables

Reads metrics.jsonl (gecko evaluate rows), timings.jsonl, audit-*.json and the sizes of the
intermediate files. Goals (issue 6), judged on the main model (positive = LLM top-1, negative =
rank 20): SciFact test nDCG@10 ≥ base + 3.0; STS Benchmark test Spearman ≥ base − 1.0; no
out-of-domain set below base − 1.0; at 128 dims ≥ 97% of the full-dimension nDCG@10; the
LLM-chosen positive at least as good as the seed positive.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MAIN = "fused-rank20"
OUT_OF_DOMAIN = ("medline", "cisi", "cranfield")


def lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()] if path.exists() else []


def main(out: Path) -> dict:
    rows = lines(out / "metrics.jsonl")
    score: dict[tuple[str, str, int], float] = {}
    for r in rows:
        metric = "ndcg@10" if "ndcg@10" in r else "spearman"
        name = "base" if r["model"] in ("all-MiniLM-L6-v2", "default") else Path(r["model"]).name.removeprefix("model-")
        score[(name, r["dataset"], int(r["dim"]))] = round(100 * r[metric], 2)
    models = sorted({m for m, _, _ in score}, key=lambda m: (m != "base", m != MAIN, m))
    datasets = sorted({d for _, d, _ in score})
    dims = sorted({d for _, _, d in score}, reverse=True)
    table = {m: {d: {str(k): score.get((m, d, k)) for k in dims} for d in datasets} for m in models}
    full = dims[0] if dims else 384

    def delta(model: str, dataset: str, dim: int = full) -> float | None:
        a, b = score.get((model, dataset, dim)), score.get(("base", dataset, dim))
        return None if a is None or b is None else round(a - b, 2)

    goals = {}
    if (MAIN, "scifact", full) in score:
        goals["scifact_gain_ge_3"] = {"gain": delta(MAIN, "scifact"), "met": (delta(MAIN, "scifact") or 0) >= 3.0}
        sts = delta(MAIN, "stsbenchmark")
        goals["stsb_drop_le_1"] = {"change": sts, "met": sts is not None and sts >= -1.0}
        ood = {d: delta(MAIN, d) for d in OUT_OF_DOMAIN if (MAIN, d, full) in score}
        goals["ood_drop_le_1"] = {"changes": ood, "met": all(v is not None and v >= -1.0 for v in ood.values())}
        if (MAIN, "scifact", 128) in score:
            share = score[(MAIN, "scifact", 128)] / score[(MAIN, "scifact", full)]
            goals["dim128_ge_97pct"] = {"share": round(share, 4), "met": share >= 0.97}
        seed = [score.get((f"seed-{n}", "scifact", full)) for n in ("rank20", "random", "none")]
        fused = [score.get((f"fused-{n}", "scifact", full)) for n in ("rank20", "random", "none")]
        if all(v is not None for v in seed + fused):
            goals["llm_positive_ge_seed"] = {"fused": fused, "seed": seed,
                                             "met": sum(fused) >= sum(seed)}  # type: ignore[arg-type]
    ablation = {f"{p}/{n}": score.get((f"{p}-{n}", "scifact", full))
                for p in ("seed", "fused") for n in ("none", "random", "rank20")}
    audit = json.loads((out / f"audit-{MAIN}.json").read_text()) if (out / f"audit-{MAIN}.json").exists() else None
    sizes = {name: sum(1 for _ in open(out / name, encoding="utf-8")) for name in
             ("passages.jsonl", "queries.jsonl", "fret.jsonl", f"train-{MAIN}.jsonl") if (out / name).exists()}
    timings = lines(out / "timings.jsonl")
    return {"date": time.strftime("%Y-%m-%d"), "metric": "nDCG@10 (retrieval) / Spearman (STS), x100",
            "records": sizes, "timings_s": {t["stage"]: t["seconds"] for t in timings},
            "timing_notes": {t["stage"]: t["note"] for t in timings if "note" in t},
            "table": table, "ablation_scifact_test_ndcg10": ablation, "goals": goals,
            "audit": audit and {k: audit[k] for k in audit if k in
                                ("positive_not_seed_share", "seed_fused_rank", "ql_rc_kendall_tau_mean",
                                 "ql_retriever_kendall_tau_mean")}}


def markdown(report: dict) -> str:
    """The README's tables: base vs the main model per dataset and dimension, then the ablation."""
    table = report["table"]
    dims = list(next(iter(table.get("base", {}).values()), {}))  # as the report has them, widest first
    head = "| dataset | " + " | ".join(f"base {d}" for d in dims) + " | " + " | ".join(f"FRet {d}" for d in dims) + " |"
    lines = [head, "|---" * (1 + 2 * len(dims)) + "|"]
    order = ["scifact", *OUT_OF_DOMAIN, "stsbenchmark", "sick-r"]
    for dataset in sorted(table.get("base", {}), key=lambda d: order.index(d) if d in order else len(order)):
        base, main_ = table["base"][dataset], table.get(MAIN, {}).get(dataset, {})
        cells = [f"{base.get(d)}" for d in dims] + [f"{main_.get(d)}" for d in dims]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    ab = report["ablation_scifact_test_ndcg10"]
    lines += ["", "| positive \\ negative | none | random | rank 20 |", "|---|---|---|---|"]
    for p in ("seed", "fused"):
        lines.append(f"| {p} | " + " | ".join(str(ab.get(f"{p}/{n}")) for n in ("none", "random", "rank20")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--markdown"]
    report = main(Path(args[0] if args else "out/e2e"))
    print(markdown(report) if "--markdown" in sys.argv else json.dumps(report, indent=1))
