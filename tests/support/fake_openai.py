"""A fake OpenAI-compatible HTTP/1.1 server (stdlib asyncio only) for fault-tolerance tests and benchmarks.

Answers are synthetic but have the exact OpenAI JSON shapes, and are deterministic: the same
request body always gets the same content. A `plan(path, body, attempt)` injects faults per
request (429/500/503/400/401/404, quota, dropped socket, malformed or empty 200s, slow answers).

In-process (a daemon thread runs the event loop):

    with FakeOpenAI(latency=0.1, plan=fail_first(1, ["429"])) as server:
        httpx.post(server.base_url + "/chat/completions", json={...})
        server.count(status=429)

As a subprocess (client and server do not share a GIL):

    python tests/support/fake_openai.py --port 0 --latency 0.1 --port-file F [--fail-share 0.1] [--api-key K]

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions; anything else 404.
Tokens are whitespace tokens with their leading spaces (``re.findall(r"\\s*\\S+")``); their
log-probs are made-up negative numbers derived from a CRC of the whole prefix (so they depend
on context), higher for a word already seen earlier in the text.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import os
import random
import re
import signal
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
GENERATION_PATHS = (CHAT, COMPLETIONS)
FAULT_KINDS = ("429", "500", "503", "400", "401", "404", "quota", "drop", "malformed", "empty", "slow")

_TOKEN = re.compile(r"\s*\S+|\s+\Z")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{3,}")
_SKIP = {"passage", "passages", "snippet", "query", "task", "write", "given", "retrieve", "that", "this", "with",
         "from", "which", "what", "have", "were", "been", "their", "there", "they", "these", "those", "than", "into"}
_VOCAB = [" the", " cell", " protein", " study", " effect", " of", " in", " patients", " gene", " level",
          " response", " and", " risk", " model", " data", "."]
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


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


class Request(NamedTuple):
    """One log entry: status is the HTTP status sent, or "drop"."""

    path: str
    body_hash: str
    attempt: int
    status: int | str


Plan = Callable[[str, dict, int], "Fault | None"]


def _as_fault(kind: str | Fault) -> Fault:
    return kind if isinstance(kind, Fault) else Fault(kind)


def body_hash(body: Any) -> str:
    """Hash of a request body's canonical JSON (sorted keys, no spaces); "" for no body."""
    canonical = b"" if body is None else json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


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


