"""`gecko evaluate`: measure embedders on BEIR folders, STS files, or training records on stdin.

Every `--dims` value comes from one encoding pass (see gecko_cli.eval.measure).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Iterator, Optional, Sequence

import typer
from rich.table import Table

from gecko_cli import options as opt
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.jsonl import JsonlWriter
from gecko_cli.contract.paths import MODEL_DIR, READ, READ_DIR, WRITE_MAKING_DIRS, writing
from gecko_cli.contract.records import parse_int_list, validate_training
from gecko_cli.contract.text_format import resolve_templates
from gecko_cli.eval.data import BeirDataset, StsPairs, load_beir, load_sts
from gecko_cli.eval.measure import (Run, check_run_file, evaluate_pairs, evaluate_retrieval, evaluate_sts,
                                    run_file_path, trec_run_lines)
from gecko_cli.eval.plots import plot_metrics
from gecko_cli.progress import encode_callback, message, stderr
from gecko_cli.search.embed import Encoder, display_name, load_encoder


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """How every model is measured (keywords only: most fields are optional strings, easy to swap)."""

    dims: Sequence[int] = ()  # empty: the model's own dimension
    query_prompt: str | None = None
    doc_prompt: str | None = None
    task: str | None = None
    run_file: str | None = None


@dataclass
class EvalSets:
    """What the models are measured on; `records` are training records read from `records_source`."""

    beir: list[BeirDataset]
    sts: list[StsPairs]
    records: list[dict[str, Any]]
    records_source: str = "<stdin>"


def measure(encoder: Encoder, sets: EvalSets, options: EvaluateOptions) -> Iterator[tuple[dict[str, Any], Run | None]]:
    """The core over one loaded model: a metrics row per (dataset, dim), in order, each with its
    ranking for `--run-file` (retrieval rows only, else None).

    Retrieval and training records use the model's stored templates unless the options say
    otherwise; STS sentences stay plain unless `--query-prompt` is given, even for a model that
    stored the Gecko format: training never put two sentences on the query side (the measurement
    is in docs/decisions.md, "STS sentences plain in `gecko evaluate`").
    """
    retrieval = resolve_templates(encoder.name, options.query_prompt, options.doc_prompt, options.task)
    for data in sets.beir:
        rows, runs = evaluate_retrieval(encoder, data, options.dims, retrieval)
        yield from ((row, runs[row["dim"]]) for row in rows)
    if sets.sts:
        sts = resolve_templates(encoder.name, options.query_prompt or "plain", options.doc_prompt, options.task,
                                "sentence similarity")
        for pairs in sets.sts:
            yield from ((row, None) for row in evaluate_sts(encoder, pairs, options.dims, sts))
    if sets.records:
        rows = evaluate_pairs(encoder, sets.records, options.dims, retrieval, sets.records_source)
        yield from ((row, None) for row in rows)


# --- command ------------------------------------------------------------------------


def command(
    dataset: Annotated[Optional[list[Path]], typer.Option("--dataset", "-d", readable=False, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/). Repeatable."), READ_DIR] = None,
    split: Annotated[str, typer.Option("--split", help="qrels split to evaluate.")] = "test",
    sts: Annotated[Optional[list[Path]], typer.Option("--sts", readable=False, help="STS TSV with sentence1, sentence2, score columns. Repeatable."), READ] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", envvar="GECKO_EMBEDDER", help="Model path or name; repeat to compare (default: the embedded all-MiniLM-L6-v2)."), MODEL_DIR] = None,
    dims: Annotated[Optional[str], typer.Option("--dims", help="Matryoshka dimensions, e.g. 384,256,128,64 (one encoding pass) (default: the model's).")] = None,
    run_file: Annotated[Optional[str], typer.Option("--run-file", help="Write the top-100 ranking as a TREC run; slots {model} {dataset} {dim} when there are several."), WRITE_MAKING_DIRS] = None,
    query_prompt: Annotated[Optional[str], typer.Option("--query-prompt", help="Query template with {text} (and {task}), or a preset: plain, gecko (default: the model's stored templates for retrieval, plain for STS).")] = None,
    doc_prompt: Annotated[Optional[str], typer.Option("--doc-prompt", help="Document template with {text} and {title}, or a preset: plain, gecko.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Task for {task} in the query template (default: search result; sentence similarity for STS).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", readable=False, help="Draw the headline metric against dimension, a line per model, to FILE.png."), WRITE_MAKING_DIRS] = None,
    batch_size: opt.BatchSizeOpt = 32,
    no_cache: opt.NoCacheOpt = False,
    input: opt.InputOpt = None,
    output: opt.OutputOpt = None,
    rejects: opt.RejectsOpt = None,
    shard: opt.ShardOpt = None,
) -> None:
    """Measure embedders: retrieval on BEIR folders, STS correlation, or training records on stdin.

    One JSON line per (model, dataset, split, dim) on stdout, a table on stderr.

    Examples:

      gecko evaluate --dataset examples/data/scifact --split test --dims 384,128

      gecko evaluate --sts examples/data/stsbenchmark/test.tsv --model models/mine --model default

      gecko evaluate -d examples/data/scifact --dims 384,256,128,64 --model out/tiny --model default --plot out/dims.png

      gecko evaluate < train.jsonl
    """
    models: list[str | None] = list(model or [None])
    options = EvaluateOptions(dims=parse_dims(dims), query_prompt=query_prompt, doc_prompt=doc_prompt, task=task,
                              run_file=run_file)
    if run_file:
        check_run_file(run_file, len(models), len(dataset or []), max(len(options.dims), 1))
    sets = EvalSets(beir=[load_beir(d, split) for d in dataset or []], sts=[load_sts(f) for f in sts or []],
                    records=[])
    if not sets.beir and not sets.sts:
        sets.records = _training_records(input, rejects, shard)
        sets.records_source = str(input) if input else "<stdin>"
    rows: list[dict[str, Any]] = []
    with _open_output(output) as out:
        writer = JsonlWriter(out)
        for name in models:
            encoder = load_encoder(name, not no_cache, batch_size, progress=encode_callback)
            shown = display_name(encoder.name)
            for row, run in measure(encoder, sets, options):
                rows.append({"model": shown, **row})
                writer.write(rows[-1])
                if run is not None and run_file:
                    _write_run(run_file_path(run_file, shown, row["dataset"], row["dim"]), run, row["dim"])
            message(f"gecko evaluate: {shown}: encoded {encoder.encoded:,} texts, "
                    f"{encoder.from_cache:,} served from the cache")
    _print_table(rows)
    if plot is not None:
        plot_metrics(rows, plot)
        message(f"gecko evaluate: plot: {plot}")


def parse_dims(text: str | None) -> list[int]:
    """`--dims "384,128"` -> [384, 128]."""
    try:
        return parse_int_list(text, "--dims")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _training_records(input: Path | None, rejects: Path | None, shard: str | None) -> list[dict[str, Any]]:
    """Training records from --input or stdin, read whole (they are consumed into the metrics)."""
    if input is None and sys.stdin.isatty():
        raise UsageError("nothing to evaluate: give --dataset DIR, --sts FILE, or training records on stdin")
    with opt.stage_io(validate_training, input=input, output=None, rejects=rejects, shard=shard) as (source, _):
        records = list(source.records())
        if source.error is not None:
            raise source.error
    source.counts.written = len(records)
    opt.summary("evaluate", source.counts)
    return records


def _open_output(output: Path | None) -> contextlib.AbstractContextManager[IO[str]]:
    if output is not None:
        return output.open("w", encoding="utf-8")
    opt.utf8_stdout()
    return contextlib.nullcontext(sys.stdout)


def _write_run(path: Path, run: Run, dim: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        path.write_text("".join(line + "\n" for line in trec_run_lines(run, f"gecko-{dim}")))


TABLE_KEYS = ("ndcg@10", "recall@100", "mrr@10", "map@100", "spearman", "pearson", "accuracy@1", "mrr")


def _print_table(rows: list[dict[str, Any]]) -> None:
    keys = [k for k in TABLE_KEYS if any(k in r for r in rows)]
    table = Table(title="gecko evaluate (×100)", title_justify="left")
    for column in ("model", "dataset", "split", "dim", "n", *keys):
        table.add_column(column, justify="right" if column not in ("model", "dataset", "split") else "left")
    for r in rows:
        n = r.get("n_queries", r.get("n_pairs", ""))
        table.add_row(r["model"], r["dataset"], r["split"], str(r["dim"]), str(n),
                      *[f"{100 * r[k]:.2f}" if k in r else "" for k in keys])
    stderr.print(table)
