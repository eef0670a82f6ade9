"""The quality experiment's training and dev evaluation, from the committed FRet data.

The generated queries and their teacher scores are committed (benchmarks/data/scifact-fret/, made by
fret_generate.sh and fret_teacher.sh); this benchmark only mines, fine-tunes and evaluates, so it
runs on a fresh clone:

    python -m benchmarks run fret_train --variants contrastive,margin-mse

1. join the committed teacher shards (fret_data.py: each scored a slice of the passages), put the
   passages' text back, rank each query's candidates with `gecko fuse --scores retriever_score,ql`
   (what `gecko rerank` does on the embedded LLM) and `gecko mine-negatives`: the positive is the
   fused top (`--positive fused`, the LLM's relabelling) or the seed, `--num-negatives` random
   candidates below it as negatives, each with its scores;
2. `gecko finetune` the embedded all-MiniLM-L6-v2 once per variant (contrastive only, or with
   `--distill`), same records, same recipe (epochs, lr, batch size, Matryoshka dims);
3. the gold-label reference: SciFact train claims of half A (fret_dev.py) with their cited
   abstracts, mined and fine-tuned with the same recipe;
4. `gecko evaluate` base, gold and every variant on dev half B (SciFact train claims never used for
   training anything here); `--test` adds SciFact test, reported, never used to choose.

Models are kept in `--workdir` under a name that encodes their settings, so a second run with more
variants trains only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.bootstrap import paired_bootstrap, per_query_ndcg, read_run
from benchmarks.common import ROOT, SCIFACT, SHARED_DATA, beir_subset, gecko, jsonl_text, parse_jsonl, read_jsonl, rel
from benchmarks.fret_data import hydrate, join, read_corpus
from benchmarks.fret_dev import write_split
from benchmarks.registry import Benchmark, Context, Skip
from benchmarks.training_runs import trained
from gecko_cli.eval.data import read_qrels
from gecko_cli.llm.generation import default_task_types
from gecko_cli.eval.measure import run_file_path

# Variant -> (mine-negatives --positive, extra finetune options).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "seed-contrastive": ("seed", []),
    "contrastive": ("fused", []),
    "margin-mse": ("fused", ["--distill", "margin-mse"]),
    "margin-mse-only": ("fused", ["--distill", "margin-mse", "--contrastive-weight", "0"]),
    "listwise-kl": ("fused", ["--distill", "listwise-kl"]),
}


@dataclass
class Params:
    data: str = "benchmarks/data/scifact-fret"  # the committed FRet data
    # The defaults train the reported model (docs/experiments.md, "Report on test"): the Qwen writer's data.
    teacher: str = "teacher-top10-found-qwen05-k4-seed0-g6of32"  # teacher shard files: TEACHER-shard*of*.jsonl.gz (comma-separated: several sets pooled)
    variants: str = "margin-mse"  # comma-separated names of VARIANTS
    gold: bool = True  # train and evaluate the gold-label reference (half A)
    gold_epochs: float = 3.0  # its own epochs: 488 claims need several passes (the reference recipe of issue 14)
    num_negatives: int = 3  # mine-negatives --strategy random --num-negatives
    epochs: float = 1.0  # the recipe chosen on dev over three sweeps (docs/experiments.md)
    lr: float = 5e-5
    batch_size: int = 32
    mrl_dims: str = "384,256,128,64"
    max_seq_length: int = 128  # finetune/pretrain --max-seq-length (0: the model's own, 256)
    text_format: str = "gecko"  # finetune/pretrain --text-format: gecko (the paper's) or plain (the student's own)
    distill_weight: float = 0.1  # --distill-weight of the distillation variants
    teacher_temperature: float = 7.0  # --teacher-temperature: the teacher's scores (QL sums) are divided by it
    max_steps: int = 0  # 0: whole epochs
    dims: str = "384,128"  # evaluated dimensions
    test: bool = False  # also the acceptance sets, reported only: SciFact test, MEDLINE/CISI/Cranfield, STS Benchmark and SICK-R test
    acceptance_data: str = str(SHARED_DATA)  # where --test finds medline/, cisi/, cranfield/, stsbenchmark/, sick-r/ (each skipped when absent)
    workdir: str = "out/fret-train"  # models and records, kept between runs
    seed: int = 0
    scifact: str = str(SCIFACT)  # the BEIR folder whose train claims are the dev set
    limit: int = 2000  # train on N teacher records drawn at random (seeded by --seed; 0: all)
    select: int = 0  # train on the N queries whose LLM-picked positive the teacher is surest of (0: all)
    task_types: str = ""  # train only on queries written for these task types (names, comma-separated; "": all)
    pretrain_steps: int = 0  # Gecko's stage 1 first: `gecko pretrain` on the corpus' title->abstract pairs (0: none)
    pretrain_batch_size: int = 64


def recipe(params: Params) -> list[str]:
    """The finetune options every model shares."""
    args = ["--epochs", f"{params.epochs:g}", "--lr", f"{params.lr:g}", "--batch-size", str(params.batch_size),
            "--mrl-dims", params.mrl_dims, "--seed", str(params.seed)]
    args += ["--max-seq-length", str(params.max_seq_length)] if params.max_seq_length else []
    args += ["--text-format", params.text_format] if params.text_format != "gecko" else []
    return args + (["--max-steps", str(params.max_steps)] if params.max_steps else [])


def variant_args(name: str, params: Params) -> list[str]:
    """The finetune options of one variant (its loss), beyond the shared recipe."""
    _, extra = VARIANTS[name]
    if "--distill" in extra:
        extra = extra + ["--distill-weight", f"{params.distill_weight:g}",
                         "--teacher-temperature", f"{params.teacher_temperature:g}"]
    return extra


def model_name(label: str, args: list[str]) -> str:
    """A model's folder: its label and a hash of everything that shaped it.

    >>> model_name("gold-a", ["--lr", "5e-05"])[:7]
    'gold-a-'
    """
    return f"{label}-{hashlib.sha256(json.dumps(args).encode()).hexdigest()[:10]}"


def finetune(records: Path, output: Path, args: list[str]) -> dict[str, Any]:
    """`gecko finetune` on `records`, unless the model is there; its summary line and cost."""
    return trained("finetune", output, ["-i", str(records), *args])


def random_subset(records: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """n records drawn at random (seeded), in their original order: the control for `most_certain`,
    whose choice by teacher margin also picks MarginMSE's largest targets.

    >>> random_subset([{"id": i} for i in range(6)], 3, 0) == random_subset([{"id": i} for i in range(6)], 3, 0)
    True
    """
    keep = set(random.Random(seed).sample(range(len(records)), min(n, len(records))))
    return [r for i, r in enumerate(records) if i in keep]


def teacher_margin(record: dict[str, Any]) -> float:
    """QL of the fused top candidate minus the best QL among the others: how sure the teacher is of the
    positive it picked (large: a clear positive and no near-duplicate to mine as a false negative).

    >>> teacher_margin({"candidates": [{"rank": 2, "ql": -9.0}, {"rank": 1, "ql": -4.0}, {"rank": 3, "ql": -6.0}]})
    2.0
    """
    ranked = sorted(record["candidates"], key=lambda c: c["rank"])
    return float(ranked[0]["ql"] - max((c["ql"] for c in ranked[1:]), default=float("-inf")))


def most_certain(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The n records of largest teacher margin, in their original order."""
    keep = set(sorted(range(len(records)), key=lambda i: -teacher_margin(records[i]))[:n])
    return [r for i, r in enumerate(records) if i in keep]