def tokenize(text: str) -> list[str]:
    """Whitespace tokens keeping their leading spaces; they join back to `text`. "a  b " -> ['a', '  b', ' ']"""
    return _TOKEN.findall(text)


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from `parts`."""
    return zlib.crc32(repr(parts).encode()) / 2**32


def _token_logprobs(tokens: list[str]) -> list[float]:
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


def _error(message: str, type_: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_FAULT_BODIES = {
    "400": (400, _error("Invalid request (injected fault).", "invalid_request_error")),
    "401": (401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")),
    "404": (404, _error("The model does not exist or you do not have access to it.", "invalid_request_error",
                        "model_not_found")),
    "429": (429, _error("Rate limit reached for requests. Please try again later.", "requests",
                        "rate_limit_exceeded")),
    "quota": (429, _error("You exceeded your current quota, please check your plan and billing details.",
                          "insufficient_quota", "insufficient_quota")),
    "500": (500, _error("The server had an error while processing your request. Sorry about that!", "server_error")),
    "503": (503, _error("The engine is currently overloaded, please try again later.", "server_error", "overloaded")),
}


class FakeOpenAI:
    """A fake OpenAI server on 127.0.0.1:<free port>; a context manager (or `start()`/`stop()`).

    `plan(path, body, attempt)` picks a `Fault` per request (`attempt`: how many times this exact
    body was received before). `latency`: every answer waits this long (requests overlap).
    `hold`/`hold_after`: requests (after the first `hold_after`, if given) wait until `hold` is set.
    `api_key`: requests without `Authorization: Bearer <key>` get 401. `honour_*`: whether
    response_format json_schema, logprobs and echo are obeyed (some servers ignore them).
    `requests` logs (path, body_hash, attempt, status or "drop") of every request answered.
    """

    def __init__(self, *, latency: float = 0.0, api_key: str | None = None, model: str = "fake-model",
                 plan: Plan | None = None, honour_json_schema: bool = True, honour_logprobs: bool = True,
                 honour_echo: bool = True, echo_shift: bool = False, hold: threading.Event | None = None, hold_after: int | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.latency, self.api_key, self.model, self.plan = latency, api_key, model, plan
        self.honour_json_schema, self.honour_logprobs, self.honour_echo = honour_json_schema, honour_logprobs, honour_echo
        self.echo_shift = echo_shift  # echo prompt log-probs off by one position (a real llama-cpp-python quirk)
        self.hold = hold if hold is not None or hold_after is None else threading.Event()
        self.hold_after = hold_after
        self.host, self.port = host, port
        self.requests: list[Request] = []
        self.received = 0  # requests parsed so far (including ones still waiting)
        self._seen: collections.Counter[str] = collections.Counter()
        self._answered: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._on_listening: Callable[[int], None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """"http://127.0.0.1:PORT/v1"."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "FakeOpenAI":
        """Serve from a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._listen())
            except BaseException as e:  # noqa: BLE001 - reported to start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the thread."""
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def serve_forever(self) -> None:
        """Serve on the calling (main) thread until SIGTERM or SIGINT (the subprocess mode)."""
        async def main() -> None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await self._listen()
            if self._on_listening:
                self._on_listening(self.port)
            await stop.wait()
            await self._shutdown()
        asyncio.run(main())

    # --- inspection -----------------------------------------------------------------------

    def count(self, path: str | None = None, status: int | str | None = None) -> int:
        """Logged requests matching `path` and `status` (None: any)."""
        with self._lock:
            return sum((path is None or r.path == path) and (status is None or r.status == status)
                       for r in self.requests)

    def answered(self) -> collections.Counter:
        """body_hash -> number of 200 answers with a valid body (completions endpoints only)."""
        with self._lock:
            return collections.Counter(self._answered)

    # --- HTTP -----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    raw = await self._read_chunked(reader)
                else:
                    raw = await reader.readexactly(int(headers.get("content-length") or 0))
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                response = await self._handle(method, target.split("?", 1)[0], headers, raw)
                if response is None:  # drop
                    return
                writer.write(response if keep else response.replace(b"\r\n", b"\r\nConnection: close\r\n", 1))
                await writer.drain()
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
            return  # (a cancelled connection task ends quietly: the server is stopping)
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
            pass
        return b"".join(chunks)

    @staticmethod
    def _http(status: int, payload: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(payload)}\r\n{extra}\r\n").encode() + payload

    def _log(self, path: str, digest: str, attempt: int, status: int | str, valid: bool = False) -> None:
        with self._lock:
            self.requests.append(Request(path, digest, attempt, status))
            if valid and path in GENERATION_PATHS:
                self._answered[digest] += 1

    async def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> bytes | None:
        """The response bytes, or None to drop the connection."""
        with self._lock:
            index = self.received
            self.received += 1
        if self.hold is not None and (self.hold_after is None or index >= self.hold_after):
            while not self.hold.is_set():
                await asyncio.sleep(0.01)
        if self.latency:
            await asyncio.sleep(self.latency)

        body: Any = None
        parse_error = None
        if method == "POST":
            try:
                body = json.loads(raw) if raw else None
                if not isinstance(body, dict):
                    parse_error = "The request body must be a JSON object."
            except ValueError as e:
                parse_error = f"We could not parse the JSON body of your request. ({e.msg})"
        digest = body_hash(body) if parse_error is None else hashlib.sha256(raw).hexdigest()[:16]
        with self._lock:
            attempt = self._seen[digest]
            self._seen[digest] += 1

        def answer(status: int, payload: dict, extra: dict[str, str] | None = None) -> bytes:
            self._log(path, digest, attempt, status, valid=status == 200)
            return self._http(status, json.dumps(payload).encode(), extra)

        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return answer(401, _error("Incorrect API key provided. You can find your API key at "
                                      "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                                      "invalid_api_key"))
        routes = {MODELS: "GET", CHAT: "POST", COMPLETIONS: "POST"}
        if path not in routes:
            return answer(404, _error(f"Invalid URL ({method} {path})", "invalid_request_error"))
        if routes[path] != method:
            return answer(405, _error(f"Method {method} not allowed for {path}", "invalid_request_error"))
        if parse_error:
            return answer(400, _error(parse_error, "invalid_request_error"))

        fault = self.plan(path, body or {}, attempt) if self.plan else None
        if fault is not None:
            if fault.kind == "drop":
                self._log(path, digest, attempt, "drop")
                return None
            if fault.kind == "malformed":
                self._log(path, digest, attempt, 200)
                return self._http(200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [<html>')
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.kind != "empty":
                status, payload = _FAULT_BODIES[fault.kind]
                extra = {}
                if fault.retry_after is not None:
                    extra["retry-after"] = f"{fault.retry_after:g}"
                if fault.retry_after_ms is not None:
                    extra["retry-after-ms"] = str(fault.retry_after_ms)
                return answer(status, payload, extra)

        if path == MODELS:
            return answer(200, {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0,
                                                              "owned_by": "fake-openai"}]})
        try:
            payload = (self._chat if path == CHAT else self._completion)(body, digest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return answer(400, _error(f"Invalid request: {e}", "invalid_request_error"))
        if fault is not None and fault.kind == "empty":
            payload["choices"] = []
            self._log(path, digest, attempt, 200)
            return self._http(200, json.dumps(payload).encode())
        return answer(200, payload)

    # --- answers --------------------------------------------------------------------------

    def _envelope(self, kind: str, body: dict, digest: str, choices: list, prompt_tokens: int,
                  completion_tokens: int) -> dict:
        prefix = "chatcmpl-" if kind == "chat.completion" else "cmpl-"
        return {"id": prefix + digest, "object": kind, "created": int(time.time()),
                "model": body.get("model") or self.model, "system_fingerprint": "fp_fake", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _chat(self, body: dict, digest: str) -> dict:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty array")
        rf = body.get("response_format") or {}
        schema = None
        if self.honour_json_schema and isinstance(rf, dict):
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
        if body.get("logprobs") and self.honour_logprobs:
            k = int(body.get("top_logprobs") or 0)
            entries = []
            for i, (tok, lp) in enumerate(zip(tokens, _token_logprobs(tokens))):
                top = _alternatives(tok, lp, k, (digest, i)) if k else []
                entries.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top]})
            logprobs = {"content": entries, "refusal": None}
        prompt_tokens = sum(len(tokenize(m.get("content") or "")) if isinstance(m.get("content"), str) else 0
                            for m in messages)
        choice = {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                  "logprobs": logprobs, "finish_reason": finish}
        return self._envelope("chat.completion", body, digest, [choice], prompt_tokens, len(tokens))

    def _completion(self, body: dict, digest: str) -> dict:
        prompt = body["prompt"]
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
        else:
            raise ValueError("'prompt' must be a string, a list of strings, or token ids")
        max_tokens = int(body.get("max_tokens", 16))
        k = body.get("logprobs")
        echo = bool(body.get("echo")) and self.honour_echo
        choices, prompt_total, completion_total = [], 0, 0
        for index, p in enumerate(prompts):
            tokens = [f" t{int(t)}" for t in p] if isinstance(p, list) else tokenize(p)
            text = "".join(tokens)
            gen, first_top = _generate(text, min(max_tokens, 8))
            logprobs = None
            if k is not None and self.honour_logprobs:
                k = max(int(k), 1)
                lps: list[float | None] = list(_token_logprobs(tokens + gen))
                if gen and not text.rstrip().endswith("Answer:"):
                    # a consistent model: a next token's log-prob is the one an echo of it would show
                    first_top = {t: _token_logprobs(tokens + [t])[-1] for t in first_top}
                if gen:
                    lps[len(tokens)] = first_top[gen[0]]
                tops: list[dict | None] = [dict(_alternatives(tok, lp, k, (digest, index, i)))
                                           for i, (tok, lp) in enumerate(zip(tokens + gen, lps))]
                if gen:
                    tops[len(tokens)] = dict(list(first_top.items())[:k])
                shown = tokens + gen
                if echo and self.echo_shift:  # llama-cpp-python without a BOS token: value i is token i+1's
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
        return self._envelope("text_completion", body, digest, choices, prompt_total, completion_total)


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


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until killed; the bound port goes to --port-file (and stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here (atomically) once listening")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--api-key")
    parser.add_argument("--fail-share", type=float, default=0.0, help="share of bodies whose first attempt fails")
    parser.add_argument("--fail-kinds", default="429,500,503,drop", help="comma-separated fault kinds for --fail-share")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plan = fail_share(args.fail_share, args.fail_kinds.split(","), args.seed) if args.fail_share > 0 else None
    server = FakeOpenAI(latency=args.latency, api_key=args.api_key, model=args.model, plan=plan,
                        host=args.host, port=args.port)

    def listening(port: int) -> None:
        if args.port_file:
            tmp = f"{args.port_file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(str(port))
            os.replace(tmp, args.port_file)
        print(port, flush=True)

    server._on_listening = listening
    server.serve_forever()


if __name__ == "__main__":
    main()
