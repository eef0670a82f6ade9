"""Summarise a `make e2e` run (out/e2e/): the results table, the ablation, the goals, the two figures.

    python -m benchmarks run e2e [--source out/e2e]        # e2e.sh runs this at its end
    python -m benchmarks.e2e markdown benchmarks/results/e2e.json   # the README's tables
    python -m benchmarks.e2e seed-passages 2000            # e2e.sh's step 1

Reads metrics.jsonl (gecko evaluate rows), timings.jsonl, audit-*.json and the sizes of the
intermediate files; copies dims.png and seed-rank-fused-rank20.png beside the result as
NAME-dims.png and NAME-seed-rank.png. Goals (issue 6), judged on the main model (positive = LLM
top-1, negative = rank 20): SciFact test nDCG@10 >= base + 3.0; STS Benchmark test Spearman >=
base - 1.0; no out-of-domain set below base - 1.0; at 128 dims >= 97% of the full-dimension
nDCG@10; the LLM-chosen positive at least as good as the seed positive.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SCIFACT, beir_subset, count_lines, gecko, jsonl_text, missing_paths, read_jsonl
from benchmarks.registry import Benchmark, Context

MAIN = "fused-rank20"
OUT_OF_DOMAIN = ("medline", "cisi", "cranfield")
FIGURES = {"dims.png": "dims", f"seed-rank-{MAIN}.png": "seed-rank"}


@dataclass
class Params:
    source: str = "out/e2e"  # the experiment's output folder (relative to the repository root)


def seed_passages(n: int) -> list[dict[str, Any]]:
    """The n SciFact abstracts with the smallest sha256(id): a fixed, unbiased sample."""
    rows = read_jsonl(SCIFACT / "corpus.jsonl")
    rows.sort(key=lambda r: hashlib.sha256(r["_id"].encode()).hexdigest())
    return [{"id": r["_id"], "title": r["title"], "text": r["text"]} for r in rows[:n]]


def scores(rows: list[dict]) -> dict[tuple[str, str, int], float]:
    """(model, dataset, dim) -> headline metric x100; the base model is called "base"."""
    score = {}
    for r in rows:
        metric = "ndcg@10" if "ndcg@10" in r else "spearman"
        name = "base" if r["model"] in ("all-MiniLM-L6-v2", "default") else Path(r["model"]).name.removeprefix("model-")
        score[(name, r["dataset"], int(r["dim"]))] = round(100 * r[metric], 2)
    return score


def goals(score: dict[tuple[str, str, int], float], full: int) -> dict[str, Any]:
    def delta(model: str, dataset: str, dim: int = full) -> float | None:
        a, b = score.get((model, dataset, dim)), score.get(("base", dataset, dim))
        return None if a is None or b is None else round(a - b, 2)

    out: dict[str, Any] = {}
    if (MAIN, "scifact", full) not in score:
        return out
    out["scifact_gain_ge_3"] = {"gain": delta(MAIN, "scifact"), "met": (delta(MAIN, "scifact") or 0) >= 3.0}
    sts = delta(MAIN, "stsbenchmark")
    out["stsb_drop_le_1"] = {"change": sts, "met": sts is not None and sts >= -1.0}
    ood = {d: delta(MAIN, d) for d in OUT_OF_DOMAIN if (MAIN, d, full) in score}
    out["ood_drop_le_1"] = {"changes": ood, "met": all(v is not None and v >= -1.0 for v in ood.values())}
    if (MAIN, "scifact", 128) in score:
        share = score[(MAIN, "scifact", 128)] / score[(MAIN, "scifact", full)]
        out["dim128_ge_97pct"] = {"share": round(share, 4), "met": share >= 0.97}
    seed = [score.get((f"seed-{n}", "scifact", full)) for n in ("rank20", "random", "none")]
    fused = [score.get((f"fused-{n}", "scifact", full)) for n in ("rank20", "random", "none")]
    if all(v is not None for v in seed + fused):
        met = sum(fused) >= sum(seed)  # type: ignore[arg-type]
        out["llm_positive_ge_seed"] = {"fused": fused, "seed": seed, "met": met}
    return out


def report(out: Path) -> dict[str, Any]:
    """The e2e.json results: table, ablation, goals, record counts, stage times, the main audit."""
    score = scores(read_jsonl(out / "metrics.jsonl"))
    models = sorted({m for m, _, _ in score}, key=lambda m: (m != "base", m != MAIN, m))
    datasets = sorted({d for _, d, _ in score})
    dims = sorted({d for _, _, d in score}, reverse=True)
    table = {m: {d: {str(k): score.get((m, d, k)) for k in dims} for d in datasets} for m in models}
    full = dims[0] if dims else 384
    ablation = {f"{p}/{n}": score.get((f"{p}-{n}", "scifact", full))
                for p in ("seed", "fused") for n in ("none", "random", "rank20")}
    audit_file = out / f"audit-{MAIN}.json"
    audit = json.loads(audit_file.read_text()) if audit_file.exists() else None
    sizes = {name: count_lines(out / name) for name in
             ("passages.jsonl", "queries.jsonl", "fret.jsonl", f"train-{MAIN}.jsonl") if (out / name).exists()}
    timings = read_jsonl(out / "timings.jsonl")
    return {"metric": "nDCG@10 (retrieval) / Spearman (STS), x100",
            "records": sizes, "timings_s": {t["stage"]: t["seconds"] for t in timings},
            "timing_notes": {t["stage"]: t["note"] for t in timings if "note" in t},
            "table": table, "ablation_scifact_test_ndcg10": ablation, "goals": goals(score, full),
            "audit": audit and {k: audit[k] for k in audit if k in
                                ("positive_not_seed_share", "seed_fused_rank", "ql_rc_kendall_tau_mean",
                                 "ql_retriever_kendall_tau_mean")}}


def markdown(results: dict[str, Any]) -> str:
    """The README's tables: base vs the main model per dataset and dimension, then the ablation."""
    table = results["table"]
    dims = list(next(iter(table.get("base", {}).values()), {}))  # as the report has them, widest first
    head = "| dataset | " + " | ".join(f"base {d}" for d in dims) + " | " + " | ".join(f"FRet {d}" for d in dims) + " |"
    lines = [head, "|---" * (1 + 2 * len(dims)) + "|"]
    order = ["scifact", *OUT_OF_DOMAIN, "stsbenchmark", "sick-r"]
    for dataset in sorted(table.get("base", {}), key=lambda d: order.index(d) if d in order else len(order)):
        base, main_ = table["base"][dataset], table.get(MAIN, {}).get(dataset, {})
        cells = [f"{base.get(d)}" for d in dims] + [f"{main_.get(d)}" for d in dims]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    ab = results["ablation_scifact_test_ndcg10"]
    lines += ["", "| positive \\ negative | none | random | rank 20 |", "|---|---|---|---|"]
    for p in ("seed", "fused"):
        lines.append(f"| {p} | " + " | ".join(str(ab.get(f"{p}/{n}")) for n in ("none", "random", "rank20")) + " |")
    return "\n".join(lines)