def of_task_types(records: list[dict[str, Any]], names: str) -> list[dict[str, Any]]:
    """The records whose task is that of one of the named task types (gecko's four, task_types.json).

    The target task is known without labels (SciFact is fact checking), so training on the
    queries written for it is a choice a user can make, as Promptagator prompts for the target task.

    >>> of_task_types([{"task": "Given a claim, find a passage that supports or refutes it"},
    ...                {"task": "Given a question, retrieve passages that answer the question"}], "fact checking")
    [{'task': 'Given a claim, find a passage that supports or refutes it'}]
    """
    by_name = {t.name: t.task for t in default_task_types()}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"fret_train: unknown task types {unknown}; known: {', '.join(by_name)}")
    tasks = {by_name[n] for n in wanted}
    return [r for r in records if r.get("task") in tasks]


def pretrain(params: Params, work: Path) -> tuple[Path, dict[str, Any]]:
    """Gecko's pre-finetuning on the corpus itself (title -> abstract, in-batch negatives), label-free;
    every FRet variant starts from it."""
    args = ["--max-steps", str(params.pretrain_steps), "--batch-size", str(params.pretrain_batch_size),
            "--lr", f"{params.lr:g}", "--mrl-dims", params.mrl_dims, "--seed", str(params.seed)]
    args += ["--max-seq-length", str(params.max_seq_length)] if params.max_seq_length else []
    args += ["--text-format", params.text_format] if params.text_format != "gecko" else []
    output = work / model_name("pretrain", args)
    cost = trained("pretrain", output, ["-i", str(Path(params.scifact) / "corpus.jsonl"), *args])
    return output, {"pretrain": " ".join(["gecko pretrain", *args]), **cost}


