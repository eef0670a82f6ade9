"""Query quality: is a generated query's own passage in the embedded retriever's top 1 / top 20?

Exact search with all-MiniLM-L6-v2 over the 5,183 SciFact abstracts (plain document text), for
the queries `make e2e` wrote (out/e2e/queries.jsonl) on its first N seed passages, and — with
--other — for another writer's queries on the same seeds (`make query-writer`'s
out/query-writer/queries.jsonl, e.g. with QW_PASSAGES=100); then over every query of the e2e run
with plain query text and with the `task: ... | query: ...` format the e2e run retrieved with.

    python -m benchmarks run e2e_query_quality [--source out/e2e] [--other out/query-writer/queries.jsonl]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import DATA, ROOT, SCIFACT, missing_paths, read_jsonl, rel, write_jsonl
from benchmarks.registry import Benchmark, Context
from gecko_cli.contract.text_format import PRESETS, Templates

PLAIN, GECKO = Templates(), Templates(*PRESETS["gecko"])


@dataclass
class Params:
    source: str = "out/e2e"  # make e2e's output folder: passages.jsonl and queries.jsonl
    seeds: int = 100  # the first N seed passages of source/passages.jsonl
    name: str = "smollm2_135m"  # the writer of source/queries.jsonl
    whole_run: str = "whole_e2e_run_smollm2"  # the key of the whole e2e run's figures
    other: str = ""  # another writer's queries on the same seeds (a `gecko generate` output)
    other_name: str = "other"
    corpus: str = str(SCIFACT / "corpus.jsonl")
    k: int = 20


class Ranker:
    """The rank of each query's own passage among the corpus, by exact cosine search."""

    def __init__(self, corpus: list[dict], k: int):
        from gecko_cli.search.embed import load_encoder

        self.encoder, self.k = load_encoder(None), k
        self.ids = [str(d["_id"]) for d in corpus]
        self.vectors = self.encoder.encode([PLAIN.render_document(d["text"], d.get("title")) for d in corpus],
                                           what="passages")

    def ranks(self, records: list[dict], templates: Templates) -> list[int | None]:
        """1-based rank of the seed in the top k, None when it is not there."""
        from gecko_cli.search.vectors import exact_top_k

        if not records:
            return []
        queries = self.encoder.encode([templates.render_query(r["query"], r.get("task")) for r in records],
                                      what="queries")
        top, _ = exact_top_k(queries, self.vectors, self.k)
        out = []
        for record, row in zip(records, top):
            found = [self.ids[i] for i in row]
            seed = str(record["seed"]["id"])
            out.append(found.index(seed) + 1 if seed in found else None)
        return out


def shares(ranks: list[int | None], k: int) -> dict[str, float]:
    """[1, 3, None], 20 -> {"top1": 0.333, "top20": 0.667}"""
    n = max(len(ranks), 1)
    return {"top1": round(sum(r == 1 for r in ranks) / n, 3),
            f"top{k}": round(sum(r is not None for r in ranks) / n, 3)}


def writer_report(ranker: Ranker, records: list[dict], both: set[str], path: Path, k: int) -> dict[str, Any]:
    ranks = ranker.ranks(records, PLAIN)
    kept = [r for r, rec in zip(ranks, records) if str(rec["seed"]["id"]) in both]
    provenance = (records[0].get("_provenance") or [{}])[0] if records else {}
    return {"source": rel(path), "model": provenance.get("model"), "queries": len(records),
            "all": shares(ranks, k), f"seeds_both_kept_{len(both)}": shares(kept, k)}


def run(params: Params, context: Context) -> dict[str, Any]:
    source = ROOT / params.source
    seeds = {str(p["id"]) for p in read_jsonl(source / "passages.jsonl", params.seeds)}
    queries = read_jsonl(source / "queries.jsonl")
    mine = [r for r in queries if str(r["seed"]["id"]) in seeds]
    other = [r for r in read_jsonl(ROOT / params.other) if str(r["seed"]["id"]) in seeds] if params.other else []
    both = {str(r["seed"]["id"]) for r in mine} & ({str(r["seed"]["id"]) for r in other} if other else seeds)
    ranker = Ranker(read_jsonl(ROOT / params.corpus), params.k)
    report: dict[str, Any] = {
        "what": f"query quality: is a generated query's own passage in the embedded retriever's top 1 / top "
                f"{params.k} of the corpus (plain query text, exact search)? The first {params.seeds} seed "
                "passages of the e2e run for every writer.",
        "corpus": rel(params.corpus),
        params.name: writer_report(ranker, mine, both, source / "queries.jsonl", params.k)}
    if params.other:
        report[params.other_name] = writer_report(ranker, other, both, ROOT / params.other, params.k)
    plain, prefixed = ranker.ranks(queries, PLAIN), ranker.ranks(queries, GECKO)
    report[params.whole_run] = {
        "queries": len(queries),
        f"own_passage_in_top{params.k}_task_prefixed_retrieval": shares(prefixed, params.k)[f"top{params.k}"],
        f"own_passage_in_top{params.k}_plain": shares(plain, params.k)[f"top{params.k}"],
        "own_passage_top1_plain": shares(plain, params.k)["top1"],
        "own_passage_top1_task_prefixed": shares(prefixed, params.k)["top1"]}
    return report


def quick_setup(params: Params, context: Context) -> Params:
    """Four real `gecko generate` records (benchmarks/data), the first three as the other writer's,
    over their seeds and 30 other abstracts."""
    records = read_jsonl(DATA / "scifact200_queries.jsonl", 4)
    seeds = {str(r["seed"]["id"]) for r in records}
    source = context.workdir / "e2e"
    write_jsonl(source / "passages.jsonl", (r["seed"] for r in records))
    write_jsonl(source / "queries.jsonl", records)
    write_jsonl(context.workdir / "other.jsonl", records[:3])
    corpus = read_jsonl(SCIFACT / "corpus.jsonl")
    small = [d for d in corpus if str(d["_id"]) in seeds] + [d for d in corpus if str(d["_id"]) not in seeds][:30]
    write_jsonl(context.workdir / "corpus.jsonl", small)
    return replace(params, source=str(source), other=str(context.workdir / "other.jsonl"),
                   corpus=str(context.workdir / "corpus.jsonl"))


BENCHMARK = Benchmark(
    name="e2e_query_quality",
    summary="generated queries: is their own passage in the retriever's top 1 / top 20 (one writer vs another)",
    params=Params, run=run, quick_setup=quick_setup, after="make e2e",
    needs=lambda p: missing_paths(ROOT / p.source / "passages.jsonl", ROOT / p.source / "queries.jsonl",
                                  *([ROOT / p.other] if p.other else [])),
)
