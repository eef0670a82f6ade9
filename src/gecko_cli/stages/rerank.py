"""`gecko rerank`: score every (query, candidate) with the LLM, fuse, and sort (FRet step 2).

Records without `candidates` are retrieved first (same options as `gecko retrieve`), so
`gecko generate | gecko rerank` works. Candidates come out sorted by fused rank with
`ql`, `rc`, `rank_ql`, `rank_rc`, `rrf` and `rank`; the record gets `positive_is_seed`.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

from gecko_cli.search.fusion import fuse_candidates
from gecko_cli.llm.base import LLMBackend
from gecko_cli.llm.tokens import BudgetExhausted
from gecko_cli.contract.records import add_provenance
from gecko_cli.llm.scoring import ScoringPrompts, score_pairs
from gecko_cli.contract.stream import Rejected


def rerank(records: Iterable[dict[str, Any]], backend: LLMBackend, prompts: ScoringPrompts,
           scorers: Sequence[str] = ("ql", "rc"), ql_norm: str = "sum", k: float = 0.0,
           window: int = 1024, stopped: list[str] | None = None,
           fuse: Sequence[str] | None = None, optional: Sequence[str] = ()) -> Iterator[dict[str, Any] | Rejected]:
    """Pure core over a backend: records in, records with scored, fused, sorted candidates out.

    Pairs of a whole window go to the backend together, in one call for both scorers when the
    backend has `score_shared`: a passage that is a candidate for several queries of the window
    runs its prefix once for all of them, QL and RC. Order follows input. Bigger windows share
    more: on SciFact FRet (a passage is a candidate for ~20 queries over the whole input) a window
    of 32 records shares a passage among 1.1 pairs on average, 256 among 1.8, 1024 among 4.2, and
    the embedded model needs 325, 217, 112 tokens per pair (naive: 940; benchmarks/bench_rerank.py).
    `fuse` names the score fields whose ranks are fused (default: the scorers); it may include
    `retriever_score`. A field in `optional` is fused only in records where every candidate has
    it. A record with a pair the LLM could not score (a per-call failure), or a candidate without
    a field to fuse, is rejected whole.
    When the token budget would be exceeded, the run ends before the window in hand and
    the reason is appended to `stopped`.
    """
    fields = list(fuse or scorers)
    it = iter(records)
    while chunk := list(islice(it, window)):
        pairs = [(r["query"], c) for r in chunk for c in r["candidates"]]
        try:
            scores = iter(score_pairs(backend, prompts, pairs, scorers, ql_norm))
        except BudgetExhausted as exc:
            if stopped is not None:
                stopped.append(f"--max-tokens-budget: {exc}")
            return
        for record in chunk:
            got = [next(scores) for _ in record["candidates"]]
            errors = [s["error"] for s in got if "error" in s]
            if errors:
                yield Rejected(record, f"LLM call failed: {errors[0]}")
                continue
            for candidate, score in zip(record["candidates"], got):
                candidate.update(score)
            has = lambda f: all(isinstance(c.get(f), (int, float)) for c in record["candidates"])  # noqa: E731
            used = [f for f in fields if f not in optional or has(f)]
            missing = next((f"candidate {c.get('id')!r} has no {f!r} to fuse" for c in record["candidates"]
                            for f in used if not isinstance(c.get(f), (int, float))), None)
            if missing:
                yield Rejected(record, missing)
                continue
            record["candidates"] = fuse_candidates(record["candidates"], used, k)
            seed = record.get("seed")
            if isinstance(seed, dict) and record["candidates"]:
                record["positive_is_seed"] = str(record["candidates"][0]["id"]) == str(seed.get("id", seed.get("_id")))
            yield add_provenance(record, "rerank", llm=backend.name, model=backend.model_id, scorers=list(scorers),
                                 fused=used, ql_norm=ql_norm, k=k, prompt_hash=prompt_hash(prompts))


# On 200 SciFact train claims (the dev set), the embedded SmolLM2-135M's RC ranks the retriever's
# top 20 worse than chance (nDCG@10 16.4 vs the retriever's 67.5), while QL fused with the
# retriever's score is best (QL alone 70.4, QL+RC 57.5). The retriever is listed first, so it
# settles exact fused ties (6% of the top spots): 72.78 and 63.0% relevant top-1 vs 72.23 and
# 61.5% with QL settling them (benchmarks/results/rerank_quality.json).
EMBEDDED_SCORERS, EMBEDDED_FUSE = ["ql"], ["retriever_score", "ql"]


def scoring_plan(scorers: str | None, fuse: str | None, is_http: bool) -> tuple[list[str], list[str], list[str]]:
    """(scorers to compute, fields to fuse, fields fused only where present) from the options.

    >>> scoring_plan(None, None, is_http=True)
    (['ql', 'rc'], ['ql', 'rc'], [])
    >>> scoring_plan(None, None, is_http=False)
    (['ql'], ['retriever_score', 'ql'], ['retriever_score'])
    >>> scoring_plan("ql,rc", None, is_http=False)
    (['ql', 'rc'], ['ql', 'rc'], [])
    >>> scoring_plan("rc", "rc,retriever_score", is_http=False)
    (['rc'], ['rc', 'retriever_score'], [])
    """
    from gecko_cli.contract.errors import UsageError

    split = lambda text: [s.strip() for s in text.split(",") if s.strip()]  # noqa: E731
    default = scorers is None and fuse is None and not is_http
    names = split(scorers) if scorers is not None else (list(EMBEDDED_SCORERS) if not is_http else ["ql", "rc"])
    if not names or set(names) - {"ql", "rc"}:
        raise UsageError("--scorers takes ql and/or rc")
    if default:
        return names, list(EMBEDDED_FUSE), ["retriever_score"]
    fields = split(fuse) if fuse is not None else list(names)
    if not fields or set(fields) - set(names) - {"retriever_score"}:
        raise UsageError(f"--fuse takes fields among {', '.join(names + ['retriever_score'])} (the --scorers and retriever_score)")
    return names, fields, []


def prompt_hash(prompts: ScoringPrompts) -> str:
    """Short hash of the scoring prompts, for provenance."""
    import hashlib

    return hashlib.sha256((prompts.ql + "\0" + prompts.rc).encode()).hexdigest()[:12]


# --- command ------------------------------------------------------------------------

from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

from gecko_cli import options as opt  # noqa: E402


def command(
    scorers: Annotated[Optional[str], typer.Option("--scorers", help="Comma-separated: ql (query likelihood), rc (relevance classification) (default: ql,rc with --llm, as in the paper; ql on the embedded LLM, whose RC is worse than chance).")] = None,
    fuse: Annotated[Optional[str], typer.Option("--fuse", help="Comma-separated score fields whose ranks are fused (RRF) into `rank`: any of the scorers and retriever_score (default: the scorers; with neither option on the embedded LLM, retriever_score,ql, the retriever's score only where every candidate has one; the first field settles exact fused ties).")] = None,
    ql_norm: Annotated[str, typer.Option("--ql-norm", help="sum (the paper) or mean (per query token).")] = "sum",
    k: Annotated[float, typer.Option("--k", help="RRF constant (Gecko: 0).")] = 0.0,
    window: Annotated[int, typer.Option("--window", min=1, help="Records scored together: a passage's prompt prefix runs once for all queries of the window that have it as a candidate (bigger: more sharing, more memory, about 0.4 GB at 1024).")] = 1024,
    ql_prompt: Annotated[Optional[str], typer.Option("--ql-prompt", help="QL template file with {title} {text} {query} (default: shipped).")] = None,
    rc_prompt: Annotated[Optional[str], typer.Option("--rc-prompt", help="RC template file with {title} {text} {query} (default: shipped).")] = None,
    corpus: opt.CorpusOpt = None,
    top_k: opt.TopKOpt = 20,
    no_seed: opt.NoSeedOpt = False,
    exact: opt.ExactOpt = False,
    ef: opt.EfOpt = 100,
    embedder: opt.EmbedderOpt = None,
    query_prompt: opt.QueryPromptOpt = None,
    doc_prompt: opt.DocPromptOpt = None,
    seed: opt.SeedOpt = 0,
    llm: opt.LLMOpt = None,
    model: opt.ModelOpt = None,
    api_key_env: opt.ApiKeyEnvOpt = "OPENAI_API_KEY",
    concurrency: opt.ConcurrencyOpt = 16,
    max_retries: opt.MaxRetriesOpt = 6,
    timeout: opt.TimeoutOpt = 120.0,
    max_tokens_budget: opt.BudgetOpt = None,
    no_cache: opt.NoCacheOpt = False,
    input: opt.InputOpt = None,
    output: opt.OutputOpt = None,
    rejects: opt.RejectsOpt = None,
    shard: opt.ShardOpt = None,
    resume: opt.ResumeOutputOpt = False,
) -> None:
    """Score candidates with the LLM (query likelihood, relevance), fuse the ranks, sort.

    Examples:

      gecko generate < examples/passages.jsonl | gecko rerank > fret.jsonl

      gecko rerank --scorers ql,rc --top-k 10 --corpus examples/data/scifact/corpus.jsonl < examples/queries.jsonl

      gecko rerank -i queries.jsonl -o fret.jsonl --rejects rerank-rejects.jsonl --resume
    """
    from gecko_cli.contract.errors import UsageError
    from gecko_cli.llm.registry import LLMOptions, open_backend
    from gecko_cli.progress import encode_callback, message, ticker
    from gecko_cli.search.retrieval import RetrievalOptions, run_with_candidates, validate_rerank_record
    from gecko_cli.llm.scoring import load_prompt

    options = LLMOptions(llm, model, api_key_env, concurrency, max_retries, timeout, max_tokens_budget, not no_cache)
    names, fields, optional = scoring_plan(scorers, fuse, options.is_http)
    if ql_norm not in ("sum", "mean"):
        raise UsageError("--ql-norm takes sum or mean")
    prompts = ScoringPrompts(load_prompt(ql_prompt or "query_likelihood"), load_prompt(rc_prompt or "relevance"))
    backend = open_backend(options, report=lambda line: message(f"gecko rerank: {line}"))
    message(f"gecko rerank: scoring {','.join(names)}; rank = RRF (k={k:g}) of {' + '.join(fields)}"
            + (" (the embedded LLM's default; --scorers ql,rc for the paper's QL + RC)" if optional else ""))
    retrieval = RetrievalOptions(corpus, top_k, not no_seed, exact, ef, embedder, query_prompt, doc_prompt,
                                 seed=seed, use_cache=not no_cache, only_missing=True)
    stopped: list[str] = []
    try:
        with opt.stage_io(validate_rerank_record, input, output, rejects, shard, resume=resume) as (source, out):
            with ticker("gecko rerank: records") as tick:
                counts = run_with_candidates(source, out, retrieval, encode_callback, then=lambda recs: rerank(
                    recs, backend, prompts, names, ql_norm, k, window, stopped, fields, optional), warn=message, on_record=tick)
    finally:
        backend.close()
    counts.extra.update({"scored pairs computed": backend.cache.misses})
    opt.llm_counts(counts, backend)
    counts.stopped = stopped[0] if stopped else None
    opt.summary("rerank", counts)