def run(params: Params, context: Context) -> dict[str, Any]:
    source = ROOT / params.source
    for name, suffix in FIGURES.items():  # the figures travel with the result
        if (source / name).exists():
            context.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, context.out.with_name(f"{context.out.stem}-{suffix}.png"))
    return report(source)


def quick_setup(params: Params, context: Context) -> Params:
    """A toy out/e2e made by the real commands: 4 seed passages, `gecko evaluate` of the base model
    on 5 SciFact claims (with its plot), and the mine-negatives audit of the tests' golden rerank output."""
    out = context.workdir / "e2e"
    out.mkdir()
    (out / "passages.jsonl").write_text(jsonl_text(seed_passages(4)), encoding="utf-8")
    data = beir_subset(SCIFACT, context.workdir / "scifact", {"test": 5}, extra_docs=40)
    metrics = gecko("evaluate", "--dataset", str(data), "--dims", "384,128", "--plot", str(out / "dims.png")).stdout
    (out / "metrics.jsonl").write_bytes(metrics)
    gecko("mine-negatives", "--positive", "fused", "--strategy", "rank:3",
          "-i", str(ROOT / "tests/data/fret_scored.jsonl"), "--audit", str(out / f"audit-{MAIN}.json"), "--audit-plot", str(out / f"seed-rank-{MAIN}.png"),
          "-o", str(out / f"train-{MAIN}.jsonl"))
    (out / "timings.jsonl").write_text(json.dumps({"stage": "evaluate", "seconds": 0, "note": "quick"}) + "\n")
    return replace(params, source=str(out))


BENCHMARK = Benchmark(
    name="e2e",
    summary="the make-e2e report: base vs FRet fine-tunes on six sets and four dims, Table 3 ablation, goals",
    params=Params, run=run, quick_setup=quick_setup, after="make e2e",
    needs=lambda p: missing_paths(ROOT / p.source / "metrics.jsonl"),
)


def main(argv: list[str]) -> int:
    """`markdown RESULT.json` prints the README's tables; `seed-passages N` prints e2e.sh's passages."""
    if len(argv) == 2 and argv[0] == "markdown":
        results = json.loads(Path(argv[1]).read_text())
        print(markdown(results.get("results", results)))
        return 0
    if len(argv) == 2 and argv[0] == "seed-passages":
        sys.stdout.write(jsonl_text(seed_passages(int(argv[1]))))
        return 0
    print("usage: python -m benchmarks.e2e markdown RESULT.json | seed-passages N", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
