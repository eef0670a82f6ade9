"""When to retry an HTTP call to an LLM server, and how long to wait (pure functions).

Retried: 408, 409, 429, 5xx, timeouts, dropped connections and 200s whose body is not a usable
answer ("never trust a 200"). Not retried: 400/401/403/404/422 and a 429 whose error code is
`insufficient_quota` (waiting does not refill a quota). The wait honours the server's
`retry-after-ms` / `Retry-After` (seconds or an HTTP date), otherwise it is jittered exponential
backoff: 0.5 s doubling up to 8 s ("full jitter": uniform in [d/2, d], so many clients that failed
together do not come back together).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

RETRY_STATUSES = frozenset({408, 409, 429})
BASE_DELAY = 0.5
MAX_DELAY = 8.0
MAX_SERVER_DELAY = 120.0  # a Retry-After beyond this is a server bug or an outage: cap the wait


@dataclass(frozen=True)
class Verdict:
    """What to do with one HTTP answer: retry it, fail the one call, or stop the run."""

    action: str  # "retry" | "fail_call" | "fail_run"
    reason: str


def classify(status: int, body: Any) -> Verdict:
    """Decide from the status code and the (parsed, may be None) error body.

    >>> classify(503, None).action, classify(400, None).action, classify(401, None).action
    ('retry', 'fail_call', 'fail_run')
    >>> classify(429, {"error": {"code": "insufficient_quota", "message": "You exceeded your quota"}}).action
    'fail_run'
    """
    reason = f"HTTP {status}" + (f": {error_message(body)}" if error_message(body) else "")
    if status == 429 and error_code(body) == "insufficient_quota":
        return Verdict("fail_run", reason + " (quota exhausted; not retried)")
    if status in RETRY_STATUSES or status >= 500:
        return Verdict("retry", reason)
    if status in (401, 403):
        return Verdict("fail_run", reason + " (check the API key variable given with --api-key-env)")
    if status == 404:
        return Verdict("fail_run", reason + " (check --llm and --model)")
    return Verdict("fail_call", reason)


def error_code(body: Any) -> str | None:
    """The OpenAI-style `error.code` (or `error.type`) of an error body, if any."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return str(code) if code is not None else None
    return None


def error_message(body: Any) -> str:
    """The human part of an error body: `error.message`, `error` (a string) or `detail`, shortened."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    text = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else body.get("detail")
    return str(text)[:300] if text else ""


def server_delay(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from `retry-after-ms` or `Retry-After`, else None.

    >>> server_delay({"retry-after-ms": "250"}), server_delay({"retry-after": "2"}), server_delay({})
    (0.25, 2.0, None)
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return min(max(float(lower["retry-after-ms"]) / 1000, 0.0), MAX_SERVER_DELAY)
        if "retry-after" in lower:
            value = lower["retry-after"].strip()
            try:
                return min(max(float(value), 0.0), MAX_SERVER_DELAY)
            except ValueError:
                import time

                when = parsedate_to_datetime(value).timestamp()
                return min(max(when - (time.time() if now is None else now), 0.0), MAX_SERVER_DELAY)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def backoff(retry: int, rng: random.Random | None = None) -> float:
    """Jittered exponential backoff before retry number `retry` (0-based): in [d/2, d], d = 0.5·2^retry ≤ 8.

    >>> all(0.25 <= backoff(0) <= 0.5 for _ in range(20)), all(4.0 <= backoff(10) <= 8.0 for _ in range(20))
    (True, True)
    """
    ceiling = min(BASE_DELAY * (2 ** retry), MAX_DELAY)
    return (rng or random).uniform(ceiling / 2, ceiling)


def retry_delay(retry: int, headers: Mapping[str, str] | None = None, rng: random.Random | None = None) -> float:
    """The server's wish when it states one, our backoff otherwise."""
    asked = server_delay(headers or {})
    return asked if asked is not None else backoff(retry, rng)
