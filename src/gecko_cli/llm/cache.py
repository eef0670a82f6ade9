"""An SQLite cache of LLM results, so a re-run after a crash or Ctrl-C repeats no call.

Every result is keyed by (backend, model, operation, rendered prompt, parameters). Each
finished batch is committed at once (WAL mode), so `kill -9` loses at most the batch in
flight. API keys never reach this module: backends are keyed by name and model id only.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from gecko_cli.contract.sqlite_store import SqliteStore, Table
from gecko_cli.llm.base import (BaseBackend, Failure, LLMBackend, Message, OnResult, OnScore, Seeds, generate_by_seed,
                                seed_list)


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts.

    >>> cache_key("local", "m", "ql", "prefix", " q") == cache_key("local", "m", "ql", "prefix", " q")
    True
    """
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


LLM_TABLE = Table("llm", ("key", "value"),
                  "CREATE TABLE IF NOT EXISTS llm (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")


class ResultCache:
    """Key -> JSON value, in one SQLite file (or nowhere, when path is None).

    The file is shared by every process (`SqliteStore`: waits while busy, replaces a damaged
    file); an entry that does not decode is a miss, and the recomputed value replaces it.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.hits = 0
        self.misses = 0
        self.store = SqliteStore(path, LLM_TABLE) if path is not None else None

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.store is not None:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                for key, value in self.store.read(f"SELECT key, value FROM llm WHERE key IN ({marks})", chunk):
                    decoded = _decode(value)
                    if decoded is not _UNREADABLE:
                        found[key] = decoded
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        if self.store is None or not items:
            return
        self.store.write_many("INSERT OR REPLACE INTO llm VALUES (?, ?)",
                              [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()])


_UNREADABLE = object()


def _decode(value: object) -> Any:
    """The JSON of one entry, or `_UNREADABLE` (a damaged entry is a miss, never an answer).

    >>> _decode('{"a": 1}'), _decode('{"a": ') is _UNREADABLE, _decode(None) is _UNREADABLE
    ({'a': 1}, True, True)
    """
    if not isinstance(value, str):
        return _UNREADABLE  # this version writes TEXT only
    try:
        return json.loads(value)
    except ValueError:
        return _UNREADABLE


def _cached(cache: ResultCache, keys: list[str], compute: Callable[..., list[Any]], streams: bool = False) -> list[Any]:
    """Values for `keys`: cached ones as they are, the rest computed (by index) and stored.

    With `streams`, `compute(indices, on_result)` reports each value as soon as it exists and it
    is committed at once (an HTTP call finished is never sent again, even after kill -9); else
    the batch is stored when `compute(indices)` returns. A `Failure` is returned, never stored.
    """
    found = cache.get_many(list(dict.fromkeys(keys)))
    todo = [i for i, k in enumerate(keys) if k not in found]
    unique: dict[str, int] = {}
    for i in todo:
        unique.setdefault(keys[i], i)
    if unique:
        order = list(unique)
        if streams:
            values = compute(list(unique.values()), lambda j, value: cache.put_many({order[j]: value}))
        else:
            values = compute(list(unique.values()))
            cache.put_many({k: v for k, v in zip(order, values) if not isinstance(v, Failure)})
        found.update(zip(order, values))
    return [found[k] for k in keys]


class CachedBackend(BaseBackend):
    """Wraps any backend with the result cache; same protocol, same answers. Its own `on_result`
    hears the results of a call when the call returns (cached or computed alike)."""

    per_prompt_seeds = True  # `generate_by_seed` hands the inner backend what it understands

    def __init__(self, inner: LLMBackend, cache: ResultCache):
        super().__init__(inner.meter)
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.model_id = inner.model_id

    def _key(self, op: str, *parts: Any) -> str:
        return cache_key(self.name, self.model_id, op, *parts)

    @staticmethod
    def _compute(method: Callable[..., list[Any]], items: tuple[list[Any], ...], *shared: Any,
                 **kwargs: Any) -> Callable[..., list[Any]]:
        """`compute` for `_cached`: the inner method on the selected `items` (per-call lists), the
        `shared` arguments as they are, and `on_result` when the backend streams results."""
        def compute(idx: list[int], on_result: OnResult | None = None) -> list[Any]:
            picked = [[column[i] for i in idx] for column in items]
            extra = {"on_result": on_result} if on_result is not None else {}
            return method(*picked, *shared, **kwargs, **extra)
        return compute

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float, seed: Seeds,
                      max_new_tokens: int, attempt: int = 0, on_result: OnResult | None = None) -> list[Any]:
        """Each prompt keyed with its own seed (`seed_list`), exactly as a call with that one int
        seed would key it, so entries written one seed per call serve a call with a seed per
        prompt and back. The prompts the cache lacks go to the inner backend in one call (one per
        seed for a backend that takes a single seed)."""
        seeds = seed_list(seed, len(prompts))
        keys = [self._key("generate", p, schema, temperature, s, max_new_tokens, attempt)
                for p, s in zip(prompts, seeds)]

        def compute(idx: list[int], on_result: OnResult | None = None) -> list[Any]:
            return generate_by_seed(self.inner, [prompts[i] for i in idx], schema, [seeds[i] for i in idx],
                                    on_result=on_result, temperature=temperature, max_new_tokens=max_new_tokens,
                                    attempt=attempt)

        return _tell(on_result, _cached(self.cache, keys, compute, self.inner.streams_results))

    def query_likelihood(self, prefixes: list[str], continuations: list[str],
                         on_result: OnResult | None = None) -> list[Any]:
        keys = [self._key("ql", p, c) for p, c in zip(prefixes, continuations)]
        compute = self._compute(self.inner.query_likelihood, (prefixes, continuations))
        return _tell(on_result, _cached(self.cache, keys, compute, self.inner.streams_results))

    def label_logprobs(self, prompts: list[str], labels: list[str], on_result: OnResult | None = None) -> list[Any]:
        keys = [self._key("labels", p, labels) for p in prompts]
        compute = self._compute(self.inner.label_logprobs, (prompts,), labels)
        return _tell(on_result, _cached(self.cache, keys, compute, self.inner.streams_results))

    def score_shared(self, ql_prefixes: list[str], ql_continuations: list[str], rc_prompts: list[str],
                     labels: list[str], on_result: OnScore | None = None) -> tuple[list[Any], list[Any]]:
        """The inner `score_shared` on what the cache lacks (the embedded backend scores QL and RC of
        a passage from one KV cache; others make the two calls). Cached under the same `ql` /
        `labels` keys as those calls; each result is committed as the inner backend reports it."""
        ql_keys = [self._key("ql", p, c) for p, c in zip(ql_prefixes, ql_continuations)]
        rc_keys = [self._key("labels", p, labels) for p in rc_prompts]
        found = self.cache.get_many(list(dict.fromkeys(ql_keys + rc_keys)))
        todo: dict[str, dict[str, int]] = {"ql": {}, "labels": {}}
        for kind, keys in (("ql", ql_keys), ("labels", rc_keys)):
            for i, key in enumerate(keys):
                if key not in found:
                    todo[kind].setdefault(key, i)
        if todo["ql"] or todo["labels"]:
            order = {kind: list(todo[kind]) for kind in todo}
            stored: set[str] = set()

            def commit(kind: str, j: int, value: Any) -> None:
                if not isinstance(value, Failure):
                    self.cache.put_many({order[kind][j]: value})
                    stored.add(order[kind][j])

            ql_idx, rc_idx = list(todo["ql"].values()), list(todo["labels"].values())
            ql_values, rc_values = self.inner.score_shared(
                [ql_prefixes[i] for i in ql_idx], [ql_continuations[i] for i in ql_idx],
                [rc_prompts[i] for i in rc_idx], labels, on_result=commit)
            computed = dict(zip(order["ql"], ql_values)) | dict(zip(order["labels"], rc_values))
            self.cache.put_many({k: v for k, v in computed.items() if k not in stored and not isinstance(v, Failure)})
            found.update(computed)
        ql, rc = [found[k] for k in ql_keys], [found[k] for k in rc_keys]
        if on_result is not None:
            _tell(partial(on_result, "ql"), ql)
            _tell(partial(on_result, "labels"), rc)
        return ql, rc

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        self.inner.close()


def _tell(on_result: OnResult | None, values: list[Any]) -> list[Any]:
    """Report each value that is not a Failure to `on_result` (when given); return the values."""
    if on_result is not None:
        for i, value in enumerate(values):
            if not isinstance(value, Failure):
                on_result(i, value)
    return values
