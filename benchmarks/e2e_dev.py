"""After `make e2e`: its models and a round-trip-filtered one on the DEV set (SciFact train claims).

The round-trip filter (as InPars and Promptagator do): keep the records of
out/e2e/train-seed-rank20.jsonl whose seed passage the retriever put in its top 20 (its
`rank_retriever_score` in out/e2e/fret.jsonl), fine-tune the base model on them as make e2e does,
then `gecko evaluate --split train` the base model, the e2e models and the filtered one.

    python -m benchmarks run e2e_dev [--source out/e2e]      # one fine-tune (see benchmarks/README.md)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import (ROOT, SCIFACT, beir_subset, gecko, missing_paths, parse_jsonl, read_jsonl, rel,
                               write_jsonl)
from benchmarks.registry import Benchmark, Context

FILTERED = "round-trip-filtered (seed positive, rank 20 negative)"


@dataclass
class Params:
    source: str = "out/e2e"  # make e2e's output folder (relative to the repository root)
    train: str = "train-seed-rank20.jsonl"  # the records to filter, in source
    models: str = "fused-rank20,seed-rank20"  # e2e models (source/model-NAME) evaluated beside the filtered one
    max_seed_rank: int = 20  # keep a record when its seed's retriever rank is at most this
    dataset: str = str(SCIFACT)
    split: str = "train"  # the dev set: never tune on test
    dims: str = "384,128"
    epochs: float = 1.0
    batch_size: int = 32
    mrl_dims: str = "384,256,128,64"
    max_steps: int = 0  # 0: whole epochs
    seed: int = 0


def seed_found(fret: list[dict], max_rank: int) -> set[str]:
    """Ids of the records whose seed is among the retriever's top `max_rank` candidates.

    [{"id": "a#0", "seed": {"id": "a"}, "candidates": [{"id": "a", "rank_retriever_score": 3}]}], 20 -> {"a#0"}
    """
    kept = set()
    for record in fret:
        seed = str(record["seed"]["id"])
        rank = next((c.get("rank_retriever_score") for c in record["candidates"] if str(c["id"]) == seed), None)
        if rank is not None and rank <= max_rank:
            kept.add(str(record["id"]))
    return kept


def finetune(records: Path, output: Path, params: Params) -> dict[str, Any]:
    """`gecko finetune` as make e2e runs it; its JSON summary."""
    args = ["finetune", "--output", str(output), "--epochs", str(params.epochs), "--batch-size", str(params.batch_size),
            "--mrl-dims", params.mrl_dims, "--seed", str(params.seed), "-i", str(records)]
    if params.max_steps:
        args += ["--max-steps", str(params.max_steps)]
    return json.loads(gecko(*args).stdout)


def run(params: Params, context: Context) -> dict[str, Any]:
    source = ROOT / params.source
    kept = seed_found(read_jsonl(source / "fret.jsonl"), params.max_seed_rank)
    records = [r for r in read_jsonl(source / params.train) if str(r["id"]) in kept]
    filtered = write_jsonl(context.workdir / "filtered.jsonl", records)
    model = context.workdir / "model"
    summary = finetune(filtered, model, params)
    e2e_models = [str(source / f"model-{name}") for name in params.models.split(",") if name]
    args = ["evaluate", "--dataset", params.dataset, "--split", params.split, "--dims", params.dims,
            "--model", "default"]
    for path in [*e2e_models, str(model)]:
        args += ["--model", path]
    rows = parse_jsonl(gecko(*args).stdout)
    shown = {str(model): FILTERED, **{m: rel(m) for m in e2e_models}}
    return {
        "what": "make e2e models and a round-trip-filtered model on the DEV set (SciFact train claims), nDCG@10",
        "filtered_model": {
            "records": f"the {len(records):,} of {params.train} whose seed passage has rank_retriever_score "
                       f"<= {params.max_seed_rank} in fret.jsonl",
            "finetune": f"gecko finetune --epochs {params.epochs:g} --batch-size {params.batch_size} "
                        f"--mrl-dims {params.mrl_dims} --seed {params.seed}",
            "summary": summary},
        "evaluate": " ".join(["gecko", *map(rel, args[:-1]), "<filtered>"]),
        "rows": [{"model": shown.get(r["model"], r["model"]), "dim": r["dim"], "ndcg@10": r["ndcg@10"], "n": r.get("n")}
                 for r in rows],
    }


def needs(params: Params) -> str | None:
    source = ROOT / params.source
    models = [source / f"model-{name}" for name in params.models.split(",") if name]
    return missing_paths(source / "fret.jsonl", source / params.train, *models)


def quick_setup(params: Params, context: Context) -> Params:
    """The tests' golden rerank output fused and mined as make e2e does (rank 3, not 20: it has four
    candidates at most); one step of fine-tuning; 5 SciFact train claims over 40 other documents."""
    source = context.workdir / "e2e"
    source.mkdir()
    fret = gecko("fuse", "--scores", "retriever_score,ql", "-i", str(ROOT / "tests/data/fret_scored.jsonl")).stdout
    (source / "fret.jsonl").write_bytes(fret)
    gecko("mine-negatives", "--positive", "seed", "--strategy", "rank:3", "-i", str(source / "fret.jsonl"),
          "-o", str(source / params.train))
    data = beir_subset(SCIFACT, context.workdir / "scifact", {"train": 5}, extra_docs=40)
    return replace(params, source=str(source), models="", max_seed_rank=1, dataset=str(data), batch_size=2,
                   max_steps=1, mrl_dims="384,128")


BENCHMARK = Benchmark(
    name="e2e_dev",
    summary="make-e2e models and a round-trip-filtered fine-tune on the dev set (SciFact train claims)",
    params=Params, run=run, needs=needs, quick_setup=quick_setup, after="make e2e",
)
