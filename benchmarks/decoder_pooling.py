"""Issue 18, phase 2: SmolLM2-135M grown into an embedder, NV-Embed's pooling and attention choices
compared at one equal, small training budget.

    python -m benchmarks run decoder_pooling [--test]

For each (pooling, attention) of the grid (default: latent-attention, mean, last x bidirectional,
causal = six models):

1. `gecko pretrain --init embedded-llm --pooling P --attention A` on the SciFact corpus' own
   title -> abstract pairs (in-batch negatives, label-free): `--pretrain-steps` steps of
   `--pretrain-batch-size` pairs, texts cut to `--max-seq-length` tokens;
2. `gecko finetune --init <that model>` on `--finetune-records`: by default (`fret`) the best
   fine-tuning data issue 7 has, mined from the committed FRet data by fret_train's own steps (the
   Qwen writer's 2,000 random queries, the LLM's fused positive, 3 random negatives); or any
   `gecko mine-negatives` output; "" skips the stage. `--finetune-steps` steps of
   `--finetune-batch-size` records, same cut;
3. `gecko evaluate` every model and all-MiniLM-L6-v2 on dev half B (SciFact train claims, split by
   fret_dev.py; never trained on here), each at its full dimension (576; all-MiniLM 384), with the
   paired bootstrap of every model against `--reference` (mean pooling, bidirectional) and against
   latent-attention + bidirectional (NV-Embed's choice); `--test` also evaluates SciFact test and
   STS Benchmark test, reported only, never used to choose.

Every training stage is a fresh `gecko` process whose CPU seconds (user + system, from
getrusage(RUSAGE_CHILDREN) around it, start-up included) are recorded, so the table states what each
model's training cost; each evaluation runs in this process (getrusage(RUSAGE_SELF) around it).
Every model gets the same steps, batch and cut, hence the same data; the CPU seconds show the budget
is also equal. The defaults aim at about 20 CPU-minutes of training per model (10 pretrain + 10
fine-tune), estimated from step times measured on the 2-core development machine with two other jobs
running (OMP_NUM_THREADS=1, nice 19): a pretrain step of 16 pairs at 128 tokens ~17-18 CPU-s, a
fine-tune step of 8 records with 3 negatives at 128 tokens ~26.5 CPU-s, ~10 CPU-s per process to
start, load and save. Peak memory at those sizes: ~7.3 GB (pretrain), ~9.9 GB (fine-tune);
`--mini-batch-size` bounds it. With `--finetune-records ""` a model gets the pretrain half only.

Evaluation is dearer than training: SciFact's 5,183 abstracts are ~1.7M SmolLM2 tokens (1.2M when
cut to 256, 0.66M at 128). The evaluated models read at most `--eval-max-seq-length` tokens,
written into each trained model's sentence_bert_config.json before it is evaluated (0: the LM's own
limit, 8192), with their weights in `--eval-dtype` (written there too). The defaults, 128 tokens
(what they were trained on) and bfloat16, make six models and their training fit one 3-hour session
on two cores: in float32 the corpus costs ~45 CPU-minutes per model at 256 tokens and ~37 at 128;
bfloat16 encoded 2.3x faster than float32 on a CPU with AVX512-BF16 (AMD EPYC, session 16), and is
emulated, so slower, on a CPU without it or AMX: pass `--eval-dtype float32` there. all-MiniLM-L6-v2
is evaluated as gecko ships it (float32, 256 tokens). The embedding cache serves the corpus again to
`--test` and to a re-run.

Models are kept in `--workdir` under names that hash everything that shaped them, so a resumed or
widened run trains only what is missing. Each model folder is ~530 MB.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.bootstrap import paired_bootstrap, per_query_ndcg, read_run
from benchmarks.common import EXAMPLES, ROOT, SCIFACT, beir_subset, missing_paths, parse_jsonl, rel, tsv_head
from benchmarks.fret_dev import write_split
from benchmarks.fret_train import fret_records, model_name
from benchmarks.training_runs import measured, trained
from benchmarks.registry import Benchmark, Context

POOLINGS = ("latent-attention", "mean", "last")
ATTENTIONS = ("bidirectional", "causal")
NV_EMBED = "latent-attention-bidirectional"  # NV-Embed's finding: the best of the grid
BASELINE = "all-MiniLM-L6-v2"  # gecko's default embedder, evaluated beside them
FRET = "fret"  # --finetune-records: the records fret_train mines from the committed FRet data
FRET_RECORDS = "fret_train's records (the Qwen writer's 2,000 random queries, fused positive, 3 random negatives)"
DTYPES = ("bfloat16", "float32")  # --eval-dtype
STSB = EXAMPLES / "data" / "stsbenchmark" / "test.tsv"


@dataclass
class Params:
    poolings: str = "latent-attention,mean,last"  # --pooling values, comma-separated
    attentions: str = "bidirectional,causal"  # --attention values; the grid is poolings x attentions
    reference: str = "mean-bidirectional"  # every model's dev nDCG@10 difference is against this one
    pretrain_steps: int = 32  # gecko pretrain --max-steps: ~18 CPU-s a step at the defaults (~10 CPU-min)
    pretrain_batch_size: int = 16  # title -> abstract pairs per step (in-batch negatives)
    finetune_records: str = FRET  # a gecko mine-negatives output to fine-tune on ("fret": fret_train's, from the committed data; "": no fine-tuning stage)
    finetune_steps: int = 22  # gecko finetune --max-steps: ~26.5 CPU-s a step with 3 negatives (~10 CPU-min)
    finetune_batch_size: int = 8  # records per step
    num_negatives: int = 0  # finetune --num-negatives (0: gecko's default, the fewest any record has)
    mini_batch_size: int = 0  # --mini-batch-size of both stages: the cached loss bounds memory (0: plain loss)
    max_seq_length: int = 128  # training texts cut to N tokens (both stages)
    lr: float = 5e-5  # peak learning rate of both stages
    eval_max_seq_length: int = 128  # evaluated models read at most N tokens: what they were trained on (0: the LM's 8192)
    eval_dtype: str = "bfloat16"  # the trained models' weights when evaluated: bfloat16 or float32 (all-MiniLM: float32)
    test: bool = False  # also evaluate SciFact test and STS Benchmark test (reported only)
    cache: bool = True  # gecko evaluate's embedding cache (a re-run and --test reuse the corpus vectors)
    seed: int = 0
    workdir: str = "out/decoder-pooling"  # models, dev split and runs, kept between runs
    scifact: str = str(SCIFACT)  # the BEIR folder: pretraining corpus, dev (train claims) and test
    sts: str = str(STSB)  # the STS Benchmark test TSV (with --test)


def grid(params: Params) -> list[tuple[str, str]]:
    """(pooling, attention) pairs, poolings outer.

    >>> grid(Params(poolings="mean,last", attentions="causal"))
    [('mean', 'causal'), ('last', 'causal')]
    """
    poolings = [p for p in params.poolings.split(",") if p]
    attentions = [a for a in params.attentions.split(",") if a]
    bad = [p for p in poolings if p not in POOLINGS] + [a for a in attentions if a not in ATTENTIONS]
    if bad or not poolings or not attentions:
        raise SystemExit(f"decoder_pooling: unknown or no choices {bad}; poolings {POOLINGS}, attentions {ATTENTIONS}")
    return [(p, a) for p in poolings for a in attentions]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (the fine-tuning records are named by content, not by path)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def pretrain_args(params: Params, pooling: str, attention: str) -> list[str]:
    """What shapes a pretrained model (the corpus is added by the caller)."""
    args = ["--init", "embedded-llm", "--pooling", pooling, "--attention", attention,
            "--max-steps", str(params.pretrain_steps), "--batch-size", str(params.pretrain_batch_size),
            "--max-seq-length", str(params.max_seq_length), "--lr", f"{params.lr:g}", "--seed", str(params.seed)]
    return args + (["--mini-batch-size", str(params.mini_batch_size)] if params.mini_batch_size else [])


def finetune_args(params: Params) -> list[str]:
    """What shapes a fine-tuned model beyond its --init and its records."""
    args = ["--max-steps", str(params.finetune_steps), "--batch-size", str(params.finetune_batch_size),
            "--max-seq-length", str(params.max_seq_length), "--lr", f"{params.lr:g}", "--seed", str(params.seed)]
    args += ["--num-negatives", str(params.num_negatives)] if params.num_negatives else []
    return args + (["--mini-batch-size", str(params.mini_batch_size)] if params.mini_batch_size else [])


def finetune_records(params: Params, work: Path) -> Path:
    """The records file `--finetune-records` names; "fret": mined into WORK/fret-records by
    fret_train's own steps (its defaults: the Qwen writer's 2,000 random queries, fused positive, 3
    random negatives; seconds, the same bytes every time), so a fresh clone reproduces the committed
    run."""
    if params.finetune_records == FRET:
        return fret_records(work / "fret-records")
    records = Path(params.finetune_records)
    return records if records.is_absolute() else ROOT / records


def train(params: Params, work: Path, pooling: str, attention: str,
          records: Path | None) -> tuple[Path, dict[str, Any]]:
    """Pretrain, then fine-tune on `records` when there are any: the model to evaluate and what each stage cost."""
    corpus = Path(params.scifact) / "corpus.jsonl"
    args = pretrain_args(params, pooling, attention)
    label = f"{pooling}-{attention}"
    pre = work / model_name(f"pretrain-{label}", args + [f"corpus={file_digest(corpus)}"])
    stages = {"pretrain": {"command": " ".join(["gecko pretrain", *args]), "model": rel(pre),
                           **trained("pretrain", pre, ["-i", str(corpus), *args])}}
    if records is None:
        return pre, stages
    args = finetune_args(params)
    fine = work / model_name(f"finetune-{label}", args + [f"init={pre.name}", f"records={file_digest(records)}"])
    stages["finetune"] = {"command": " ".join(["gecko finetune --init", rel(pre), *args]), "records": rel(records),
                          "model": rel(fine),
                          **trained("finetune", fine, ["--init", str(pre), "-i", str(records), *args])}
    return fine, stages


def eval_config(model: Path, limit: int, dtype: str) -> None:
    """Make a trained model read at most `limit` tokens (0: the LM's own limit) with its weights in
    `dtype` when loaded (sentence-transformers' `model_kwargs` in sentence_bert_config.json, which
    `SentenceTransformer(path)` honours anywhere); the file is rewritten only when it changes, so
    the model's fingerprint (and its cached embeddings) stay put."""
    config_file = model / "sentence_bert_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    wanted = {k: v for k, v in config.items() if k not in ("max_seq_length", "model_kwargs")}
    wanted.update({"max_seq_length": limit} if limit else {})
    kwargs = {k: v for k, v in config.get("model_kwargs", {}).items() if k != "dtype"}
    kwargs.update({"dtype": dtype} if dtype != "float32" else {})
    wanted.update({"model_kwargs": kwargs} if kwargs else {})
    if wanted != config:
        config_file.write_text(json.dumps(wanted, indent=4) + "\n")


ENCODED = re.compile(r"encoded ([\d,]+) texts, ([\d,]+) served from the cache")


def evaluate(label: str, model: str, dataset: Path, split: str, runs: Path, params: Params,
             sts: Path | None = None) -> list[dict[str, Any]]:
    """`gecko evaluate` of one model (its full dimension) on one split, and STS when given: the rows,
    each retrieval row with its per-query nDCG@10 (from the TREC run), and the CPU seconds it took."""
    template = str(runs / f"{label}.{{dataset}}.{split}.{{dim}}.trec")
    args = ["evaluate", "--model", model, "--dataset", str(dataset), "--split", split, "--run-file", template]
    args += ["--sts", str(sts)] if sts else []
    args += [] if params.cache else ["--no-cache"]
    stdout, stderr, cpu, wall = measured(*args, fresh=False)
    counts = ENCODED.search(stderr.decode("utf-8", errors="replace"))
    cost = {"cpu_seconds": cpu, "wall_seconds": wall,
            "encoded": int(counts[1].replace(",", "")) if counts else None,
            "from_cache": int(counts[2].replace(",", "")) if counts else None}
    qrels = _qrels(dataset, split)
    rows = []
    for r in parse_jsonl(stdout):
        row = {"model": label, "dataset": r["dataset"], "split": r["split"], "dim": r["dim"], "eval": cost}
        if "ndcg@10" in r:
            run_file = Path(template.format(dataset=r["dataset"], dim=r["dim"]))
            row.update({"ndcg@10": r["ndcg@10"], "per_query": per_query_ndcg(qrels, read_run(run_file))})
        else:
            row["spearman"] = r["spearman"]
        rows.append(row)
    return rows


def _qrels(dataset: Path, split: str) -> dict[str, dict[str, int]]:
    from gecko_cli.eval.data import read_qrels

    return read_qrels(dataset / "qrels" / f"{split}.tsv")


def compare(rows: list[dict[str, Any]], against: str) -> list[dict[str, Any]]:
    """Every other model against one on the same retrieval split (each at its own full dimension):
    mean per-query nDCG@10 difference (model - against) and its 95% paired-bootstrap interval."""
    ref = {r["split"]: r["per_query"] for r in rows if r["model"] == against and "per_query" in r}
    return [{"model": r["model"], "against": against, "split": r["split"],
             **paired_bootstrap(ref[r["split"]], r["per_query"])}
            for r in rows if "per_query" in r and r["model"] != against and r["split"] in ref]


def verdict(rows: list[dict[str, Any]], comparisons: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
    """Does NV-Embed's finding hold here: is latent-attention + bidirectional the best trained model
    on `split`, and is each of its leads outside the 95% interval of noise?

    >>> rows = [{"model": NV_EMBED, "split": "half-b", "ndcg@10": 0.5},
    ...         {"model": "mean-causal", "split": "half-b", "ndcg@10": 0.4}]
    >>> lead = {"model": "mean-causal", "against": NV_EMBED, "split": "half-b", "diff": -0.1, "low": -0.2}
    >>> [verdict(rows, [{**lead, "high": high}], "half-b")["holds"] for high in (0.01, -0.01)]
    ['best, within noise', 'yes']
    """
    scores = {r["model"]: r["ndcg@10"] for r in rows
              if r["split"] == split and "ndcg@10" in r and r["model"] != BASELINE}
    if NV_EMBED not in scores or len(scores) < 2:
        return None
    best = max(scores, key=scores.__getitem__)
    leads = {c["model"]: {k: c[k] for k in ("diff", "low", "high")} for c in comparisons
             if c["against"] == NV_EMBED and c["split"] == split and c["model"] in scores}
    if best != NV_EMBED:
        holds = "no"
    elif all(lead["high"] < 0 for lead in leads.values()):  # every other model is worse beyond noise
        holds = "yes"
    else:
        holds = "best, within noise"
    return {"split": split, "best": best, "holds": holds, "others_minus_nv_embed": leads}


def run(params: Params, context: Context) -> dict[str, Any]:
    work = Path(params.workdir) if Path(params.workdir).is_absolute() else ROOT / params.workdir
    work.mkdir(parents=True, exist_ok=True)
    scifact = Path(params.scifact)
    dev = work / "scifact-dev"
    halves = write_split(dev, scifact)
    runs = work / "runs"
    models: dict[str, Path] = {}
    stages: dict[str, Any] = {}
    records = finetune_records(params, work) if params.finetune_records else None  # mined once for the grid
    for pooling, attention in grid(params):
        label = f"{pooling}-{attention}"
        models[label], stages[label] = train(params, work, pooling, attention, records)
        eval_config(models[label], params.eval_max_seq_length, params.eval_dtype)
    rows = evaluate(BASELINE, "default", dev, "half-b", runs, params)
    for label, path in models.items():
        rows += evaluate(label, str(path), dev, "half-b", runs, params)
    if params.test:
        for label, path in {BASELINE: "default", **{k: str(v) for k, v in models.items()}}.items():
            rows += evaluate(label, path, scifact, "test", runs, params, sts=Path(params.sts))
    comparisons = compare(rows, params.reference) + (compare(rows, NV_EMBED) if NV_EMBED != params.reference else [])
    verdicts = [v for split in dict.fromkeys(r["split"] for r in rows if "per_query" in r)
                if (v := verdict(rows, comparisons, split)) is not None]
    return {"what": "SmolLM2-135M-Instruct grown into an embedder (gecko pretrain title->abstract on the SciFact "
                    "corpus, then gecko finetune when records are given) with each pooling and attention, at one "
                    "training budget; nDCG@10 on dev half B (SciFact train claims), all-MiniLM-L6-v2 beside",
            "budget": budget(params),
            "dev": {"half_a_claims": halves["a"], "half_b_claims": halves["b"]},
            "models": stages,
            "rows": [{k: v for k, v in r.items() if k != "per_query"} for r in rows],
            "comparisons": comparisons, "nv_embed": verdicts,
            "notes": "CPU-s: user + system seconds of the gecko process of each stage; a stage a previous run "
                     "trained reports that run's seconds; eval CPU-s is this run's dev evaluation, small when the "
                     "embedding cache served the corpus (rows[].eval.encoded / from_cache)",
            "table": table(rows, comparisons, stages, params.reference)}


def budget(params: Params) -> str:
    """The training budget in words (the measured CPU seconds are in the table)."""
    text = (f"every model: gecko pretrain {params.pretrain_steps} steps x {params.pretrain_batch_size} SciFact "
            f"title->abstract pairs")
    if params.finetune_records:
        source = FRET_RECORDS if params.finetune_records == FRET else rel(params.finetune_records)
        text += f", then gecko finetune {params.finetune_steps} steps x {params.finetune_batch_size} records of {source}"
    return text + (f"; training texts cut to {params.max_seq_length} tokens, lr {params.lr:g}; evaluated in "
                   f"{params.eval_dtype}, reading at most {params.eval_max_seq_length or 'the LM limit of'} tokens "
                   f"({BASELINE}: float32, 256 tokens, as gecko ships it)")


def table(rows: list[dict[str, Any]], comparisons: list[dict[str, Any]], stages: dict[str, Any],
          reference: str) -> list[str]:
    """Plain-text lines: model, dimension, dev nDCG@10, the difference against the reference with its
    95% interval, CPU seconds of each training stage and of the dev evaluation; SciFact test and
    STS Benchmark test when measured."""
    diff = {c["model"]: c for c in comparisons if c["against"] == reference and c["split"] == "half-b"}
    tested = any(r["split"] == "test" for r in rows)
    head = f"{'model':<32} {'dim':>4} {'dev':>6}  {'vs ' + reference + ' [95% CI]':<32} {'pre CPU-s':>9} " \
           f"{'ft CPU-s':>8} {'eval CPU-s':>10}"
    lines = [head + (f" {'test':>6} {'STSB':>6}" if tested else "")]
    for model in dict.fromkeys(r["model"] for r in rows):
        dev = next(r for r in rows if r["model"] == model and r["split"] == "half-b")
        c = diff.get(model)
        shown = (f"{100 * c['diff']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]" if c
                 else "(reference)" if model == reference else "")
        cpu = {s: stages.get(model, {}).get(s, {}).get("cpu_seconds") for s in ("pretrain", "finetune")}
        line = (f"{model:<32} {dev['dim']:>4} {100 * dev['ndcg@10']:6.2f}  {shown:<32} "
                f"{_num(cpu['pretrain']):>9} {_num(cpu['finetune']):>8} {_num(dev['eval']['cpu_seconds']):>10}")
        if tested:
            test = next((r for r in rows if r["model"] == model and r["split"] == "test" and "ndcg@10" in r), None)
            sts = next((r for r in rows if r["model"] == model and "spearman" in r), None)
            line += f" {_pct(test, 'ndcg@10'):>6} {_pct(sts, 'spearman'):>6}"
        lines.append(line)
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _pct(row: dict[str, Any] | None, key: str) -> str:
    return "-" if row is None else f"{100 * row[key]:.2f}"


def needs(params: Params) -> str | None:
    scifact = Path(params.scifact)
    paths = [scifact / "corpus.jsonl", scifact / "qrels" / "train.tsv"]
    paths += [scifact / "qrels" / "test.tsv", Path(params.sts)] if params.test else []
    paths += [ROOT / params.finetune_records] if params.finetune_records not in ("", FRET) else []
    if params.eval_dtype not in DTYPES:
        return f"--eval-dtype takes {' or '.join(DTYPES)}, not {params.eval_dtype!r}"
    if params.max_seq_length < 1:
        return "--max-seq-length must be at least 1 (training always cuts its texts)"
    return missing_paths(*paths)


def quick_setup(params: Params, context: Context) -> Params:
    """Two models (latent-attention and mean, bidirectional), one pretrain step of 4 pairs and no
    fine-tuning stage (each stage is a process that loads and saves a 530 MB model; the stage's
    commands are tests/integration/test_decoder_embedder.py's), texts cut to 32 tokens; a SciFact
    cut of 12 train claims (and 2 test) over the documents they judge and 40 more; 30 STS pairs; no
    embedding cache."""
    data = beir_subset(SCIFACT, context.workdir / "scifact", {"train": 12, "test": 2}, extra_docs=40)
    sts = tsv_head(Path(params.sts), context.workdir / "stsbenchmark" / "test.tsv", 30)
    return replace(params, poolings="latent-attention,mean", attentions="bidirectional", pretrain_steps=1,
                   pretrain_batch_size=4, finetune_records="", max_seq_length=32, eval_max_seq_length=64,
                   cache=False, scifact=str(data), sts=str(sts), workdir=str(context.workdir / "decoder-pooling"))


BENCHMARK = Benchmark(
    name="decoder_pooling",
    summary="SmolLM2-135M grown into an embedder: latent-attention/mean/last x bidirectional/causal at one "
            "training budget, SciFact dev",
    params=Params, run=run, needs=needs, quick_setup=quick_setup,
    after="its own training (hours; run it by name)",
)
