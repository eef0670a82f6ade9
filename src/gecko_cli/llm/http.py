"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, TGI, OpenAI) as an LLM backend.

`httpx.AsyncClient`s run on an event loop in a background thread; the stage calls stay
synchronous batch calls, and inside a batch up to `concurrency` requests are in flight. The
connections are split over clients of at most 16 each (round-robin): httpx 0.28's pool spends
connections x waiting-requests work on every request (encode/httpx#3215), so one pool of 64
connections did 88 requests/s against a 100 ms server where four pools of 16 did 561 (ideal 640). Every request is retried on 408/409/429/5xx, timeouts, dropped connections and
unusable 200 answers (see `retry.py`); a server that stays down raises BackendError (exit 3);
a request the server refuses for its own content (400) becomes a `Failure` for that record.

Operations map to endpoints:
- `generate_json`: /chat/completions with `response_format: json_schema`; the answer is always
  validated here, and an invalid one gets one repair request that quotes the problem.
- `query_likelihood`: /completions with `echo` + `logprobs` and no new tokens: the log-probs
  of the prompt's own tokens; the continuation's are those at character offsets ≥ len(prefix).
- `label_logprobs`: /completions with `max_tokens: 1` and `logprobs: k`: the next token's top-k.

Servers silently drop parameters they do not support, so a 200 proves nothing: `probe`
checks each capability once with a request whose answer shows whether it was honoured.
The API key lives only in the request header; it is never part of a message, repr or cache key.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from gecko_cli.contract.errors import BackendError, UsageError
from gecko_cli.llm.base import Failure, Message
from gecko_cli.llm.retry import Verdict, classify, retry_delay
from gecko_cli.llm.tokens import BudgetExhausted, TokenMeter, count_tokens

OnResult = Callable[[int, Any], None]
TOP_LOGPROBS = 20  # the most OpenAI-compatible servers return; labels outside the top-k get its floor
POOL_CONNECTIONS = 16  # per httpx client; more clients beyond that (see the module docstring)


class Unusable(Exception):
    """A 200 answer that does not contain what was asked for (retried like a 5xx)."""


class CallError(Exception):
    """This one request cannot succeed — the server refused it (4xx other than auth/not found), or
    answered it in a way that is the same every time — so its record fails; not retried."""


@dataclass
class Capabilities:
    """What the probe saw the server actually do (None: not probed yet)."""

    json_schema: bool | None = None
    json_format: str = "json_schema"  # or "json_object" (llama-cpp-python's {"type": "json_object", "schema"})
    echo_logprobs: bool | None = None
    echo_note: str = ""  # why echoed log-probs were refused, when they were
    top_logprobs: bool | None = None

    def describe(self, needs: Sequence[str]) -> str:
        """`JSON schema: yes; prompt log-probs (query likelihood): no` for the capabilities in `needs`."""
        names = {"json_schema": ("JSON schema", self.json_schema),
                 "echo": ("prompt log-probs (query likelihood)", self.echo_logprobs),
                 "top_logprobs": ("top log-probs (relevance)", self.top_logprobs)}
        parts = [f"{names[n][0]}: {'yes' if names[n][1] else 'no'}" for n in needs]
        if "echo" in needs and self.echo_note:
            parts[list(needs).index("echo")] += f" ({self.echo_note})"
        return "; ".join(parts)


def normalize_base_url(url: str) -> str:
    """`http://host:8000` -> `http://host:8000/v1`; a URL with a path is kept; no trailing slash.

    >>> normalize_base_url("http://127.0.0.1:8000"), normalize_base_url("https://api.example.com/openai/v1/")
    ('http://127.0.0.1:8000/v1', 'https://api.example.com/openai/v1')
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--llm {display_url(url)}: expected http://HOST:PORT/v1 (or 'embedded')")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def display_url(url: str) -> str:
    """The URL without user:password, for messages and provenance.

    >>> display_url("http://me:secret@host:8000/v1")
    'http://host:8000/v1'
    """
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --- schema checking (the subset of JSON Schema a generation prompt uses) ---------------------


def schema_problem(text: str, schema: dict) -> str | None:
    """Why `text` is not a JSON value matching `schema` (type, required, properties), or None.

    >>> schema_problem('{"query": "why"}', {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}})
    >>> schema_problem('Sure! {"q": 1}', {"type": "object"})
    'not JSON: Expecting value (column 1)'
    """
    try:
        value = json.loads(text, strict=False)  # a raw newline inside a string is still usable
    except ValueError as exc:
        return f"not JSON: {getattr(exc, 'msg', exc)} (column {getattr(exc, 'colno', '?')})"
    return _value_problem(value, schema, "")


_TYPES = {"object": dict, "string": str, "array": list, "boolean": bool, "integer": int, "number": (int, float)}


def _value_problem(value: Any, schema: dict, where: str) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _TYPES and not isinstance(value, _TYPES[kind]):
        return f"{where or 'the answer'} should be a JSON {kind}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"missing field \"{key}\""
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, dict):
                problem = _value_problem(value[key], sub, f"\"{key}\"")
                if problem:
                    return problem
    return None


# --- parsing answers (raise Unusable: retried) ------------------------------------------------


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


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# --- the backend ------------------------------------------------------------------------------


class HttpBackend:
    """An OpenAI-compatible server; `report` receives the probe results (a line for stderr)."""

    name = "http"
    streams_results = True  # results reach the cache one by one, as calls finish (kill -9 safety)

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, concurrency: int = 16,
                 max_retries: int = 6, timeout: float = 120.0, meter: TokenMeter | None = None,
                 report: Callable[[str], None] | None = None, seed: int | None = None):
        self.base_url = normalize_base_url(base_url)
        self.model_id = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.meter = meter or TokenMeter()
        self.capabilities = Capabilities()
        self._report = report or (lambda line: None)
        self._secret = api_key or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[httpx.AsyncClient] = []
        self._turn = 0
        self._sem: asyncio.Semaphore | None = None
        self._reported = False

    def __repr__(self) -> str:  # never the key
        return f"HttpBackend({display_url(self.base_url)!r}, model={self.model_id!r})"

    # -- event loop plumbing -------------------------------------------------------------------

    def _run(self, coro: Awaitable[Any]) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="gecko-http", daemon=True)
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self) -> None:
        pools = -(-self.concurrency // POOL_CONNECTIONS)
        size = -(-self.concurrency // pools)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0))
        self._clients = [httpx.AsyncClient(base_url=self.base_url, headers=self._headers, limits=limits,
                                           timeout=timeout) for _ in range(pools)]
        self._sem = asyncio.Semaphore(self.concurrency)

    def _client(self) -> httpx.AsyncClient:
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    def close(self) -> None:
        """Close the connection pool and stop the loop thread."""
        if self._loop is None:
            return
        for client in self._clients:
            asyncio.run_coroutine_threadsafe(client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = None

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    # -- one request, with retries -------------------------------------------------------------

    async def _post(self, path: str, body: dict, parse: Callable[[Any], Any],
                    trust_check: bool = False) -> tuple[Any, Any]:
        """POST until a usable answer: (parsed value, raw JSON). Raises CallError or BackendError.

        With `trust_check` (the probe) an unusable 200 raises Unusable and any error status raises
        CallError at once: some servers answer an unsupported parameter with a 500, not a 400.
        """
        assert self._sem is not None
        retry = 0
        while True:
            headers: Any = {}
            try:
                async with self._sem:
                    response = await self._client().post(path, json=body)
                headers = response.headers
                if response.status_code == 200:
                    data = _json_or_none(response)
                    if data is None:
                        raise Unusable("the body is not JSON")
                    return parse(data), data
                verdict = classify(response.status_code, _json_or_none(response))
            except Unusable as exc:
                if trust_check:
                    raise
                verdict = Verdict("retry", f"unusable answer: {exc}")
            except httpx.TimeoutException:
                verdict = Verdict("retry", f"no answer within {self.timeout:g} s")
            except httpx.TransportError as exc:
                verdict = Verdict("retry", f"connection error ({type(exc).__name__})")
            where = f"{display_url(self.base_url)}{path}"
            reason = self._redact(verdict.reason)
            if trust_check and verdict.action != "fail_run" and reason.startswith("HTTP "):
                raise CallError(reason)
            if verdict.action == "fail_run":
                raise BackendError(f"LLM server {where}: {reason}")
            if verdict.action == "fail_call":
                raise CallError(reason)
            if retry >= self.max_retries:
                raise BackendError(f"LLM server {where}: {reason}; gave up after {retry} retries (--max-retries)")
            self.meter.retries += 1
            await asyncio.sleep(retry_delay(retry, headers, self._rng))
            retry += 1

    async def _metered(self, path: str, body: dict, parse: Callable[[Any], Any], prompt_text: str,
                       reserved: int, completion_of: Callable[[Any], str] = lambda value: "") -> Any:
        """One call whose tokens were reserved: settle them with the server's usage or tiktoken."""
        try:
            value, data = await self._post(path, body, parse)
        except BaseException:
            self.meter.release(reserved)
            raise
        p, c = usage_of(data)
        self.meter.settle(reserved, p if p is not None else count_tokens(prompt_text),
                          c if c is not None else count_tokens(completion_of(value)))
        return value

    async def _batch(self, calls: list[Callable[[], Awaitable[Any]]], on_result: OnResult | None) -> list[Any]:
        """Run calls concurrently (bounded by the semaphore); per-record failures become Failure."""
        async def one(i: int, call: Callable[[], Awaitable[Any]]) -> Any:
            try:
                value = await call()
            except CallError as exc:
                return Failure(str(exc))
            if on_result is not None:
                on_result(i, value)
            return value

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _schedule(self, count: int, estimate: Callable[[int], int],
                  make: Callable[[int, int], Callable[[], Awaitable[Any]]], on_result: OnResult | None) -> list[Any]:
        """Reserve tokens call by call in order; run those that fit; raise BudgetExhausted after them
        if one did not fit (the finished ones have reached `on_result`, i.e. the cache)."""
        calls, stopped = [], None
        for i in range(count):
            # the estimate costs a tokenisation per call: only worth it when there is a budget to check
            worst = estimate(i) if self.meter.budget is not None else 0
            try:
                self.meter.reserve(worst)
            except BudgetExhausted as exc:
                stopped = exc
                break
            calls.append(make(i, worst))
        results = self._run(self._batch(calls, on_result)) if calls else []
        if stopped is not None:
            raise stopped
        return results

    # -- capability probe ----------------------------------------------------------------------

    def probe(self, needs: Sequence[str]) -> Capabilities:
        """Check, once each, the capabilities `needs` ("json_schema", "echo", "top_logprobs") by
        what the answers contain, and report them; a parameter the server ignored shows here."""
        caps = self.capabilities
        todo = [n for n in needs if {"json_schema": caps.json_schema, "echo": caps.echo_logprobs,
                                     "top_logprobs": caps.top_logprobs}[n] is None]
        if not todo:
            return caps
        self._run(self._probe(todo))
        line = caps.describe(todo)
        self._report(f"LLM server {display_url(self.base_url)}, model {self.model_id}: {line}"
                     + ("" if "json_schema" not in todo or caps.json_schema else
                        " (JSON answers are still validated and repaired here)"))
        return caps

    async def _probe_call(self, path: str, body: dict, parse: Callable[[Any], Any]) -> tuple[bool, Any]:
        """(True, value) when the answer has what was asked; (False, None) when the server refused
        the parameter (4xx) or answered 200 without it. A server that is down raises BackendError."""
        try:
            value, _ = await self._post(path, body, parse, trust_check=True)
            return True, value
        except (CallError, Unusable):
            return False, None

    async def _probe(self, todo: list[str]) -> None:
        caps = self.capabilities
        if "json_schema" in todo:
            caps.json_schema = False
            schema = {"type": "object", "properties": {"greeting": {"type": "string"}}, "required": ["greeting"],
                      "additionalProperties": False}
            for form in ("json_schema", "json_object"):  # the OpenAI form, then llama-cpp-python's
                body = {"model": self.model_id, "messages": [{"role": "user", "content": "Say hi in one word."}],
                        "max_tokens": 64, "temperature": 0, "response_format": _response_format(schema, form)}
                ok, content = await self._probe_call("/chat/completions", body, chat_content)
                if ok and schema_problem(content, schema) is None:
                    caps.json_schema, caps.json_format = True, form
                    break
        if "echo" in todo:
            caps.echo_logprobs, caps.echo_note = await self._probe_echo()
        if "top_logprobs" in todo:
            body = {"model": self.model_id, "prompt": "Question: Is the sky blue? Answer (Yes or No):",
                    "max_tokens": 1, "logprobs": 5, "temperature": 0}
            ok, _ = await self._probe_call("/completions", body, lambda d: next_token_logprobs(d, [" Yes", " No"]))
            caps.top_logprobs = ok

    async def _probe_echo(self) -> tuple[bool, str]:
        """Echoed prompt log-probs must exist AND agree with what the server says when it generates
        the same token: a server that echoes them off by one position passes any shape check."""
        prefix = "The capital of France is"
        body = {"model": self.model_id, "prompt": prefix, "max_tokens": 1, "logprobs": 5, "temperature": 0}
        ok, generated = await self._probe_call("/completions", body, spaced_top_token)
        if not ok:
            return False, "no next-token log-probs to check them against"
        token, expected = generated
        prompt = prefix + token
        body = {"model": self.model_id, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1,
                "temperature": 0}
        ok, echoed = await self._probe_call("/completions", body, lambda d: continuation_logprob(d, prefix, prompt))
        if not ok:
            return False, "completions with echo returned no prompt log-probs"
        if abs(echoed - expected) > max(0.05, 0.02 * abs(expected)):
            return False, (f"echoed log-prob of {token!r} is {echoed:.3f} but {expected:.3f} as the next token: "
                           "the server's prompt log-probs are misaligned")
        return True, ""

    # -- the protocol --------------------------------------------------------------------------

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float = 0.0,
                      seed: int = 0, max_new_tokens: int = 256, on_result: OnResult | None = None) -> list[Any]:
        """One JSON answer per chat prompt (validated; one repair request), or a Failure."""
        caps = self.probe(["json_schema"])

        def make(i: int, reserved: int) -> Callable[[], Awaitable[Any]]:
            return lambda: self._json_call(prompts[i], schema, temperature, seed, max_new_tokens,
                                           bool(caps.json_schema), reserved)

        return self._schedule(len(prompts), lambda i: _chat_estimate(prompts[i], max_new_tokens), make, on_result)

    async def _json_call(self, messages: list[Message], schema: dict, temperature: float, seed: int,
                         max_new_tokens: int, use_schema: bool, reserved: int) -> str:
        body: dict[str, Any] = {"model": self.model_id, "messages": messages, "temperature": temperature,
                                "seed": seed, "max_tokens": max_new_tokens}
        if use_schema:
            body["response_format"] = _response_format(schema, self.capabilities.json_format)
        text = _messages_text(messages)
        content = await self._metered("/chat/completions", body, chat_content, text, reserved, lambda v: v)
        problem = schema_problem(content, schema)
        if problem is None:
            return content
        # One repair request: show the model its answer and what is wrong with it.
        repair = [*messages, {"role": "assistant", "content": content},
                  {"role": "user", "content": f"That answer is invalid ({problem}). Reply with only a JSON object "
                                              f"matching this schema: {json.dumps(schema)}"}]
        worst = _chat_estimate(repair, max_new_tokens)
        self.meter.reserve(worst)
        return await self._metered("/chat/completions", {**body, "messages": repair}, chat_content,
                                   _messages_text(repair), worst, lambda v: v)

    def query_likelihood(self, prefixes: list[str], continuations: list[str],
                         on_result: OnResult | None = None) -> list[Any]:
        """Sum of the continuation's echoed prompt log-probs, per pair."""
        caps = self.probe(["echo"])
        if not caps.echo_logprobs:
            raise UsageError(f"the LLM server at {display_url(self.base_url)} cannot give query likelihood "
                             f"({caps.echo_note or 'no prompt log-probs'}); rank with relevance classification "
                             "only: --scorers rc")

        def make(i: int, reserved: int) -> Callable[[], Awaitable[Any]]:
            prompt = prefixes[i] + continuations[i]
            # max_tokens 1, not 0: llama-cpp-python reads 0 as "until the context is full"
            body = {"model": self.model_id, "prompt": prompt, "max_tokens": 1, "echo": True,
                    "logprobs": 1, "temperature": 0}
            return lambda: self._metered("/completions", body, lambda d: continuation_logprob(d, prefixes[i], prompt),
                                         prompt, reserved)

        return self._schedule(len(prefixes), lambda i: _text_estimate(prefixes[i] + continuations[i], 1), make,
                              on_result)

    def label_logprobs(self, prompts: list[str], labels: list[str], on_result: OnResult | None = None) -> list[Any]:
        """Each label's log-prob as the next token (from the server's top log-probs)."""
        caps = self.probe(["top_logprobs"])
        if not caps.top_logprobs:
            raise UsageError(f"the LLM server at {display_url(self.base_url)} does not return top log-probs, so "
                             "relevance classification cannot be scored there; use --scorers ql")

        def make(i: int, reserved: int) -> Callable[[], Awaitable[Any]]:
            body = {"model": self.model_id, "prompt": prompts[i], "max_tokens": 1, "logprobs": TOP_LOGPROBS,
                    "temperature": 0}
            return lambda: self._metered("/completions", body, lambda d: next_token_logprobs(d, labels),
                                         prompts[i], reserved)

        return self._schedule(len(prompts), lambda i: _text_estimate(prompts[i], 1), make, on_result)

    def count_tokens(self, text: str) -> int:
        return count_tokens(text)


