"""An SQLite cache of LLM results, so a re-run after a crash or Ctrl-C repeats no call.

Every result is keyed by (backend, model, operation, rendered prompt, parameters). Each
finished batch is committed at once (WAL mode), so `kill -9` loses at most the batch in
flight. API keys never reach this module: backends are keyed by name and model id only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from gecko_cli.llm.base import LLMBackend, Message


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts.

    >>> cache_key("local", "m", "ql", "prefix", " q") == cache_key("local", "m", "ql", "prefix", " q")
    True
    """
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResultCache:
    """Key -> JSON value, in one SQLite file (or nowhere, when path is None)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self.db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS llm (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.db is not None:
            with self._lock:
                for start in range(0, len(keys), 500):
                    chunk = list(keys[start:start + 500])
                    marks = ",".join("?" * len(chunk))
                    for key, value in self.db.execute(f"SELECT key, value FROM llm WHERE key IN ({marks})", chunk):
                        found[key] = json.loads(value)
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        if self.db is None or not items:
            return
        with self._lock, self.db:
            self.db.executemany("INSERT OR REPLACE INTO llm VALUES (?, ?)",
                                [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()])


def _cached(cache: ResultCache, keys: list[str], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
    """Values for `keys`: cached ones as they are, the rest computed (by index) and stored."""
    found = cache.get_many(list(dict.fromkeys(keys)))
    todo = [i for i, k in enumerate(keys) if k not in found]
    unique: dict[str, int] = {}
    for i in todo:
        unique.setdefault(keys[i], i)
    if unique:
        values = compute(list(unique.values()))
        fresh = dict(zip(unique, values))
        cache.put_many(fresh)
        found.update(fresh)
    return [found[k] for k in keys]


class CachedBackend:
    """Wraps any backend with the result cache; same protocol, same answers."""

    def __init__(self, inner: LLMBackend, cache: ResultCache):
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.model_id = inner.model_id

    def _key(self, op: str, *parts: Any) -> str:
        return cache_key(self.name, self.model_id, op, *parts)

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float, seed: int,
                      max_new_tokens: int, attempt: int = 0) -> list[str]:
        keys = [self._key("generate", p, schema, temperature, seed, max_new_tokens, attempt) for p in prompts]
        return _cached(self.cache, keys, lambda idx: self.inner.generate_json(
            [prompts[i] for i in idx], schema, temperature=temperature, seed=seed + attempt, max_new_tokens=max_new_tokens))

    def query_likelihood(self, prefixes: list[str], continuations: list[str]) -> list[float]:
        keys = [self._key("ql", p, c) for p, c in zip(prefixes, continuations)]
        return _cached(self.cache, keys, lambda idx: self.inner.query_likelihood(
            [prefixes[i] for i in idx], [continuations[i] for i in idx]))

    def label_logprobs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        keys = [self._key("labels", p, labels) for p in prompts]
        return _cached(self.cache, keys, lambda idx: self.inner.label_logprobs([prompts[i] for i in idx], labels))

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def open_embedded(use_cache: bool = True) -> CachedBackend:
    """The embedded LLM (SmolLM2-135M) behind the result cache under GECKO_CACHE_DIR."""
    from transformers.utils import logging as hf_logging

    from gecko_cli.embed import cache_dir
    from gecko_cli.llm.local import LocalBackend

    hf_logging.disable_progress_bar()  # the one-time GGUF conversion bar is noise on stderr
    return CachedBackend(LocalBackend(), ResultCache(cache_dir() / "llm.sqlite" if use_cache else None))
