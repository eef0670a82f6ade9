"""The synthetic answers of the fake OpenAI server (fake_openai.py): exact OpenAI JSON shapes,
deterministic content (the same request body always gets the same answer).

Tokens are whitespace tokens with their leading spaces (``re.findall(r"\\s*\\S+")``); their
log-probs are made-up negative numbers derived from a CRC of the whole prefix (so they depend
on context), higher for a word already seen earlier in the text.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
import zlib
from typing import Any

_TOKEN = re.compile(r"\s*\S+|\s+\Z")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{3,}")
_SKIP = {"passage", "passages", "snippet", "query", "task", "write", "given", "retrieve", "that", "this", "with",
         "from", "which", "what", "have", "were", "been", "their", "there", "they", "these", "those", "than", "into"}
_VOCAB = [" the", " cell", " protein", " study", " effect", " of", " in", " patients", " gene", " level",
          " response", " and", " risk", " model", " data", "."]


def body_hash(body: Any) -> str:
    """Hash of a request body's canonical JSON (sorted keys, no spaces); "" for no body."""
    canonical = b"" if body is None else json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]



def tokenize(text: str) -> list[str]:
    """Whitespace tokens keeping their leading spaces; they join back to `text`. "a  b " -> ['a', '  b', ' ']"""
    return _TOKEN.findall(text)


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from `parts`."""
    return zlib.crc32(repr(parts).encode()) / 2**32


def token_logprobs(tokens: list[str]) -> list[float]:
    """Made-up log-probs of each token given all before it: CRC of the prefix; a word seen before is likelier."""
    crc, seen, out = 0, set(), []
    for tok in tokens:
        crc = zlib.crc32(tok.encode(), crc)
        word = tok.strip().lower()
        u = crc / 2**32
        out.append(-round(0.05 + 1.5 * u, 6) if word in seen else -round(2.0 + 6.0 * u, 6))
        seen.add(word)
    return out


def _alternatives(token: str, logprob: float, k: int, salt: Any) -> list[tuple[str, float]]:
    """k (token, logprob) top candidates: the token itself first, then fillers less likely than it."""
    out = [(token, logprob)]
    for i, alt in enumerate(t for t in _VOCAB if t != token):
        if len(out) >= k:
            break
        out.append((alt, round(logprob - 0.5 - i - _unit(salt, alt), 6)))
    return out[:k]


def _keywords(messages: list[dict]) -> list[str]:
    """Distinct content words (3+ of them) of the last user message, after its last "Passage:"."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = str(content).rsplit("Passage:", 1)[-1]
    words = list(dict.fromkeys(w for w in (w.lower().strip("-") for w in _WORD.findall(text)) if w and w not in _SKIP))
    return words + [w for w in ("thing", "matter", "topic") if w not in words][: max(0, 3 - len(words))]


def _question(messages: list[dict], digest: str) -> str:
    """'what is w1 w2 w3': three words of the last user message, picked by the body's hash."""
    return "what is " + " ".join(random.Random(int(digest, 16)).sample(_keywords(messages), 3))


