"""The LLM backend protocol: the four operations every stage needs, nothing more.

A backend is anything with these attributes and methods (embedded model, HTTP server, a test
fake); stages type against `LLMBackend` and never against a concrete class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = dict[str, str]
"""One chat message, e.g. `{"role": "user", "content": "Write a query for ..."}`."""


@dataclass(frozen=True)
class Failure:
    """A call that failed for its own record only (e.g. HTTP 400: prompt too long): returned in
    place of that result, so the stage rejects the one record and the run goes on. A server that
    is down is not a Failure: the backend raises BackendError and the run stops (exit 3)."""

    error: str


@runtime_checkable
class LLMBackend(Protocol):
    """What `generate` and `rerank` need from an LLM.

    `name` identifies the backend kind (`"local"`, `"http"`), `model_id` the exact model; both go
    into cache keys and provenance.
    """

    name: str
    model_id: str

    def generate_json(
        self,
        prompts: list[list[Message]],
        schema: dict,
        *,
        temperature: float,
        seed: int,
        max_new_tokens: int,
    ) -> list[str]:
        """One raw completion per chat prompt; the caller validates it against `schema`.

        [[{"role": "user", "content": "..."}]] -> ['{"task": "...", "query": "..."}']
        """
        ...

    def query_likelihood(self, prefixes: list[str], continuations: list[str]) -> list[float]:
        """Sum of the continuation tokens' log-probs given the prefix, one per pair.

        Prefix and continuation are tokenized separately and their ids concatenated, so a
        score never depends on how the two strings would merge at the boundary.
        (["Passage: ... Query:"], [" why is the sky blue"]) -> [-23.7]
        """
        ...

    def label_logprobs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """Log-prob of each label's first token as the next token (full-vocabulary softmax).

        (["... Relevant? Answer:"], [" Yes", " No"]) -> [{" Yes": -2.1, " No": -0.2}]
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text`, e.g. "hello world" -> 2."""
        ...