def _response_format(schema: dict, form: str = "json_schema") -> dict:
    if form == "json_object":  # llama-cpp-python: grammar-constrained to the schema
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def _messages_text(messages: list[Message]) -> str:
    return "\n".join(m["content"] for m in messages)


def _text_estimate(text: str, completion: int) -> int:
    # tiktoken is not the server's tokenizer: reserve 25% more, plus the chat markup
    return int(count_tokens(text) * 1.25) + 16 + completion


def _chat_estimate(messages: list[Message], max_new_tokens: int) -> int:
    return _text_estimate(_messages_text(messages), max_new_tokens) + 4 * len(messages)


def fetch_single_model(base_url: str, api_key: str | None, timeout: float = 30.0) -> str:
    """The id of the one model a server serves (GET /models), for `--llm URL` without `--model`."""
    url = normalize_base_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise BackendError(f"LLM server {display_url(url)}: cannot connect ({type(exc).__name__})") from None
    data = _json_or_none(response)
    models = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict)] if isinstance(data, dict) else []
    if response.status_code != 200 or len(models) != 1:
        raise UsageError(f"--llm {display_url(url)}: name the model with --model (the server lists "
                         f"{len(models)} models)" if response.status_code == 200 else
                         f"--llm {display_url(url)}: GET /models answered HTTP {response.status_code}; give --model")
    return str(models[0])
