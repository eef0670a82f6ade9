"""`gecko finetune`: contrastive fine-tuning on `mine-negatives` training records (Gecko §3).

Each record becomes one row of unified-format texts — the query side `task: {task} | query: {query}`,
the document side `title: {title} | text: {text}` — with its positive and k hard negatives, and the
rows train with Gecko's loss (eq. 3), optionally cached (GradCache) and Matryoshka-wrapped.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Iterable, Optional, Sequence

import typer

from gecko_cli import options as opt
from gecko_cli import progress
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.paths import LLM_MODEL, READ, PathUse, require
from gecko_cli.contract.records import validate_training
from gecko_cli.contract.stream import Counts, StageInput
from gecko_cli.contract.text_format import check_text_format, format_document, format_query, resolve_templates
from gecko_cli.eval.measure import evaluate_pairs
from gecko_cli.search.embed import load_encoder
from gecko_cli.train.decoder import starting_point
from gecko_cli.train.config import DISTILL_KINDS, TrainConfig, parse_mrl_dims
from gecko_cli.train.distributed import data_parallel_rank
from gecko_cli.train.run import rows_to_dataset, train

# Symmetric tasks put the target on the query side too (Gecko §3.1).
SYMMETRIC_TASKS = frozenset({"sentence similarity", "semantic similarity", "sts"})


def format_target(doc: dict[str, Any], task: str | None, text_format: str = "gecko") -> str:
    """A positive or negative passage in the unified format (query side for symmetric tasks), or plain.

    >>> format_target({"text": "A cat.", "title": ""}, "search result")
    'title: none | text: A cat.'
    >>> format_target({"text": "A cat."}, "sentence similarity")
    'task: sentence similarity | query: A cat.'
    >>> format_target({"text": "A cat.", "title": "Pets"}, "search result", "plain")
    'Pets A cat.'
    """
    if task and task.strip().lower() in SYMMETRIC_TASKS:
        return format_query(doc["text"], task, text_format)
    return format_document(doc["text"], doc.get("title"), text_format)


def negatives_per_row(records: Sequence[dict[str, Any]], num_negatives: int | None) -> int:
    """k, the negative columns of every row: `--num-negatives`, else the fewest any record has.

    >>> negatives_per_row([{"negatives": [1, 2]}, {"negatives": [3]}], None)
    1
    """
    if num_negatives is not None:
        return num_negatives
    return min((len(r.get("negatives") or []) for r in records), default=0)


def teacher_scores(record: dict[str, Any], k: int, field: str) -> list[float] | None:
    """[positive, negative_1..k] values of `field` (the LLM's score `mine-negatives` kept), or None
    when any of them has none.

    >>> teacher_scores({"positive": {"ql": -3.0}, "negatives": [{"ql": -9.5}, {"ql": -7}]}, 1, "ql")
    [-3.0, -9.5]
    """
    passages = [record["positive"], *(record.get("negatives") or [])[:k]]
    values = [p.get(field) if isinstance(p, dict) else None for p in passages]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


def training_rows(records: Iterable[dict[str, Any]], k: int, teacher: str | None = None,
                  text_format: str = "gecko") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pure core: training records -> (rows of anchor, positive, negative_1..k[, label]; records dropped by reason).

    A record with fewer than k negatives is dropped (every row needs the same columns); one with
    more keeps its first k, which `mine-negatives` writes best first. With `teacher` (a score field),
    each row's `label` is the teacher scores of its positive and negatives, and a record without them
    is dropped too.

    >>> rec = {"id": "r", "task": "fact checking", "query": "q", "positive": {"text": "p", "ql": -2},
    ...        "negatives": [{"title": "T", "text": "n", "ql": -5}]}
    >>> rows, dropped = training_rows([rec], 1, "ql")
    >>> rows[0]["negative_1"], rows[0]["label"]
    ('title: T | text: n', [-2.0, -5.0])
    """
    rows, dropped = [], {"too few negatives": 0, "no teacher score": 0}
    for record in records:
        negatives = record.get("negatives") or []
        if len(negatives) < k:
            dropped["too few negatives"] += 1
            continue
        scores = teacher_scores(record, k, teacher) if teacher else None
        if teacher and scores is None:
            dropped["no teacher score"] += 1
            continue
        task = record.get("task")
        row: dict[str, Any] = {"anchor": format_query(record["query"], task, text_format),
                               "positive": format_target(record["positive"], task, text_format)}
        row.update({f"negative_{i + 1}": format_target(n, task, text_format) for i, n in enumerate(negatives[:k])})
        if scores is not None:
            row["label"] = scores
        rows.append(row)
    return rows, dropped


def parse_mix(spec: str) -> tuple[str, float]:
    """`--mix FILE[:WEIGHT]` -> (FILE, WEIGHT); the weight defaults to 1.

    >>> parse_mix("data/nq.jsonl:0.5"), parse_mix("c:/x.jsonl")
    (('data/nq.jsonl', 0.5), ('c:/x.jsonl', 1.0))
    """
    path, _, weight = spec.rpartition(":")
    try:
        value = float(weight) if path else 1.0
    except ValueError:
        return spec, 1.0
    if not path:
        return spec, 1.0
    if value < 0:
        raise UsageError(f"--mix {spec}: the weight must be >= 0")
    return path, value


def weighted(records: list[dict[str, Any]], weight: float, rng: random.Random) -> list[dict[str, Any]]:
    """A source scaled by its mixture weight: whole copies, then a seeded sample for the fraction.

    >>> len(weighted(list(range(10)), 1.5, random.Random(0)))
    15
    """
    whole, fraction = int(weight), weight - int(weight)
    return records * whole + rng.sample(records, round(fraction * len(records)))


def balance_by_task(records: Sequence[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """`--sample-by task`: every task type as often as the largest one (seeded oversampling).

    Gecko found sampling task types uniformly best (60.87 vs 60.70 MTEB).

    >>> recs = [{"task": "a"}] * 3 + [{"task": "b"}]
    >>> sorted(r["task"] for r in balance_by_task(recs, random.Random(0)))
    ['a', 'a', 'a', 'b', 'b', 'b']
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record.get("task") or ""), []).append(record)
    target = max((len(g) for g in groups.values()), default=0)
    out: list[dict[str, Any]] = []
    for group in groups.values():
        out += group + rng.choices(group, k=target - len(group))
    return out


def training_pool(records: list[dict[str, Any]], more: list[dict[str, Any]], sample_by: str | None,
                  seed: int) -> list[dict[str, Any]]:
    """The records to train on: the input's, then the `--mix` files', balanced by task if asked.

    >>> len(training_pool([{"task": "a"}] * 2, [{"task": "b"}], "task", 0)), training_pool([1], [2], None, 0)
    (4, [1, 2])
    """
    if sample_by not in (None, "task"):
        raise UsageError("--sample-by takes: task")
    pool = records + more
    return balance_by_task(pool, random.Random(seed)) if sample_by else pool


# --- the extra files: --mix, --eval -------------------------------------------------------

MIX_FILE = PathUse(path_of=lambda spec: parse_mix(spec)[0])  # --mix FILE[:WEIGHT]: the FILE is read


def read_mix(specs: Sequence[str], rejects: Any, seed: int) -> tuple[list[dict[str, Any]], Counts]:
    """The records of every `--mix FILE[:WEIGHT]`, validated like stdin, and their counts."""
    rng, records, counts = random.Random(seed), [], Counts()
    for spec in specs:
        path, weight = parse_mix(spec)
        require(READ, path)
        with open(path, "rb") as stream:
            source = StageInput(stream=stream, source=path, validate=validate_training, rejects=rejects)
            found = list(source.records())
        if source.error is not None:
            raise source.error
        counts.read += source.counts.read
        counts.rejected += source.counts.rejected
        records += weighted(found, weight, rng)
    return records, counts


def read_eval(path: Path) -> list[dict[str, Any]]:
    """`--eval FILE`: training records, all of them valid (errors name the file and line)."""
    require(READ, path)
    with path.open("rb") as stream:
        source = StageInput(stream=stream, source=str(path), validate=validate_training)
        records = list(source.records())
    if source.error is not None:
        raise source.error
    return records


def pair_scores(model: str, records: list[dict[str, Any]], text_format: str) -> dict[str, float]:
    """Accuracy@1 and MRR of positive vs negatives with `model`, texts written as training writes them."""
    encoder = load_encoder(model, use_cache=False)
    templates = resolve_templates(encoder.name, text_format, text_format, None)
    row = evaluate_pairs(encoder, records, [], templates)[0]
    return {"accuracy@1": row["accuracy@1"], "mrr": row["mrr"]}


# --- command ------------------------------------------------------------------------------


def command(
    output_dir: opt.ModelOutputOpt,
    init: Annotated[Optional[str], typer.Option("--init", help="Model to start from: a path or name, a `gecko pretrain` output, or a language model to grow into an embedder (embedded-llm, a GGUF file; see --pooling) (default: the embedded all-MiniLM-L6-v2)."), LLM_MODEL] = None,
    mix: Annotated[Optional[list[str]], typer.Option("--mix", help="More training records, FILE[:WEIGHT] (weight 0.5 = a seeded half, 2 = twice). Repeatable."), MIX_FILE] = None,
    num_negatives: Annotated[Optional[int], typer.Option("--num-negatives", min=0, help="Hard negatives per example; records with fewer are dropped (default: the fewest any record has, none dropped).")] = None,
    epochs: opt.EpochsOpt = 1.0,
    max_steps: opt.MaxStepsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step; every other example is an in-batch negative.")] = 32,
    mini_batch_size: opt.MiniBatchSizeOpt = None,
    max_seq_length: opt.MaxSeqLengthOpt = None,
    text_format: opt.TextFormatOpt = "gecko",
    pooling: opt.PoolingOpt = None,
    attention: opt.AttentionOpt = None,
    lr: opt.LrOpt = 2e-5,
    warmup_ratio: opt.WarmupRatioOpt = 0.1,
    temperature: opt.TemperatureOpt = 0.05,
    no_same_tower: opt.NoSameTowerOpt = False,
    mrl_dims: Annotated[Optional[str], typer.Option("--mrl-dims", help="Matryoshka dimensions, e.g. 384,256,128,64 (default: none, plain loss).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling, shuffling and initialisation.")] = 0,
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help="Write a checkpoint every N steps (default: only the final model).")] = None,
    resume: opt.ResumeOpt = False,
    sample_by: Annotated[Optional[str], typer.Option("--sample-by", help="task: sample task types uniformly (rarer types oversampled, seeded).")] = None,
    eval_file: Annotated[Optional[Path], typer.Option("--eval", readable=False, help="Held-out training records: accuracy@1 and MRR before and after, in the summary."), READ] = None,
    gather: opt.GatherOpt = True,
    distill: Annotated[Optional[str], typer.Option("--distill", help="Also learn the LLM's scores (GPL's lever): margin-mse (score margins, positive vs each negative) or listwise-kl (the softmax over positive and negatives).")] = None,
    teacher: Annotated[str, typer.Option("--teacher", help="With --distill: the passage field holding the teacher score, as kept by mine-negatives (ql, rc, rrf, retriever_score).")] = "ql",
    distill_weight: Annotated[float, typer.Option("--distill-weight", min=0.0, help="With --distill: weight of the distillation term.")] = 1.0,
    contrastive_weight: Annotated[float, typer.Option("--contrastive-weight", min=0.0, help="With --distill: weight of Gecko's contrastive loss (0 = distillation only).")] = 1.0,
    teacher_temperature: Annotated[float, typer.Option("--teacher-temperature", help="With --distill: T, the teacher's scores are divided by it (listwise-kl: the teacher's softmax temperature; margin-mse: puts its margins on the student's cos/τ scale).")] = 1.0,
    input: opt.InputOpt = None,
    rejects: opt.RejectsOpt = None,
) -> None:
    """Fine-tune an embedder on training records (stdin) with Gecko's loss; one summary line on stdout.

    Examples:

      gecko mine-negatives < fret.jsonl | gecko finetune --output models/mine --max-steps 1000

      gecko finetune -o models/mine --init models/pre --mix nq.jsonl:0.5 --batch-size 1024 --mini-batch-size 64 --mrl-dims 384,256,128,64 < train.jsonl

      gecko finetune -o models/mine --distill margin-mse --teacher ql --num-negatives 3 < train.jsonl

      accelerate launch --multi_gpu --num_processes 2 -m gecko_cli finetune -i train.jsonl -o models/mine
    """
    start = starting_point(init, pooling, attention)  # checked before any input is read
    check_text_format(text_format)
    rank, _ = data_parallel_rank(input, "records")
    with opt.stage_io(validate_training, input=input, output=None, rejects=rejects) as (source, out):
        records = list(source.records())
        if source.error is not None:
            raise source.error
        more, mix_counts = read_mix(mix or [], source.rejects, seed)
        pool = training_pool(records, more, sample_by, seed)
        k = negatives_per_row(pool, num_negatives)
        if distill is not None and distill not in DISTILL_KINDS:
            raise UsageError(f"--distill takes {' or '.join(DISTILL_KINDS)}")
        rows, dropped = training_rows(pool, k, teacher if distill else None, text_format)
        held_out = read_eval(eval_file) if eval_file else []  # every rank checks the file, rank 0 scores
        counts = source.counts
        counts.read, counts.rejected = counts.read + mix_counts.read, counts.rejected + mix_counts.rejected
        counts.written = len(rows)
        counts.extra["dropped (too few negatives)"] = dropped["too few negatives"]
        if distill:
            counts.extra["dropped (no teacher score)"] = dropped["no teacher score"]
        if rank == 0:
            opt.summary("finetune", counts)
        config = TrainConfig(
            stage="finetune", init=start.init, pooling=start.pooling, attention=start.attention,
            output=str(output_dir), epochs=epochs,
            max_steps=max_steps, batch_size=batch_size, mini_batch_size=mini_batch_size,
            max_seq_length=max_seq_length, lr=lr,
            warmup_ratio=warmup_ratio, temperature=temperature, same_tower=not no_same_tower,
            mrl_dims=parse_mrl_dims(mrl_dims), seed=seed, save_steps=save_steps, resume=resume,
            text_format=text_format, num_negatives=k, gather_across_processes=gather, distill=distill, distill_weight=distill_weight,
            contrastive_weight=contrastive_weight, teacher_field=teacher if distill else None,
            teacher_temperature=teacher_temperature)
        held_out = held_out if rank == 0 else []
        before = pair_scores(config.init, held_out, text_format) if held_out and start.pooling is None else None
        with progress.training_bar("finetune") as bar:
            summary = train(config, rows_to_dataset(rows), report=bar,
                            say=None if bar else progress.training_log("finetune"))
        if held_out:
            summary["eval"] = {"file": str(eval_file), "records": len(held_out), "before": before,
                               "after": pair_scores(str(output_dir), held_out, text_format)}
        progress.training_summary("finetune", summary)
        if rank == 0:
            out.write(summary)