def _fill(schema: dict, name: str, messages: list[dict], digest: str) -> Any:
    """A value for a JSON schema: required properties of objects filled, strings from the prompt."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((t for t in kind if t != "null"), "string")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][int(digest, 16) % len(schema["enum"])]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _fill(props.get(k, {}), k, messages, body_hash([digest, k])) for k in schema.get("required", [])}
    if kind == "array":
        return []
    if kind == "integer":
        return int(digest, 16) % 10
    if kind == "number":
        return round(_unit(digest), 3)
    if kind == "boolean":
        return int(digest, 16) % 2 == 0
    question = _question(messages, digest)
    return question if name == "query" else f"{name}: {question.removeprefix('what is ')}"



def _envelope(kind: str, body: dict, digest: str, choices: list, prompt_tokens: int, completion_tokens: int,
              model: str) -> dict:
    prefix = "chatcmpl-" if kind == "chat.completion" else "cmpl-"
    return {"id": prefix + digest, "object": kind, "created": int(time.time()),
            "model": body.get("model") or model, "system_fingerprint": "fp_fake", "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def chat_answer(body: dict, digest: str, *, model: str, honour_json_schema: bool = True,
                honour_logprobs: bool = True) -> dict:
    """A /chat/completions answer: JSON filling the schema of `response_format` (when honoured),
    else a question; log-probs per token when asked (and honoured)."""
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array")
    rf = body.get("response_format") or {}
    schema = None
    if honour_json_schema and isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {}
        elif rf.get("type") == "json_object":
            schema = rf.get("schema") or {"type": "object", "properties": {"query": {"type": "string"}},
                                          "required": ["query"]}
    if schema is not None:
        content = json.dumps(_fill(schema, "", messages, digest))
    else:
        content = _question(messages, digest).capitalize() + "?"
    tokens = tokenize(content)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if limit is not None and len(tokens) > int(limit):
        tokens, finish = tokens[: int(limit)], "length"
        content = "".join(tokens)
    logprobs = None
    if body.get("logprobs") and honour_logprobs:
        k = int(body.get("top_logprobs") or 0)
        entries = []
        for i, (tok, lp) in enumerate(zip(tokens, token_logprobs(tokens))):
            top = _alternatives(tok, lp, k, (digest, i)) if k else []
            entries.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top]})
        logprobs = {"content": entries, "refusal": None}
    prompt_tokens = sum(len(tokenize(m.get("content") or "")) if isinstance(m.get("content"), str) else 0
                        for m in messages)
    choice = {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
              "logprobs": logprobs, "finish_reason": finish}
    return _envelope("chat.completion", body, digest, [choice], prompt_tokens, len(tokens), model)


def completion_answer(body: dict, digest: str, *, model: str, honour_logprobs: bool = True, honour_echo: bool = True,
                      echo_shift: bool = False) -> dict:
    """A /completions answer: generated tokens, the prompt's echoed log-probs (when asked and
    honoured; shifted by one position with `echo_shift`), top log-probs of each token."""
    prompt = body["prompt"]
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise ValueError("'prompt' must be a string, a list of strings, or token ids")
    max_tokens = int(body.get("max_tokens", 16))
    k = body.get("logprobs")
    echo = bool(body.get("echo")) and honour_echo
    choices, prompt_total, completion_total = [], 0, 0
    for index, p in enumerate(prompts):
        tokens = [f" t{int(t)}" for t in p] if isinstance(p, list) else tokenize(p)
        text = "".join(tokens)
        gen, first_top = _generate(text, min(max_tokens, 8))
        logprobs = None
        if k is not None and honour_logprobs:
            k = max(int(k), 1)
            lps: list[float | None] = list(token_logprobs(tokens + gen))
            if gen and not text.rstrip().endswith("Answer:"):
                # a consistent model: a next token's log-prob is the one an echo of it would show
                first_top = {t: token_logprobs(tokens + [t])[-1] for t in first_top}
            if gen:
                lps[len(tokens)] = first_top[gen[0]]
            tops: list[dict | None] = [dict(_alternatives(tok, lp, k, (digest, index, i)))
                                       for i, (tok, lp) in enumerate(zip(tokens + gen, lps))]
            if gen:
                tops[len(tokens)] = dict(list(first_top.items())[:k])
            shown = tokens + gen
            if echo and echo_shift:  # llama-cpp-python without a BOS token: value i is token i+1's
                lps = lps[1:] + [-1.0]
            if tokens:
                lps[0] = tops[0] = None
            if not echo:
                shown, lps, tops = gen, lps[len(tokens):], tops[len(tokens):]
            offsets, start = [], 0 if echo else len(text)
            for tok in shown:
                offsets.append(start)
                start += len(tok)
            logprobs = {"tokens": shown, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        finish = "length" if len(gen) == max_tokens else "stop"
        choices.append({"text": (text if echo else "") + "".join(gen), "index": index, "logprobs": logprobs,
                        "finish_reason": finish})
        prompt_total += len(tokens)
        completion_total += len(gen)
    return _envelope("text_completion", body, digest, choices, prompt_total, completion_total, model)


def _generate(text: str, n: int) -> tuple[list[str], dict[str, float]]:
    """n generated tokens and the top log-probs of the first: " Yes" and " No" are always among them
    (different values); after "Answer:" the first token is the likelier of the two."""
    if n <= 0:
        return [], {}
    answer = text.rstrip().endswith("Answer:")
    mass, p_yes = (0.97 if answer else 0.3), 0.02 + 0.96 * _unit("yes", text)
    lp_yes, lp_no = round(math.log(p_yes * mass), 6), round(math.log((1 - p_yes) * mass), 6)
    labels = sorted([(" Yes", lp_yes), (" No", lp_no - 0.001 * (lp_no == lp_yes))], key=lambda e: -e[1])
    gen = [_VOCAB[int(_unit(text, i) * len(_VOCAB))] for i in range(n)]
    if answer:
        gen[0] = labels[0][0]
        top = labels
    else:
        top = [(gen[0], round(math.log(0.6), 6))] + labels
    floor = min(v for _, v in top)
    top += [(t, round(floor - 1 - i, 6)) for i, t in enumerate(t for t in _VOCAB if t not in dict(top))]
    return gen, dict(top)

