"""Reading a server's answers. Never trust a 200: a body without what was asked for raises
`Unusable` (the request is retried like a 5xx); an answer that will be the same every time raises
`CallError` (only that record fails)."""

from __future__ import annotations

import json
from typing import Any, Sequence

import httpx


class Unusable(Exception):
    """A 200 answer that does not contain what was asked for (retried like a 5xx)."""


class CallError(Exception):
    """This one request cannot succeed — the server refused it (4xx other than auth/not found), or
    answered it in a way that is the same every time — so its record fails; not retried."""


def chat_content(data: Any) -> str:
    """choices[0].message.content of a chat completion."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Unusable("no choices[0].message.content") from None
    if not isinstance(content, str):
        raise Unusable("choices[0].message.content is not a string")
    return content


def _completion_logprobs(data: Any) -> dict:
    try:
        logprobs = data["choices"][0]["logprobs"]
    except (KeyError, IndexError, TypeError):
        raise Unusable("no choices[0].logprobs") from None
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("token_logprobs"), list):
        raise Unusable("the server returned no log-probs (choices[0].logprobs is empty)")
    return logprobs


def token_offsets(logprobs: dict) -> list[int]:
    """Character offset of every token: `text_offset` when given, else the running token lengths."""
    offsets = logprobs.get("text_offset")
    if isinstance(offsets, list) and len(offsets) == len(logprobs["token_logprobs"]):
        return [int(o) for o in offsets]
    tokens = logprobs.get("tokens")
    if not isinstance(tokens, list):
        raise Unusable("log-probs without tokens or text_offset")
    out, at = [], 0
    for token in tokens:
        out.append(at)
        at += len(token)
    return out


def continuation_logprob(data: Any, prefix: str, prompt: str) -> float:
    """Sum of the echoed log-probs of the tokens that start at or after len(prefix) within the prompt.

    >>> lp = {"tokens": ["Q:", " sky", " blue"], "token_logprobs": [None, -1.5, -0.5], "text_offset": [0, 2, 6]}
    >>> continuation_logprob({"choices": [{"logprobs": lp}]}, "Q:", "Q: sky blue")
    -2.0
    """
    logprobs = _completion_logprobs(data)
    values = logprobs["token_logprobs"]
    start, end = len(prefix), len(prompt)
    picked = [v for o, v in zip(token_offsets(logprobs), values) if start <= o < end]
    if not picked or any(not isinstance(v, (int, float)) for v in picked):
        raise Unusable("the server did not return log-probs for the prompt's tokens (echo ignored?)")
    if len(values) < 2 or not (values[0] is None or isinstance(values[0], (int, float))):
        raise Unusable("malformed echo log-probs")
    return float(sum(picked))


def _first_top(logprobs: dict) -> dict:
    """The first token's top log-probs as {token: logprob}; some servers send [{"token", "logprob"}]."""
    tops = logprobs.get("top_logprobs")
    first = tops[0] if isinstance(tops, list) and tops else None
    if isinstance(first, list):
        first = {t.get("token"): t.get("logprob") for t in first if isinstance(t, dict)}
    return first if isinstance(first, dict) else {}


def _stopped_at_once(data: Any) -> bool:
    """finish_reason "stop" with no text: the first token was end-of-text or a stop sequence.

    >>> _stopped_at_once({"choices": [{"text": "", "finish_reason": "stop", "logprobs": None}]})
    True
    >>> _stopped_at_once({"choices": [{"text": "", "finish_reason": "length"}]})
    False
    """
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        return False
    return isinstance(choice, dict) and choice.get("finish_reason") == "stop" and not choice.get("text")


def next_token_logprobs(data: Any, labels: Sequence[str]) -> dict[str, float]:
    """Log-probs of the labels among the first generated token's top log-probs.

    A label outside the top-k gets the smallest top-k value (an upper bound on its log-prob).
    >>> lp = {"tokens": [" No"], "token_logprobs": [-0.1], "top_logprobs": [{" No": -0.1, " Yes": -2.5}]}
    >>> next_token_logprobs({"choices": [{"logprobs": lp}]}, [" Yes", " No", "yes"])
    {' Yes': -2.5, ' No': -0.1, 'yes': -2.5}
    """
    try:
        first = _first_top(_completion_logprobs(data))
    except Unusable:
        first = {}
    if len(first) < 2:
        if _stopped_at_once(data):
            raise CallError("the server's most likely next token ends the text and it sent no log-probs "
                              "for it (llama-cpp-python drops them), so relevance cannot be read for this pair")
        raise Unusable("the server returned no top log-probs for the next token")
    floor = min(float(v) for v in first.values())
    return {label: float(first[label]) if label in first else floor for label in labels}


def spaced_top_token(data: Any) -> tuple[str, float]:
    """The likeliest next word (a top log-prob token like " Paris": a space, then letters) and its
    log-prob; a word token keeps its own boundary when appended to the prompt and re-tokenised.

    >>> top = [{".": -0.2, " Paris": -1.5, " the": -2.0}]
    >>> spaced_top_token({"choices": [{"logprobs": {"tokens": ["."], "token_logprobs": [-0.2], "top_logprobs": top}}]})
    (' Paris', -1.5)
    """
    first = _first_top(_completion_logprobs(data))
    words = [(t, float(v)) for t, v in first.items()
             if isinstance(t, str) and t.startswith(" ") and t[1:].isalpha() and isinstance(v, (int, float))]
    if not words:
        raise Unusable("no word among the next token's top log-probs")
    return max(words, key=lambda item: item[1])


def usage_of(data: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from the answer's `usage`, None where missing."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None, None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (p if isinstance(p, int) else None), (c if isinstance(c, int) else None)


def json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is not JSON."""
    return json_of(response.content)


def json_of(content: bytes) -> Any:
    """A body as JSON (UTF-8/16/32 detected, as httpx's `Response.json`), or None when it is not JSON.

    >>> json_of(b'{"a": 1}'), json_of(b"<html>"), json_of(b"")
    ({'a': 1}, None, None)
    """
    try:
        return json.loads(content)
    except ValueError:  # UnicodeDecodeError is one too
        return None
