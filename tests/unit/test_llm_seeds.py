"""One seed per prompt in `generate_json`: the result cache keys each prompt with its own seed
(the same key a one-seed call gives it), and a backend that takes one seed per call still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from gecko_cli.llm.base import BaseBackend, Failure, generate_by_seed, seed_list
from gecko_cli.llm.cache import CachedBackend, ResultCache, cache_key

SCHEMA = {"type": "object"}


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class _Seeded(BaseBackend):
    """Answers "<prompt>@<seed + attempt>"; records each call's prompts and seeds."""

    name, model_id = "fake", "fake-1"
    per_prompt_seeds = True

    def __init__(self, streams: bool = False) -> None:
        super().__init__()
        self.streams_results = streams
        self.calls: list[tuple[list[str], list[int]]] = []

    def generate_json(self, prompts, schema, *, temperature, seed, max_new_tokens, attempt=0, on_result=None):
        seeds = seed_list(seed, len(prompts))
        self.calls.append(([p[-1]["content"] for p in prompts], seeds))
        out = [Failure("refused") if "bad" in p[-1]["content"] else f"{p[-1]['content']}@{s + attempt}"
               for p, s in zip(prompts, seeds)]
        for i, value in enumerate(out):
            if on_result is not None and not isinstance(value, Failure):
                on_result(i, value)
        return out


class _OneSeed(_Seeded):
    """A backend written before per-prompt seeds: `seed + attempt` is int arithmetic."""

    per_prompt_seeds = False

    def generate_json(self, prompts, schema, *, temperature, seed, max_new_tokens, attempt=0, on_result=None):
        assert isinstance(seed, int)
        return super().generate_json(prompts, schema, temperature=temperature, seed=seed,
                                     max_new_tokens=max_new_tokens, attempt=attempt, on_result=on_result)


def cached(tmp_path: Path, inner: _Seeded) -> CachedBackend:
    return CachedBackend(inner, ResultCache(tmp_path / "llm.sqlite"))


def test_seed_list() -> None:
    assert seed_list(3, 2) == [3, 3] and seed_list([4, 5], 2) == [4, 5]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        seed_list([1, 2], 3)


def test_an_int_call_and_a_list_call_share_entries(tmp_path: Path) -> None:
    inner = _Seeded()
    llm = cached(tmp_path, inner)
    assert llm.generate_json([chat("a"), chat("b")], SCHEMA, temperature=0.7, seed=5, max_new_tokens=8) == \
        ["a@5", "b@5"]
    out = llm.generate_json([chat("a"), chat("b"), chat("a"), chat("c")], SCHEMA, temperature=0.7,
                            seed=[5, 5, 6, 5], max_new_tokens=8)
    assert out == ["a@5", "b@5", "a@6", "c@5"]
    assert inner.calls[-1] == (["a", "c"], [6, 5])  # only what the cache lacked, each with its own seed
    assert (llm.cache.hits, llm.cache.misses) == (2, 4)
    # and back: entries a list call wrote serve a one-seed call
    assert llm.generate_json([chat("a"), chat("c")], SCHEMA, temperature=0.7, seed=[6, 5], max_new_tokens=8) == \
        ["a@6", "c@5"]
    assert llm.generate_json([chat("a")], SCHEMA, temperature=0.7, seed=6, max_new_tokens=8) == ["a@6"]
    assert len(inner.calls) == 2 and llm.cache.hits == 5


def test_a_prompts_key_is_the_one_a_single_seed_call_always_gave_it(tmp_path: Path) -> None:
    llm = cached(tmp_path, _Seeded())
    llm.generate_json([chat("a"), chat("b")], SCHEMA, temperature=0.7, seed=[3, 4], max_new_tokens=8, attempt=1)
    # the key as the cache built it before seeds could differ per prompt: (..., seed, max_new_tokens, attempt)
    old = [cache_key("fake", "fake-1", "generate", chat(text), SCHEMA, 0.7, seed, 8, 1) for text, seed in
           (("a", 3), ("b", 4))]
    assert llm.cache.get_many(old) == {old[0]: "a@4", old[1]: "b@5"}  # attempt 1 samples with seed + 1
    assert llm.cache.get_many([cache_key("fake", "fake-1", "generate", chat("a"), SCHEMA, 0.7, 4, 8, 1)]) == {}


def test_the_attempt_still_misses(tmp_path: Path) -> None:
    inner = _Seeded()
    llm = cached(tmp_path, inner)
    llm.generate_json([chat("a")], SCHEMA, temperature=0.7, seed=[3], max_new_tokens=8)
    assert llm.generate_json([chat("a")], SCHEMA, temperature=0.7, seed=[3], max_new_tokens=8, attempt=1) == ["a@4"]
    assert len(inner.calls) == 2


def test_a_one_seed_backend_gets_one_call_per_seed_and_streams_to_the_right_keys(tmp_path: Path) -> None:
    inner = _OneSeed(streams=True)
    llm = cached(tmp_path, inner)
    heard: list[tuple[int, str]] = []
    out = llm.generate_json([chat("a"), chat("b"), chat("bad"), chat("c")], SCHEMA, temperature=0.7,
                            seed=[1, 2, 1, 2], max_new_tokens=8, on_result=lambda i, v: heard.append((i, v)))
    assert out[:2] == ["a@1", "b@2"] and isinstance(out[2], Failure) and out[3] == "c@2"
    assert inner.calls == [(["a", "bad"], [1, 1]), (["b", "c"], [2, 2])]
    assert sorted(heard) == [(0, "a@1"), (1, "b@2"), (3, "c@2")]
    again = cached(tmp_path, _OneSeed())  # the streamed results were committed under each prompt's key
    assert again.generate_json([chat("c"), chat("a")], SCHEMA, temperature=0.7, seed=[2, 1], max_new_tokens=8) == \
        ["c@2", "a@1"]
    assert again.inner.calls == []


def test_generate_by_seed_passes_a_list_through_to_a_backend_that_takes_one() -> None:
    inner = _Seeded()
    out = generate_by_seed(inner, [chat("a"), chat("b")], SCHEMA, [7, 8], temperature=0.7, max_new_tokens=8)
    assert out == ["a@7", "b@8"] and inner.calls == [(["a", "b"], [7, 8])]
