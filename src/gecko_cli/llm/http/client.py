"""The wire to one OpenAI-compatible server: pooled async connections, each POST retried.

Requests run on an event loop in a background thread; callers stay synchronous batch calls, and
inside a batch up to `concurrency` requests are in flight. A plain `http://` server (the usual
local vLLM, SGLang, llama.cpp) is spoken to by wire.py's lean HTTP/1.1 client: httpx 0.28/0.29
spent 1.2-1.5 ms of CPU per request (mostly in its pool), as much as the whole per-record budget
at 640 records/s, where wire.py spends under 0.05 ms. Everything else (https, a proxy from the
environment, user:password in the URL, an injected `transport`) goes through
`httpx.AsyncClient`s of at most `POOL_CONNECTIONS` connections each (round-robin): httpx's pool
spends connections x waiting-requests work on every request (encode/httpx#3215), so several small
pools serve many connections far faster than one large one (benchmarks/results/generate_http.json).
Both raise httpx's exception classes, so what follows does not depend on which one sent the request.

Every request is retried on 408/409/429/5xx, timeouts, dropped connections and unusable 200
answers (policy: retry.py); a server that stays down raises BackendError (exit 3); a request the
server refuses for its own content (400) raises CallError, which `schedule` turns into a
`Failure` for that record.

A `transport` (e.g. `httpx.MockTransport`) replaces the network for every client built here,
as in httpx itself: the tests answer in-process. The pools then share it, and its limits are its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from typing import Any, Awaitable, Callable, Mapping

import httpx

from gecko_cli.contract.errors import BackendError
from gecko_cli.llm.base import Failure, OnResult
from gecko_cli.llm.http import wire
from gecko_cli.llm.http.answers import CallError, Unusable, json_of, usage_of
from gecko_cli.llm.http.retry import Verdict, classify, retry_delay
from gecko_cli.llm.http.urls import display_url
from gecko_cli.llm.tokens import BudgetExhausted, TokenMeter, count_tokens

POOL_CONNECTIONS = 16  # per httpx client; more clients beyond that (see the module docstring)
JSON_HEADERS = {"Content-Type": "application/json"}
Call = Callable[[], Awaitable[Any]]
Answer = tuple[int, Mapping[str, str], bytes]  # status, headers, body
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode  # as httpx's json=


def encode_body(body: dict) -> bytes:
    """A request body as httpx's `json=` sends it (compact UTF-8), encoded once for every retry.

    >>> encode_body({"model": "m", "max_tokens": 1, "stop": ["\\n"]})
    b'{"model":"m","max_tokens":1,"stop":["\\\\n"]}'
    """
    return _encode(body).encode("utf-8")


class Connection:
    """Requests to `base_url` (already normalised), counted by `meter`; the key only in a header."""

    def __init__(self, base_url: str, *, api_key: str | None, concurrency: int, max_retries: int,
                 timeout: float, meter: TokenMeter, seed: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.meter = meter
        self.transport = transport
        self._secret = api_key or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[httpx.AsyncClient] = []
        self._wire: wire.WirePool | None = None
        self._turn = 0
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:  # never the key
        return f"Connection({display_url(self.base_url)!r})"

    # -- event loop plumbing -------------------------------------------------------------------

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the loop thread (started, and the pools opened, on first use)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="gecko-http", daemon=True)
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self) -> None:
        self._sem = asyncio.Semaphore(self.concurrency)
        connect = min(self.timeout, 30.0)
        if self.transport is None and wire.serves(self.base_url):
            self._wire = wire.WirePool(self.base_url, headers=self._headers, timeout=self.timeout,
                                       connect_timeout=connect)
            return
        pools = -(-self.concurrency // POOL_CONNECTIONS)
        size = -(-self.concurrency // pools)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        timeout = httpx.Timeout(self.timeout, connect=connect)
        self._clients = [httpx.AsyncClient(base_url=self.base_url, headers=self._headers, limits=limits,
                                           timeout=timeout, transport=self.transport) for _ in range(pools)]

    def _client(self) -> httpx.AsyncClient:
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    async def _send(self, path: str, payload: bytes) -> Answer:
        """One POST of a JSON body, by the lean client or httpx: (status, headers, body)."""
        if self._wire is not None:
            return await self._wire.post(path, payload)
        response = await self._client().post(path, content=payload, headers=JSON_HEADERS)
        return response.status_code, response.headers, response.content

    def close(self) -> None:
        """Cancel the requests still in flight, close the connection pools and stop the loop thread."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        # After Ctrl-C or SIGTERM the main thread stops waiting but a batch is still running here:
        # cancel it and await every task, so none later fails on a closed client and asyncio does
        # not print "Task exception was never retrieved" after the run's one line.
        closer = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not closer]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients:
            await client.aclose()
        if self._wire is not None:
            await self._wire.aclose()

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by `***` (servers quote a wrong key back)."""
        return text.replace(self._secret, "***") if self._secret else text

    # -- one request, with retries -------------------------------------------------------------

    async def post(self, path: str, body: dict, parse: Callable[[Any], Any],
                   trust_check: bool = False) -> tuple[Any, Any]:
        """POST until a usable answer: (parsed value, raw JSON). Raises CallError or BackendError.

        With `trust_check` (the probe) an unusable 200 raises Unusable and any error status raises
        CallError at once: some servers answer an unsupported parameter with a 500, not a 400.
        """
        assert self._sem is not None
        payload = encode_body(body)
        retry = 0
        while True:
            headers: Mapping[str, str] = {}
            try:
                async with self._sem:
                    status, headers, content = await self._send(path, payload)
                if status == 200:
                    data = json_of(content)
                    if data is None:
                        raise Unusable("the body is not JSON")
                    return parse(data), data
                verdict = classify(status, json_of(content))
            except Unusable as exc:
                if trust_check:
                    raise
                verdict = Verdict("retry", f"unusable answer: {exc}")
            except httpx.TimeoutException:
                verdict = Verdict("retry", f"no answer within {self.timeout:g} s")
            except httpx.TransportError as exc:
                verdict = Verdict("retry", f"connection error ({type(exc).__name__})")
            where = f"{display_url(self.base_url)}{path}"
            reason = self.redact(verdict.reason)
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

    async def metered(self, path: str, body: dict, parse: Callable[[Any], Any], prompt_text: Callable[[], str],
                      reserved: int, completion_of: Callable[[Any], str] = lambda value: "") -> Any:
        """One call whose tokens were reserved: settle them with the server's usage or tiktoken.

        `prompt_text` is asked for only when the server sends no usage (joining a chat's messages
        for a count nobody reads would be work for nothing on every call).
        """
        try:
            value, data = await self.post(path, body, parse)
        except BaseException:
            self.meter.release(reserved)
            raise
        p, c = usage_of(data)
        self.meter.settle(reserved, p if p is not None else count_tokens(prompt_text()),
                          c if c is not None else count_tokens(completion_of(value)))
        return value

    # -- a batch of calls ----------------------------------------------------------------------

    async def _batch(self, calls: list[Call], on_result: OnResult | None) -> list[Any]:
        """Run calls concurrently (bounded by the semaphore); per-record failures become Failure."""
        async def one(i: int, call: Call) -> Any:
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

    def schedule(self, count: int, estimate: Callable[[int], int], make: Callable[[int, int], Call],
                 on_result: OnResult | None) -> list[Any]:
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
        results = self.run(self._batch(calls, on_result)) if calls else []
        if stopped is not None:
            raise stopped
        return results
