"""`gecko retrieve`: attach the top-k passages of a corpus to every (task, query) record."""

from __future__ import annotations

from gecko_cli import options as opt
from gecko_cli.progress import encode_callback
from gecko_cli.search.retrieval import RetrievalOptions, run_with_candidates, validate_query_record


def command(
    corpus: opt.CorpusOpt = None,
    top_k: opt.TopKOpt = 20,
    no_seed: opt.NoSeedOpt = False,
    exact: opt.ExactOpt = False,
    ef: opt.EfOpt = 100,
    embedder: opt.EmbedderOpt = None,
    query_prompt: opt.QueryPromptOpt = None,
    doc_prompt: opt.DocPromptOpt = None,
    batch_size: opt.BatchSizeOpt = 32,
    seed: opt.SeedOpt = 0,
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
    options = RetrievalOptions(corpus=corpus, top_k=top_k, with_seed=not no_seed, exact=exact, ef=ef,
                               embedder=embedder, query_prompt=query_prompt, doc_prompt=doc_prompt,
                               batch_size=batch_size, seed=seed, use_cache=not no_cache)
    with opt.stage_io(validate_query_record, input=input, output=output, rejects=rejects, shard=shard) as (source, out):
        counts = run_with_candidates(source, out, options, progress=encode_callback)
    opt.summary("retrieve", counts)
