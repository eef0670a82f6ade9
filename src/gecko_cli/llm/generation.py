"""What `gecko generate` asks the LLM, and how it judges the answer (pure; `scoring.py` is rerank's).

The prompt is a one-shot chat template (`prompts/generate.txt`) that asks for `{"query": ...}`:
SmolLM2-135M copies the passage when asked zero-shot, and asked for a bare query it often talks
about the prompt instead ("Here is a passage that ..."); benchmarks/generate_prompts.py measured
the variants. The task type of each example is drawn uniformly (Gecko §3.1: uniform beat
weighted) by a generator seeded with (seed, passage id), so shards and re-runs agree. An output
is parsed (`parse_query`) and checked (`degenerate`) before it becomes a record.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from importlib import resources
from dataclasses import dataclass
from typing import Any

from gecko_cli.llm.base import Message, answer_prefix
from gecko_cli.llm.scoring import fill_passage

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


def default_task_types() -> list[TaskType]:
    """The four task types of the paper, shipped in `prompts/task_types.json`."""
    return parse_task_types(json.loads(resources.files("gecko_cli.llm.prompts").joinpath("task_types.json")
                                       .read_text(encoding="utf-8")))


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

    The last message is the user's, optionally followed by the start of the answer (an
    assistant message the model continues, e.g. `{"query": "`).
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
    body, _ = answer_prefix(messages)
    if not body or body[-1]["role"] != "user":
        raise ValueError("a generate template must end with a '### user' message "
                         "(optionally followed by the start of the answer in '### assistant')")
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]


def render(template: list[Message], passage: dict[str, Any], task: TaskType) -> list[Message]:
    """Fill {task}, {query_kind}, {title}, {text} in the template's last user message."""
    shown = passage["text"].split()
    text = " ".join(shown[:PASSAGE_WORDS]) + (" ..." if len(shown) > PASSAGE_WORDS else "")
    body, head = answer_prefix(template)
    last = body[-1]["content"].replace("{task}", task.task).replace("{query_kind}", task.query or task.task)
    answer = [{"role": "assistant", "content": head}] if head else []
    return [*body[:-1], {"role": "user", "content": fill_passage(last, passage.get("title"), text)}, *answer]


def example_queries(template: list[Message]) -> frozenset[str]:
    """The few-shot answers of a template (assistant messages before the last user message):
    lower-case words, no punctuation."""
    body, _ = answer_prefix(template)
    return frozenset(" ".join(words(parse_query(m["content"]) or "")) for m in body if m["role"] == "assistant")


def template_hash(template: list[Message]) -> str:
    """Short hash of the chat template, for provenance."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


# --- checking an output -------------------------------------------------------------------


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


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: "Why, SKY?" -> ["why", "sky"]."""
    return _WORD.findall(text.lower())


def copy_share(query: str, passage: str, n: int = COPY_NGRAM) -> float:
    """Share of the query's word n-grams (lower-cased, punctuation dropped) found in the passage (n >= 1).

    ("the sky is blue today", "We know the sky is blue today.") -> 1.0;  a query under n words -> 0.0

    Every LLM answer is checked against its passage, on the thread that keeps the requests coming,
    so this avoids building the passage's set of n-grams (~200 tuples per call): an n-gram one of
    whose words is not even a substring of the passage cannot occur in it, which usually settles
    the answer at once; the others are looked up as " w1 ... wn " in the passage's words joined by
    single spaces (words hold no spaces, so a match is exactly n consecutive passage words).
    tests/unit/test_copy_share.py checks it against the n-gram set on random and real cases.
    """
    q = words(query)
    grams = len(q) - n + 1
    if grams <= 0:
        return 0.0
    low = passage.lower()
    absent = {w for w in q if w not in low}
    live = [i for i in range(grams) if absent.isdisjoint(q[i:i + n])]
    if not live:
        return 0.0
    text = f" {' '.join(_WORD.findall(low))} "
    return sum(f" {' '.join(q[i:i + n])} " in text for i in live) / grams


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
    tokens = words(query)
    if not tokens:
        return "empty query"
    if len(query.split()) > MAX_WORDS:
        return f"query too long ({len(query.split())} words > {MAX_WORDS})"
    if len(tokens) >= 8 and len(set(tokens)) < len(tokens) / 2:
        return "query repeats itself"
    if " ".join(tokens) in examples or any(copy_share(query, e) > COPY_SHARE for e in examples):
        return "query repeats the prompt's example"
    source = f"{passage.get('title') or ''}\n{passage['text']}"
    if copy_share(query, source) > COPY_SHARE:
        return f"query copies the passage (over {COPY_SHARE:.0%} of its word {COPY_NGRAM}-grams)"
    if META.search(query) and not META.search(source):
        return "output talks about the prompt, not a query"
    return None
