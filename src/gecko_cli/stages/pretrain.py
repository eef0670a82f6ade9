"""`gecko pretrain`: pre-finetuning on weakly supervised pairs, in-batch negatives only (Gecko §3).

Pairs are title→body (`{"title", "text"}`) or query→answer (`{"query", "positive"}`). The query side
carries one dataset-level task (`--task`, as the paper does for its pre-finetuning corpora), the
document side is `title: none | text: {body}` (the title *is* the query, so it is not repeated).

The loss is Gecko's own (eq. 3) with no hard-negative column, rather than sentence-transformers'
MultipleNegativesRankingLoss: with n = ∅ eq. 3 keeps in-batch positives *and* same-tower negatives
(MNRL has only the former), it is the loss `finetune` continues with, and its cached variant bounds
memory for "the largest batch that fits".
"""

from __future__ import annotations

from typing import Annotated, Any, Iterable, Optional

import typer

from gecko_cli import options as opt
from gecko_cli import progress
from gecko_cli.contract.paths import LLM_MODEL
from gecko_cli.contract.records import Field, RecordError, check_fields
from gecko_cli.contract.text_format import DEFAULT_TASK, check_text_format, format_document, format_query
from gecko_cli.train.decoder import starting_point
from gecko_cli.train.config import TrainConfig, parse_mrl_dims
from gecko_cli.train.distributed import data_parallel_rank
from gecko_cli.train.run import rows_to_dataset, train

TITLE_TEXT = (Field("title", (str,)), Field("text", (str,)))
QUERY_POSITIVE = (Field("query", (str,)), Field("positive", (str, dict)))


def validate_pair(record: dict[str, Any]) -> dict[str, Any]:
    """`{"query", "positive"}` (positive a string or `{"title"?, "text"}`) or `{"title", "text"}`.

    >>> validate_pair({"title": "Paris", "text": "Capital of France."})["text"]
    'Capital of France.'
    """
    if "query" in record or "positive" in record:
        check_fields(record, QUERY_POSITIVE)
        if isinstance(record["positive"], dict):
            check_fields(record["positive"], (Field("text", (str,)), Field("title", (str,), False, False)),
                         where="positive.")
        return record
    if "title" not in record and "text" not in record:
        raise RecordError('need {"title", "text"} or {"query", "positive"}')
    check_fields(record, TITLE_TEXT)
    return record


def pair_row(record: dict[str, Any], task: str, text_format: str = "gecko") -> dict[str, str]:
    """Pure core: one pair -> {anchor, positive} in the unified format (or plain); a record's own task wins.

    >>> pair_row({"title": "Paris", "text": "Capital of France."}, "search result")
    {'anchor': 'task: search result | query: Paris', 'positive': 'title: none | text: Capital of France.'}
    >>> pair_row({"title": "Paris", "text": "Capital of France."}, "search result", "plain")
    {'anchor': 'Paris', 'positive': 'Capital of France.'}
    """
    task = record.get("task") or task
    if "query" in record:
        positive = record["positive"]
        doc = positive if isinstance(positive, dict) else {"text": positive}
        return {"anchor": format_query(record["query"], task, text_format),
                "positive": format_document(doc["text"], doc.get("title"), text_format)}
    return {"anchor": format_query(record["title"], task, text_format),
            "positive": format_document(record["text"], None, text_format)}


def pair_rows(records: Iterable[dict[str, Any]], task: str, text_format: str = "gecko") -> list[dict[str, str]]:
    """Every pair as a training row, in input order."""
    return [pair_row(record, task, text_format) for record in records]


# --- command ------------------------------------------------------------------------------


def command(
    output_dir: opt.ModelOutputOpt,
    task: Annotated[str, typer.Option("--task", help="Dataset-level task on the query side.")] = DEFAULT_TASK,
    init: Annotated[Optional[str], typer.Option("--init", help="Model to start from, or a language model to grow into an embedder (embedded-llm, a GGUF file; see --pooling) (default: the embedded all-MiniLM-L6-v2)."), LLM_MODEL] = None,
    epochs: opt.EpochsOpt = 1.0,
    max_steps: opt.MaxStepsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per step: the largest that fits (with --mini-batch-size, any).")] = 256,
    mini_batch_size: opt.MiniBatchSizeOpt = None,
    max_seq_length: opt.MaxSeqLengthOpt = None,
    text_format: opt.TextFormatOpt = "gecko",
    pooling: opt.PoolingOpt = None,
    attention: opt.AttentionOpt = None,
    lr: opt.LrOpt = 2e-5,
    warmup_ratio: opt.WarmupRatioOpt = 0.1,
    temperature: opt.TemperatureOpt = 0.05,
    no_same_tower: opt.NoSameTowerOpt = False,
    mrl_dims: Annotated[Optional[str], typer.Option("--mrl-dims", help="Matryoshka dimensions, e.g. 384,256,128,64 (default: none).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for shuffling and initialisation.")] = 0,
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help="Write a checkpoint every N steps.")] = None,
    resume: opt.ResumeOpt = False,
    gather: opt.GatherOpt = True,
    input: opt.InputOpt = None,
    rejects: opt.RejectsOpt = None,
) -> None:
    """Pre-finetune an embedder on pairs (stdin) with in-batch negatives; one summary line on stdout.

    Examples:

      gecko pretrain --output models/pre --task "search result" --max-steps 2000 < title_body.jsonl

      gecko pretrain -o models/pre --batch-size 4096 --mini-batch-size 64 < qa_pairs.jsonl

      accelerate launch --multi_gpu --num_processes 2 -m gecko_cli pretrain -i pairs.jsonl -o models/pre
    """
    start = starting_point(init, pooling, attention)  # checked before any input is read
    check_text_format(text_format)
    rank, _ = data_parallel_rank(input, "pairs")
    with opt.stage_io(validate_pair, input=input, output=None, rejects=rejects) as (source, out):
        rows = pair_rows(source.records(), task, text_format)
        if source.error is not None:
            raise source.error
        source.counts.written = len(rows)
        if rank == 0:
            opt.summary("pretrain", source.counts)
        config = TrainConfig(
            stage="pretrain", init=start.init, pooling=start.pooling, attention=start.attention,
            output=str(output_dir), epochs=epochs,
            max_steps=max_steps, batch_size=batch_size, mini_batch_size=mini_batch_size,
            max_seq_length=max_seq_length, lr=lr,
            warmup_ratio=warmup_ratio, temperature=temperature, same_tower=not no_same_tower,
            mrl_dims=parse_mrl_dims(mrl_dims), seed=seed, save_steps=save_steps, resume=resume, task=task,
            text_format=text_format, gather_across_processes=gather)
        with progress.training_bar("pretrain") as bar:
            summary = train(config, rows_to_dataset(rows), report=bar,
                            say=None if bar else progress.training_log("pretrain"))
        progress.training_summary("pretrain", summary)
        if rank == 0:
            out.write(summary)