def teacher_records(params: Params, corpus: dict[str, dict[str, str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every committed teacher shard, joined by query and hydrated; and the shard files used."""
    names = [name.strip() for name in params.teacher.split(",") if name.strip()]
    records, used = [], []
    for name in names:
        files = sorted(f for f in (ROOT / params.data).glob(f"{name}-shard*of*.jsonl.gz")
                       if not f.name.endswith(".rejects.jsonl.gz"))
        if not files:
            raise Skip(f"no teacher shards {name}-shard*.jsonl.gz in {params.data} (bash benchmarks/fret_teacher.sh)")
        # Each set is joined on its own: two writers' queries of one abstract share an id (`ID#n`),
        # so pooled records get the set's name in front of it.
        for record in join(r for f in files for r in read_jsonl(f)):
            if len(names) > 1:
                record["id"] = f"{name}/{record['id']}"
            records.append(hydrate(record, corpus))
        used += [rel(f) for f in files]
    return records, used


def reranked(params: Params, work: Path) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Step 1's first half: the teacher records (`--limit` of them, drawn at random), ranked by
    `gecko fuse` and selected as the params say, written to WORK/reranked.jsonl; that file, the
    records drawn, the records kept and the shard files read."""
    corpus = read_corpus(SCIFACT / "corpus.jsonl")
    scored, shards = teacher_records(params, corpus)
    scored = random_subset(scored, params.limit, params.seed) if params.limit else scored
    ranked = parse_jsonl(gecko("fuse", "--scores", "retriever_score,ql", stdin=jsonl_text(scored)).stdout)
    ranked = of_task_types(ranked, params.task_types) if params.task_types else ranked
    ranked = most_certain(ranked, params.select) if params.select else ranked
    ranked_file = work / "reranked.jsonl"
    ranked_file.write_text(jsonl_text(ranked))
    return ranked_file, scored, ranked, shards


def mine(params: Params, ranked_file: Path, positive: str, output: Path) -> Path:
    """Step 1's second half: `gecko mine-negatives` with the `positive` (fused or seed) and
    `--num-negatives` random candidates below it."""
    gecko("mine-negatives", "--positive", positive, "--strategy", "random", "--num-negatives",
          str(params.num_negatives), "--seed", str(params.seed), "-i", str(ranked_file), "-o", str(output))
    return output


def fret_records(work: Path, params: Params | None = None) -> Path:
    """The fine-tuning records other benchmarks train on, from the committed data alone: with the
    defaults, the Qwen writer's 2,000 random queries, the LLM's fused positive and 3 random
    negatives (the records of the reported model, `contrastive`'s)."""
    params = params or Params()
    work.mkdir(parents=True, exist_ok=True)
    ranked_file, *_ = reranked(params, work)
    return mine(params, ranked_file, "fused", work / f"train-fused-random{params.num_negatives}.jsonl")


def run(params: Params, context: Context) -> dict[str, Any]:
    work = Path(params.workdir) if Path(params.workdir).is_absolute() else ROOT / params.workdir
    work.mkdir(parents=True, exist_ok=True)
    dev = work / "scifact-dev"
    scifact = Path(params.scifact)
    halves = write_split(dev, scifact)
    ranked_file, scored, ranked, shards = reranked(params, work)
    data_key = shards + [f"negatives={params.num_negatives}", f"random={params.limit}", f"select={params.select}"] + \
        ([f"task_types={params.task_types}"] if params.task_types else [])
    names = [v for v in params.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"fret_train: unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    models: dict[str, Path] = {}
    summaries: dict[str, Any] = {}
    init_args: list[str] = []
    if params.pretrain_steps:
        models["pretrain"], summaries["pretrain"] = pretrain(params, work)
        init_args = ["--init", str(models["pretrain"])]
    mined: dict[str, int] = {}
    for name in names:
        positive, _ = VARIANTS[name]
        train = work / f"train-{positive}-random{params.num_negatives}.jsonl"
        if positive not in mined:
            mine(params, ranked_file, positive, train)
            mined[positive] = sum(1 for _ in train.open())
        args = recipe(params) + variant_args(name, params) + init_args
        models[name] = work / model_name(name, args + data_key)
        summaries[name] = {"finetune": " ".join(["gecko finetune", *args]), "records": mined[positive],
                           **finetune(train, models[name], args)}
    if params.gold:
        gold_train = work / "gold-half-a-train.jsonl"
        if not gold_train.is_file():
            candidates = gecko("retrieve", "--corpus", str(scifact / "corpus.jsonl"), "--top-k", "20",
                               "-i", str(dev / "gold-half-a.jsonl")).stdout
            gold_train.write_bytes(gecko("mine-negatives", "--positive", "seed", "--strategy", "rank:20",
                                         stdin=candidates).stdout)
        args = recipe(replace(params, epochs=params.gold_epochs))
        models["gold-half-a"] = work / model_name("gold-half-a", args)
        summaries["gold-half-a"] = {"finetune": " ".join(["gecko finetune", *args]),
                                    "records": sum(1 for _ in gold_train.open()),
                                    **finetune(gold_train, models["gold-half-a"], args)}
    runs = work / "runs"
    rows = evaluate(dev, "half-b", models, params.dims, runs)
    others: list[dict[str, Any]] = []
    if params.test:
        rows += evaluate(scifact, "test", models, params.dims, runs)
        others = acceptance(Path(params.acceptance_data), models, params.dims)
    comparisons = compare(rows, "base") + (compare(rows, "gold-half-a") if params.gold else [])
    return {"what": "FRet on SciFact: all-MiniLM-L6-v2 fine-tuned on the embedded LLM's queries, "
                    "against base and a gold-label model; nDCG@10 on dev half B (SciFact train claims)",
            "dev": {"half_a_claims": halves["a"], "half_b_claims": halves["b"]},
            "teacher_shards": shards, "queries": len(scored), "selected_queries": len(ranked), "models": summaries,
            "rows": [{k: v for k, v in r.items() if k != "per_query"} for r in rows], "table": table(rows),
            "comparisons": comparisons, "comparison_table": compare_table(comparisons),
            **({"acceptance": others, "acceptance_table": acceptance_table(others)} if params.test else {})}


ACCEPTANCE_RETRIEVAL = ("medline", "cisi", "cranfield")  # out of domain: the issue's "drop <= 1.0" sets
ACCEPTANCE_STS = ("stsbenchmark", "sick-r")


def acceptance(data: Path, models: dict[str, Path], dims: str) -> list[dict[str, Any]]:
    """Base and every model on the acceptance sets beside SciFact test (each only if present):
    nDCG@10 on MEDLINE, CISI, Cranfield, Spearman on STS Benchmark and SICK-R test, x1."""
    args = ["evaluate", "--split", "test", "--dims", dims, "--model", "default"]
    for name in ACCEPTANCE_RETRIEVAL:
        args += ["--dataset", str(data / name)] if (data / name / "corpus.jsonl").is_file() else []
    for name in ACCEPTANCE_STS:
        args += ["--sts", str(data / name / "test.tsv")] if (data / name / "test.tsv").is_file() else []
    if "--dataset" not in args and "--sts" not in args:
        return []
    for path in models.values():
        args += ["--model", str(path)]
    label = {str(path): name for name, path in models.items()}
    return [{"model": row_label(label, r["model"]), "dataset": r["dataset"],
             "dim": r["dim"], "metric": "ndcg@10" if "ndcg@10" in r else "spearman",
             "value": r["ndcg@10"] if "ndcg@10" in r else r["spearman"]}
            for r in parse_jsonl(gecko(*args).stdout)]


def acceptance_table(rows: list[dict[str, Any]]) -> list[str]:
    """Plain-text lines: model, dataset, metric x100 by dimension, and its change from base.

    >>> acceptance_table([{"model": "base", "dataset": "cisi", "dim": 384, "metric": "ndcg@10", "value": 0.25},
    ...                   {"model": "m", "dataset": "cisi", "dim": 384, "metric": "ndcg@10", "value": 0.24}])[-1]
    'm                    cisi            384   24.00   -1.00'
    """
    base = {(r["dataset"], r["dim"]): r["value"] for r in rows if r["model"] == "base"}
    lines = [f"{'model':<20} {'dataset':<14} {'dim':>4} {'x100':>7} {'- base':>7}"]
    for r in rows:
        change = f"{100 * (r['value'] - base[(r['dataset'], r['dim'])]):+7.2f}" \
            if r["model"] != "base" and (r["dataset"], r["dim"]) in base else f"{'':>7}"
        lines.append(f"{r['model']:<20} {r['dataset']:<14} {r['dim']:>4} {100 * r['value']:7.2f} {change}")
    return lines


def row_label(labels: dict[str, str], model: str) -> str:
    """The name a `gecko evaluate` row's model gets in the report: its variant, or "base".

    >>> row_label({"/w/gold-a-1": "gold-half-a"}, "/w/gold-a-1"), row_label({}, "all-MiniLM-L6-v2")
    ('gold-half-a', 'base')
    """
    return labels.get(model, "base" if "MiniLM" in model else model)


def evaluate(dataset: Path, split: str, models: dict[str, Path], dims: str, runs: Path) -> list[dict[str, Any]]:
    """nDCG@10 of base and every model on one split, each with its per-query scores (from the TREC runs)."""
    template = str(runs / "{model}.{dataset}.{dim}.trec")
    args = ["evaluate", "--dataset", str(dataset), "--split", split, "--dims", dims, "--model", "default",
            "--run-file", template]
    for path in models.values():
        args += ["--model", str(path)]
    label = {str(path): name for name, path in models.items()}
    qrels = read_qrels(dataset / "qrels" / f"{split}.tsv")
    return [{"model": row_label(label, r["model"]), "split": split,
             "dim": r["dim"], "ndcg@10": r["ndcg@10"],
             "per_query": per_query_ndcg(qrels, read_run(run_file_path(template, r["model"], r["dataset"], r["dim"])))}
            for r in parse_jsonl(gecko(*args).stdout)]


def compare(rows: list[dict[str, Any]], against: str) -> list[dict[str, Any]]:
    """Every trained model against one reference on the same split and dimension: mean per-query
    nDCG@10 difference and its 95% paired-bootstrap interval."""
    ref = {(r["split"], r["dim"]): r["per_query"] for r in rows if r["model"] == against}
    return [{"model": r["model"], "against": against, "split": r["split"], "dim": r["dim"],
             **paired_bootstrap(ref[(r["split"], r["dim"])], r["per_query"])}
            for r in rows if r["model"] not in (against, "base") and (r["split"], r["dim"]) in ref]


def compare_table(comparisons: list[dict[str, Any]]) -> list[str]:
    """Plain-text lines: model - reference, nDCG@10 x100 with its 95% interval."""
    lines = [f"{'model':<20} {'minus':<12} {'split':<7} {'dim':>4}  diff [95% CI]"]
    for c in comparisons:
        lines.append(f"{c['model']:<20} {c['against']:<12} {c['split']:<7} {c['dim']:>4}  "
                     f"{100 * c['diff']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]")
    return lines


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Plain-text lines: model, split, nDCG@10 by dimension."""
    dims = sorted({r["dim"] for r in rows}, reverse=True)
    keys = list(dict.fromkeys((r["model"], r["split"]) for r in rows))
    value = {(r["model"], r["split"], r["dim"]): r["ndcg@10"] for r in rows}
    lines = [f"{'model':<20} {'split':<7} " + " ".join(f"{d:>7}" for d in dims)]
    for model, split in keys:
        lines.append(f"{model:<20} {split:<7} " + " ".join(
            f"{100 * value[(model, split, d)]:7.2f}" if (model, split, d) in value else f"{'':>7}" for d in dims))
    return lines


def quick_setup(params: Params, context: Context) -> Params:
    """16 records of the small committed teacher file (the 12 the teacher is surest of), one pretrain
    step and two fine-tuning steps per model, a SciFact cut of 12 train claims (and 2 test) over the
    documents they judge and 40 more."""
    data = beir_subset(SCIFACT, context.workdir / "scifact", {"train": 12, "test": 2}, extra_docs=40)
    return replace(params, teacher="teacher-prelim-found01", max_steps=2, batch_size=4, dims="384", pretrain_steps=1,
                   pretrain_batch_size=4, select=12,
                   mrl_dims="384,128", limit=16, num_negatives=2, scifact=str(data),
                   workdir=str(context.workdir / "fret-train"))


BENCHMARK = Benchmark(
    name="fret_train",
    summary="the quality experiment: FRet-trained all-MiniLM-L6-v2 variants vs base and gold on SciFact dev",
    params=Params, run=run, quick_setup=quick_setup, after="make e2e-train (an hour or more; run it by name)",
)
