"""`gecko rerank`: score every (query, candidate) with the LLM, fuse, and sort (FRet step 2).

Records without `candidates` are retrieved first (same options as `gecko retrieve`), so
`gecko generate | gecko rerank` works. Candidates come out sorted by fused rank with
`ql`, `rc`, `rank_ql`, `rank_rc`, `rrf` and `rank`; the record gets `positive_is_seed`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import islice
from typing import Annotated, Any, Iterable, Iterator, Optional, Sequence

import typer

from gecko_cli import options as opt
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.records import add_provenance, mark_positive_is_seed, parse_list
from gecko_cli.contract.stream import CoreStats, Rejected
from gecko_cli.llm.base import LLMBackend
from gecko_cli.llm.registry import LLMOptions, open_backend
from gecko_cli.llm.scoring import ScoringPrompts, load_prompt, score_pairs
from gecko_cli.llm.tokens import BudgetExhausted
from gecko_cli.progress import encode_callback, message, ticker
from gecko_cli.search.fusion import fuse_candidates
from gecko_cli.search.retrieval import RetrievalOptions, run_with_candidates, validate_rerank_record


@dataclass(frozen=True, kw_only=True)
class ScoringPlan:
    """What the LLM scores and which score fields are fused into `rank` (RRF with constant `k`).

    `fuse` defaults to the scorers and may include `retriever_score`; a field in `optional` is
    fused only in the records where every candidate has it.
    """

    scorers: Sequence[str] = ("ql", "rc")
    fuse: Sequence[str] | None = None
    optional: Sequence[str] = ()
    ql_norm: str = "sum"
    k: float = 0.0


def rerank(records: Iterable[dict[str, Any]], backend: LLMBackend, prompts: ScoringPrompts, *,
           plan: ScoringPlan = ScoringPlan(), window: int = 1024,
           stats: CoreStats | None = None) -> Iterator[dict[str, Any] | Rejected]:
    """Pure core over a backend: records in, records with scored, fused, sorted candidates out.

    Pairs of a whole window go to the backend together, in one `score_shared` call for both
    scorers: on the embedded backend a passage that is a candidate for several queries of the
    window runs its prefix once for all of them, QL and RC. Order follows input. Bigger windows share
    more, since a passage is a candidate for many queries over the whole input (tokens per pair by
    window: benchmarks/results/rerank_speed.json). A record with a pair the LLM could not score (a
    per-call failure), or a candidate without a field to fuse, is rejected whole. When the token
    budget would be exceeded, the run ends before the window in hand and `stats.stopped` says why.
    """
    scorers, fields = list(plan.scorers), list(plan.fuse or plan.scorers)
    it = iter(records)
    while chunk := list(islice(it, window)):
        pairs = [(r["query"], c) for r in chunk for c in r["candidates"]]
        try:
            scores = iter(score_pairs(backend, prompts, pairs, scorers, plan.ql_norm))
        except BudgetExhausted as exc:
            if stats is not None:
                stats.stopped = f"--max-tokens-budget: {exc}"
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
            used = [f for f in fields if f not in plan.optional or has(f)]
            missing = next((f"candidate {c.get('id')!r} has no {f!r} to fuse" for c in record["candidates"]
                            for f in used if not isinstance(c.get(f), (int, float))), None)
            if missing:
                yield Rejected(record, missing)
                continue
            record["candidates"] = fuse_candidates(record["candidates"], used, plan.k)
            mark_positive_is_seed(record)
            yield add_provenance(record, "rerank", llm=backend.name, model=backend.model_id, scorers=list(scorers),
                                 fused=used, ql_norm=plan.ql_norm, k=plan.k, prompt_hash=prompt_hash(prompts))


# On SciFact train claims (the dev set), the embedded SmolLM2-135M's RC ranks the retriever's top 20
# worse than chance, while QL fused with the retriever's score is best; the retriever is listed
# first, so it settles exact fused ties (benchmarks/results/rerank_quality.json).
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
    default = scorers is None and fuse is None and not is_http
    names = parse_list(scorers) if scorers is not None else (list(EMBEDDED_SCORERS) if not is_http else ["ql", "rc"])
    if not names or set(names) - {"ql", "rc"}:
        raise UsageError("--scorers takes ql and/or rc")
    if default:
        return names, list(EMBEDDED_FUSE), ["retriever_score"]
    fields = parse_list(fuse) if fuse is not None else list(names)
    if not fields or set(fields) - set(names) - {"retriever_score"}:
        raise UsageError(f"--fuse takes fields among {', '.join(names + ['retriever_score'])} (the --scorers and retriever_score)")
    return names, fields, []


def prompt_hash(prompts: ScoringPrompts) -> str:
    """Short hash of the scoring prompts, for provenance."""
    return hashlib.sha256((prompts.ql + "\0" + prompts.rc).encode()).hexdigest()[:12]


# --- command ------------------------------------------------------------------------


def command(
    scorers: Annotated[Optional[str], typer.Option("--scorers", help="Comma-separated: ql (query likelihood), rc (relevance classification) (default: ql,rc with --llm, as in the paper; ql on the embedded LLM, whose RC is worse than chance).")] = None,
    fuse: Annotated[Optional[str], typer.Option("--fuse", help="Comma-separated score fields whose ranks are fused (RRF) into `rank`: any of the scorers and retriever_score (default: the scorers; with neither option on the embedded LLM, retriever_score,ql, the retriever's score only where every candidate has one; the first field settles exact fused ties).")] = None,
    ql_norm: Annotated[str, typer.Option("--ql-norm", help="sum (the paper) or mean (per query token).")] = "sum",
    k: Annotated[float, typer.Option("--k", help="RRF constant (Gecko: 0).")] = 0.0,
    window: Annotated[int, typer.Option("--window", min=1, help="Records scored together: a passage's prompt prefix runs once for all queries of the window that have it as a candidate (bigger: more sharing, more memory, about 0.4 GB at 1024).")] = 1024,
    ql_prompt: Annotated[Optional[str], typer.Option("--ql-prompt", help="QL template file with {title} {text} {query} (default: shipped)."), opt.PROMPT_FILE] = None,
    rc_prompt: Annotated[Optional[str], typer.Option("--rc-prompt", help="RC template file with {title} {text} {query} (default: shipped)."), opt.PROMPT_FILE] = None,
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
    device: opt.DeviceOpt = None,
    llm_dtype: opt.LLMDtypeOpt = "float32",
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
    options = LLMOptions(llm=llm, model=model, api_key_env=api_key_env, concurrency=concurrency,
                         max_retries=max_retries, timeout=timeout, max_tokens_budget=max_tokens_budget,
                         use_cache=not no_cache, device=device, dtype=llm_dtype)
    names, fields, optional = scoring_plan(scorers, fuse, not options.is_embedded)
    if ql_norm not in ("sum", "mean"):
        raise UsageError("--ql-norm takes sum or mean")
    plan = ScoringPlan(scorers=names, fuse=fields, optional=optional, ql_norm=ql_norm, k=k)
    prompts = ScoringPrompts(load_prompt(ql_prompt or "query_likelihood"), load_prompt(rc_prompt or "relevance"))
    backend = open_backend(options, report=lambda line: message(f"gecko rerank: {line}"))
    message(f"gecko rerank: scoring {','.join(names)}; rank = RRF (k={k:g}) of {' + '.join(fields)}"
            + (" (the embedded LLM's default; --scorers ql,rc for the paper's QL + RC)" if optional else ""))
    retrieval = RetrievalOptions(corpus=corpus, top_k=top_k, with_seed=not no_seed, exact=exact, ef=ef,
                                 embedder=embedder, query_prompt=query_prompt, doc_prompt=doc_prompt, seed=seed,
                                 use_cache=not no_cache, only_missing=True)
    stats = CoreStats()
    try:
        with opt.stage_io(validate_rerank_record, input=input, output=output, rejects=rejects, shard=shard,
                          resume=resume) as (source, out), ticker("gecko rerank: records") as tick:
            counts = run_with_candidates(
                source, out, retrieval, progress=encode_callback, on_record=tick,
                warn=lambda line: message(f"gecko rerank: {line}"),
                then=lambda recs: rerank(recs, backend, prompts, plan=plan, window=window, stats=stats))
    finally:
        backend.close()
    counts.extra.update({"scored pairs computed": backend.cache.misses})
    opt.llm_counts(counts, backend)
    counts.stopped = stats.stopped
    opt.summary("rerank", counts)
