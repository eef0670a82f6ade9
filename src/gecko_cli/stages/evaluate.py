"""`gecko evaluate`: retrieval (BEIR), STS, and positive-vs-negatives on training records.

Every `--dims` value comes from one encoding pass: the full vectors are encoded
(and cached) once, then truncated and re-normalised per dimension (Matryoshka).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from gecko_cli.data import BeirDataset, StsPairs
from gecko_cli.embed import Encoder, truncate
from gecko_cli.errors import UsageError
from gecko_cli.metrics import pair_ranking_metrics, pearson, retrieval_metrics, spearman
from gecko_cli.prompting import Templates
from gecko_cli.search import exact_top_k

RUN_DEPTH = 100  # every metric is cut at 100 or less; the TREC run keeps the same depth


def check_dims(dims: Sequence[int], full: int) -> list[int]:
    """The dimensions to report (default: the model's own), each 1..full.

    >>> check_dims([], 384), check_dims([384, 64], 384)
    ([384], [384, 64])
    """
    bad = [d for d in dims if not 0 < d <= full]
    if bad:
        raise UsageError(f"--dims {bad[0]}: the model has {full} dimensions")
    return list(dims) or [full]


def rank_corpus(queries: np.ndarray, corpus: np.ndarray, query_ids: Sequence[str],
                doc_ids: Sequence[str], depth: int = RUN_DEPTH) -> dict[str, list[tuple[str, float]]]:
    """Exact cosine ranking: query id -> [(doc id, score)] best first, `depth` long."""
    idx, scores = exact_top_k(queries, corpus, depth)
    return {q: [(doc_ids[i], float(s)) for i, s in zip(row_idx, row_scores)]
            for q, row_idx, row_scores in zip(query_ids, idx, scores)}


def trec_run_lines(run: dict[str, list[tuple[str, float]]], tag: str) -> Iterator[str]:
    """`qid Q0 docid rank score tag` lines (trec_eval's run format).

    >>> list(trec_run_lines({"q1": [("d9", 0.5)]}, "gecko"))
    ['q1 Q0 d9 1 0.500000000 gecko']
    """
    for qid, ranked in run.items():
        for rank, (doc, score) in enumerate(ranked, 1):
            yield f"{qid} Q0 {doc} {rank} {score:.9f} {tag}"


Run = dict[str, list[tuple[str, float]]]


def evaluate_retrieval(encoder: Encoder, data: BeirDataset, dims: Sequence[int],
                       templates: Templates) -> tuple[list[dict[str, Any]], dict[int, Run]]:
    """One metrics row per dimension for a BEIR dataset split, and the ranking per dimension."""
    doc_ids = list(data.corpus)
    query_ids = list(data.queries)
    docs = encoder.encode([templates.render_document(d["text"], d["title"]) for d in data.corpus.values()],
                          what=f"{data.name} documents")
    queries = encoder.encode([templates.render_query(data.queries[q]) for q in query_ids],
                             what=f"{data.name} queries")
    rows, runs = [], {}
    for dim in check_dims(dims, docs.shape[1]):
        run = runs[dim] = rank_corpus(truncate(queries, dim), truncate(docs, dim), query_ids, doc_ids)
        metrics = retrieval_metrics(data.qrels, {q: [d for d, _ in r] for q, r in run.items()})
        rows.append({"dataset": data.name, "split": data.split, "dim": dim,
                     "n_queries": len(query_ids), **_rounded(metrics)})
    return rows, runs


def evaluate_sts(encoder: Encoder, pairs: StsPairs, dims: Sequence[int], templates: Templates) -> list[dict[str, Any]]:
    """Spearman and Pearson of cosine similarity against the gold scores, per dimension.

    Both sentences go on the query side: a symmetric task (Gecko §3.1).
    """
    unique = list(dict.fromkeys(pairs.first + pairs.second))
    vectors = encoder.encode([templates.render_query(s) for s in unique], what=f"{pairs.name} sentences")
    position = {s: i for i, s in enumerate(unique)}
    a_idx = [position[s] for s in pairs.first]
    b_idx = [position[s] for s in pairs.second]
    rows = []
    for dim in check_dims(dims, vectors.shape[1]):
        cut = truncate(vectors, dim)
        cosine = np.sum(cut[a_idx] * cut[b_idx], axis=1)
        rows.append({"dataset": pairs.name, "split": pairs.split, "dim": dim, "n_pairs": len(pairs.scores),
                     "spearman": round(spearman(cosine, pairs.scores), 6),
                     "pearson": round(pearson(cosine, pairs.scores), 6)})
    return rows


def evaluate_pairs(encoder: Encoder, records: Iterable[dict[str, Any]], dims: Sequence[int],
                   templates: Templates, name: str = "<stdin>") -> list[dict[str, Any]]:
    """Accuracy@1 and MRR of each training record's positive against its own negatives."""
    records = [r for r in records if r.get("negatives")]
    queries = [templates.render_query(r["query"], r.get("task")) for r in records]
    docs = [templates.render_document(d["text"], d.get("title")) for r in records
            for d in [r["positive"], *r["negatives"]]]
    q_vec = encoder.encode(queries, what="queries")
    d_vec = encoder.encode(docs, what="passages")
    sizes = [1 + len(r["negatives"]) for r in records]
    starts = np.cumsum([0, *sizes])
    rows = []
    for dim in check_dims(dims, q_vec.shape[1] if len(records) else 1):
        q, d = truncate(q_vec, dim), truncate(d_vec, dim)
        scores = [d[starts[i]:starts[i + 1]] @ q[i] for i in range(len(records))]
        metrics = pair_ranking_metrics(np.array([s[0] for s in scores]), [s[1:] for s in scores])
        rows.append({"dataset": name, "split": "records", "dim": dim, "n_queries": len(records),
                     **_rounded(metrics)})
    return rows


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in metrics.items()}


def run_file_path(template: str, model: str, dataset: str, dim: int) -> Path:
    """`--run-file` with its `{model}`, `{dataset}` and `{dim}` slots filled.

    >>> str(run_file_path("runs/{dataset}-{dim}.trec", "m", "scifact", 384))
    'runs/scifact-384.trec'
    """
    safe_model = Path(model).name.replace("/", "_") or "model"
    return Path(template.format(model=safe_model, dataset=dataset, dim=dim))


def check_run_file(template: str, models: int, datasets: int, dims: int) -> None:
    """One TREC run per file: several models, datasets or dims need slots in the path."""
    for count, slot in ((models, "{model}"), (datasets, "{dataset}"), (dims, "{dim}")):
        if count > 1 and slot not in template:
            raise UsageError(f"--run-file: several runs need {slot} in the path, "
                             "for example runs/{model}.{dataset}.{dim}.trec")


# --- command ------------------------------------------------------------------------

import typer  # noqa: E402  (the command layer; the core above does not need it)
from typing import Annotated, Optional  # noqa: E402

from gecko_cli import options as opt  # noqa: E402


def parse_dims(text: str | None) -> list[int]:
    """`--dims "384,128"` -> [384, 128]."""
    from gecko_cli.records import parse_int_list

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
    query_prompt: Annotated[Optional[str], typer.Option("--query-prompt", help="Query template with {text} (and {task}), or a preset: plain, gecko.")] = None,
    doc_prompt: Annotated[Optional[str], typer.Option("--doc-prompt", help="Document template with {text} and {title}, or a preset: plain, gecko.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Task for {task} in the query template (default: search result; sentence similarity for STS).")] = None,
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

      gecko evaluate < train.jsonl
    """
    run_evaluate(dataset or [], split, sts or [], model or [None], parse_dims(dims), run_file, query_prompt,
                 doc_prompt, task, batch_size, not no_cache, input, output, rejects, shard)


def run_evaluate(datasets: list[Path], split: str, sts_files: list[Path], models: list[str | None],
                 dims: list[int], run_file: str | None, query_prompt: str | None, doc_prompt: str | None,
                 task: str | None, batch_size: int, use_cache: bool, input: Path | None, output: Path | None,
                 rejects: Path | None, shard: str | None) -> None:
    """Wire options, data, models and output together (the command's body)."""
    from gecko_cli.data import load_beir, load_sts
    from gecko_cli.embed import display_name, load_encoder
    from gecko_cli.jsonl import JsonlWriter
    from gecko_cli.progress import encode_callback, message
    from gecko_cli.prompting import resolve_templates
    from gecko_cli.records import validate_training

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
                templates = resolve_templates(encoder.name, query_prompt, doc_prompt, task, "sentence similarity")
                rows += _emit(writer, shown, evaluate_sts(encoder, sts_pairs, dims, templates))
            if records:
                templates = resolve_templates(encoder.name, query_prompt, doc_prompt, task)
                rows += _emit(writer, shown, evaluate_pairs(encoder, records, dims, templates,
                                                            str(input) if input else "<stdin>"))
            message(f"gecko evaluate: {shown}: encoded {encoder.encoded:,} texts, "
                    f"{encoder.from_cache:,} served from the cache")
    _print_table(rows)


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
