"""Fault plans for the fake OpenAI server (fake_openai.py): which request fails, and how.

A plan is `plan(path, body, attempt) -> Fault | None`, `attempt` counting how many times this
exact body was received before; `fail_first`, `fail_share` and `always` build the usual ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

try:
    from tests.support.fake_answers import body_hash
except ImportError:  # run as a script: python tests/support/fake_openai.py
    from fake_answers import body_hash  # type: ignore[no-redef]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
GENERATION_PATHS = (CHAT, COMPLETIONS)
FAULT_KINDS = ("429", "500", "503", "400", "401", "404", "quota", "drop", "malformed", "empty", "slow")


@dataclass
class Fault:
    """What to do to one request.

    kind: "429" | "500" | "503" | "400" | "401" | "404" | "quota" (429, code insufficient_quota) |
    "drop" (close the socket, no response) | "malformed" (200, non-JSON body) |
    "empty" (200, "choices": []) | "slow" (sleep `delay` s, then answer normally).
    """

    kind: str
    retry_after: float | None = None  # Retry-After header (seconds, may be fractional), 429/503/quota
    retry_after_ms: int | None = None  # retry-after-ms header, 429/503/quota
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")



Plan = Callable[[str, dict, int], "Fault | None"]


def _as_fault(kind: str | Fault) -> Fault:
    return kind if isinstance(kind, Fault) else Fault(kind)



def fail_first(n: int, kinds: Iterable[str | Fault], paths: Iterable[str] = GENERATION_PATHS) -> Plan:
    """The first `n` attempts of every body (on `paths`) fail, cycling through `kinds`."""
    faults = [_as_fault(k) for k in kinds]
    paths = tuple(paths)
    return lambda path, body, attempt: faults[attempt % len(faults)] if path in paths and attempt < n else None


def fail_share(share: float, kinds: Iterable[str | Fault], seed: int = 0,
               paths: Iterable[str] = GENERATION_PATHS) -> Plan:
    """A deterministic share of bodies (by body hash and seed) fail their first attempt, kind chosen by hash."""
    faults = [_as_fault(k) for k in kinds]
    paths = tuple(paths)

    def plan(path: str, body: dict, attempt: int) -> Fault | None:
        if path not in paths or attempt > 0:
            return None
        h = int(hashlib.sha256(f"{seed}:{body_hash(body)}".encode()).hexdigest()[:12], 16)
        return faults[(h >> 24) % len(faults)] if (h & 0xFFFFFF) / 0x1000000 < share else None
    return plan


def always(kind: str | Fault, when: Callable[[str, dict, int], bool] | None = None) -> Plan:
    """Every request (for which `when(path, body, attempt)` holds, if given) gets `kind`."""
    fault = _as_fault(kind)
    return lambda path, body, attempt: fault if when is None or when(path, body, attempt) else None



def error_body(message: str, type_: str, code: str | None = None) -> dict:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


FAULT_BODIES = {
    "400": (400, error_body("Invalid request (injected fault).", "invalid_request_error")),
    "401": (401, error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")),
    "404": (404, error_body("The model does not exist or you do not have access to it.", "invalid_request_error",
                        "model_not_found")),
    "429": (429, error_body("Rate limit reached for requests. Please try again later.", "requests",
                        "rate_limit_exceeded")),
    "quota": (429, error_body("You exceeded your current quota, please check your plan and billing details.",
                          "insufficient_quota", "insufficient_quota")),
    "500": (500, error_body("The server had an error while processing your request. Sorry about that!", "server_error")),
    "503": (503, error_body("The engine is currently overloaded, please try again later.", "server_error", "overloaded")),
}
