"""`gecko retrieve`: attach the top-k passages of a corpus to every (task, query) record."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Optional

import typer

from gecko_cli import options as opt
from gecko_cli.records import add_provenance

QUERY_PRESET = "gecko"  # the paper embeds `task: {task} | query: {query}`


def with_provenance(records: Iterable[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
    """Append the retrieve entry to each record's `_provenance`."""
    for record in records:
        yield add_provenance(record, "retrieve", **params)


# Options shared with `gecko rerank`, which retrieves first when records have no candidates.
CorpusOpt = Annotated[Optional[Path], typer.Option("--corpus", help="Passages JSONL or BEIR corpus.jsonl to search (default: the seed passages of the input).")]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Candidates per query (the paper's best: 20).")]
NoSeedOpt = Annotated[bool, typer.Option("--no-seed", help="Do not add the seed passage when the search missed it.")]
ExactOpt = Annotated[bool, typer.Option("--exact", help="Brute-force cosine search instead of the hnswlib index.")]
EfOpt = Annotated[int, typer.Option("--ef", min=1, help="hnswlib search breadth (higher: better recall, slower).")]
QueryPromptOpt = Annotated[str, typer.Option("--query-prompt", help="Query template ({text}, {task}) or preset: gecko, plain.")]
DocPromptOpt = Annotated[str, typer.Option("--doc-prompt", help="Passage template ({text}, {title}) or preset: plain, gecko.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the index build.")]


def command(
    corpus: CorpusOpt = None,
    top_k: TopKOpt = 20,
    no_seed: NoSeedOpt = False,
    exact: ExactOpt = False,
    ef: EfOpt = 100,
    embedder: opt.EmbedderOpt = None,
    query_prompt: QueryPromptOpt = QUERY_PRESET,
    doc_prompt: DocPromptOpt = "plain",
    batch_size: opt.BatchSizeOpt = 32,
    seed: SeedOpt = 0,
    no_cache: opt.NoCacheOpt = False,
    input: opt.InputOpt = None,
    output: opt.OutputOpt = None,
    rejects: opt.RejectsOpt = None,
    shard: opt.ShardOpt = None,
) -> None:
    """Add `candidates` (top-k passages with `retriever_score`) to records that have a `query`.

    Examples:

      gecko generate < examples/passages.jsonl | gecko retrieve --top-k 20 > candidates.jsonl

      gecko retrieve --corpus examples/data/scifact/corpus.jsonl --input tests/data/queries.jsonl
    """
    from gecko_cli.retrieval import validate_query_record

    with opt.stage_io(validate_query_record, input, output, rejects, shard) as (source, out):
        counts = run_with_candidates(source, out, "retrieve", corpus, top_k, not no_seed, exact, ef, embedder,
                                     query_prompt, doc_prompt, batch_size, seed, not no_cache,
                                     lambda recs: recs)
    opt.summary("retrieve", counts)


def run_with_candidates(source, out, stage: str, corpus: Path | None, top_k: int, with_seed: bool, exact: bool,
                        ef: int, embedder: str | None, query_prompt: str, doc_prompt: str, batch_size: int,
                        seed: int, use_cache: bool, then):
    """Retrieve candidates for every record that lacks them, then run `then` over all records."""
    from gecko_cli.embed import cache_dir, display_name, load_encoder
    from gecko_cli.errors import UsageError
    from gecko_cli.progress import encode_callback
    from gecko_cli.prompting import resolve_templates
    from gecko_cli.retrieval import build_searcher, read_corpus, retrieve, seeds_of
    from gecko_cli.stream import run_stage

    encoder = load_encoder(embedder, use_cache, batch_size, progress=encode_callback)
    templates = resolve_templates(encoder.name, query_prompt, doc_prompt, None)
    records: Any = source.records()
    if corpus is not None:
        passages = read_corpus(corpus)
    else:
        records = list(records)  # the corpus is the input's own seeds: read everything first
        passages = seeds_of(records)
        if not passages.ids and any("candidates" not in r for r in records):
            raise UsageError("no corpus: give --corpus FILE, or records with a \"seed\" passage")
    searcher = None
    if passages.ids:
        searcher, _ = build_searcher(encoder, passages, templates, cache_dir() / "indexes" if use_cache else None,
                                     exact, ef, seed)
    params = {"embedder": display_name(encoder.name), "top_k": top_k, "exact": exact, "ef": ef,
              "query_template": templates.query}

    def core(recs):
        todo = (r for r in recs)
        retrieved = retrieve(todo, encoder, passages, searcher, templates, top_k, with_seed) if searcher else todo
        return then(with_provenance(retrieved, **params))

    return run_stage(core, source, out, records=records)
