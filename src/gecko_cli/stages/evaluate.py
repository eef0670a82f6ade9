"""`gecko evaluate`: measure embedders on BEIR folders, STS files, or training records on stdin.

Every `--dims` value comes from one encoding pass (see gecko_cli.eval.measure).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gecko_cli import options as opt
from gecko_cli.contract.errors import UsageError
from gecko_cli.eval.measure import (check_run_file, evaluate_pairs, evaluate_retrieval, evaluate_sts, run_file_path,
                                  trec_run_lines)


def parse_dims(text: str | None) -> list[int]:
    """`--dims "384,128"` -> [384, 128]."""
    from gecko_cli.contract.records import parse_int_list

    try:
        return parse_int_list(text, "--dims")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def command(
    dataset: Annotated[Optional[list[Path]], typer.Option("--dataset", "-d", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/). Repeatable.")] = None,
    split: Annotated[str, typer.Option("--split", help="qrels split to evaluate.")] = "test",
    sts: Annotated[Optional[list[Path]], typer.Option("--sts", help="STS TSV with sentence1, sentence2, score columns. Repeatable.")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", envvar="GECKO_EMBEDDER", help="Model path or name; repeat to compare (default: the embedded all-MiniLM-L6-v2).")] = None,
    dims: Annotated[Optional[str], typer.Option("--dims", help="Matryoshka dimensions, e.g. 384,256,128,64 (one encoding pass) (default: the model's).")] = None,
    run_file: Annotated[Optional[str], typer.Option("--run-file", help="Write the top-100 ranking as a TREC run; slots {model} {dataset} {dim} when there are several.")] = None,
    query_prompt: Annotated[Optional[str], typer.Option("--query-prompt", help="Query template with {text} (and {task}), or a preset: plain, gecko (default: the model's stored templates for retrieval, plain for STS).")] = None,
    doc_prompt: Annotated[Optional[str], typer.Option("--doc-prompt", help="Document template with {text} and {title}, or a preset: plain, gecko.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Task for {task} in the query template (default: search result; sentence similarity for STS).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the headline metric against dimension, a line per model, to FILE.png.")] = None,
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
    run_evaluate(dataset or [], split, sts or [], model or [None], parse_dims(dims), run_file, query_prompt,
                 doc_prompt, task, batch_size, not no_cache, input, output, rejects, shard, plot)


def run_evaluate(datasets: list[Path], split: str, sts_files: list[Path], models: list[str | None],
                 dims: list[int], run_file: str | None, query_prompt: str | None, doc_prompt: str | None,
                 task: str | None, batch_size: int, use_cache: bool, input: Path | None, output: Path | None,
                 rejects: Path | None, shard: str | None, plot: Path | None = None) -> None:
    """Wire options, data, models and output together (the command's body)."""
    from gecko_cli.eval.data import load_beir, load_sts
    from gecko_cli.search.embed import display_name, load_encoder
    from gecko_cli.contract.jsonl import JsonlWriter
    from gecko_cli.progress import encode_callback, message
    from gecko_cli.contract.text_format import resolve_templates
    from gecko_cli.contract.records import validate_training

    if run_file:
        check_run_file(run_file, len(models), len(datasets), max(len(dims), 1))
    beir = [load_beir(d, split) for d in datasets]
    pairs = [load_sts(f) for f in sts_files]
    records: list[dict[str, Any]] = []
    if not beir and not pairs:
        if input is None and sys.stdin.isatty():
            raise UsageError("nothing to evaluate: give --dataset DIR, --sts FILE, or training records on stdin")
        with opt.stage_io(validate_training, input, None, rejects, shard) as (source, _):
            records = list(source.records())
            if source.error is not None:
                raise source.error
        source.counts.written = len(records)  # consumed into the metrics
        opt.summary("evaluate", source.counts)
    rows = []
    with (output.open("w", encoding="utf-8") if output else _stdout()) as out:
        writer = JsonlWriter(out)
        for name in models:
            encoder = load_encoder(name, use_cache, batch_size, progress=encode_callback)
            shown = display_name(encoder.name)
            for data in beir:
                templates = resolve_templates(encoder.name, query_prompt, doc_prompt, task)
                found, runs = evaluate_retrieval(encoder, data, dims, templates)
                rows += _emit(writer, shown, found)
                for dim, run in runs.items() if run_file else ():
                    path = run_file_path(run_file, shown, data.name, dim)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("".join(l + "\n" for l in trec_run_lines(run, f"gecko-{dim}")))
            for sts_pairs in pairs:
                # Plain sentences unless --query-prompt says otherwise, even for a model that stored
                # the Gecko format: training never put two sentences on the query side, and on STS
                # Benchmark *dev* a gecko-trained model scored 86.31 plain vs 84.41 / 82.15 with
                # `task: search result | query:` / `task: sentence similarity | query:` on both sides.
                templates = resolve_templates(encoder.name, query_prompt or "plain", doc_prompt, task,
                                              "sentence similarity")
                rows += _emit(writer, shown, evaluate_sts(encoder, sts_pairs, dims, templates))
            if records:
                templates = resolve_templates(encoder.name, query_prompt, doc_prompt, task)
                rows += _emit(writer, shown, evaluate_pairs(encoder, records, dims, templates,
                                                            str(input) if input else "<stdin>"))
            message(f"gecko evaluate: {shown}: encoded {encoder.encoded:,} texts, "
                    f"{encoder.from_cache:,} served from the cache")
    _print_table(rows)
    if plot is not None:
        from gecko_cli.eval.plots import plot_metrics

        plot_metrics(rows, plot)
        message(f"gecko evaluate: plot: {plot}")


def _stdout():
    import contextlib

    opt._utf8_stdout()
    return contextlib.nullcontext(sys.stdout)


def _emit(writer: "JsonlWriter", model: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        writer.write({"model": model, **row})
    return [{"model": model, **row} for row in rows]


TABLE_KEYS = ("ndcg@10", "recall@100", "mrr@10", "map@100", "spearman", "pearson", "accuracy@1", "mrr")


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from gecko_cli.progress import stderr

    keys = [k for k in TABLE_KEYS if any(k in r for r in rows)]
    table = Table(title="gecko evaluate (×100)", title_justify="left")
    for column in ("model", "dataset", "split", "dim", "n", *keys):
        table.add_column(column, justify="right" if column not in ("model", "dataset", "split") else "left")
    for r in rows:
        n = r.get("n_queries", r.get("n_pairs", ""))
        table.add_row(r["model"], r["dataset"], r["split"], str(r["dim"]), str(n),
                      *[f"{100 * r[k]:.2f}" if k in r else "" for k in keys])
    stderr.print(table)
