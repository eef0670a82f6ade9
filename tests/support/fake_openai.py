"""A fake OpenAI-compatible HTTP/1.1 server (stdlib asyncio only) for fault-tolerance tests and benchmarks.

Answers are synthetic but have the exact OpenAI JSON shapes, and are deterministic: the same
request body always gets the same content. A `plan(path, body, attempt)` injects faults per
request (429/500/503/400/401/404, quota, dropped socket, malformed or empty 200s, slow answers).

In-process (a daemon thread runs the event loop):

    with FakeOpenAI(latency=0.1, plan=fail_first(1, ["429"])) as server:
        httpx.post(server.base_url + "/chat/completions", json={...})
        server.count(status=429)

Without a socket, as an `httpx.MockTransport` (the same answers, faults and log; a client's
timeouts do not apply, so a "slow" fault only delays):

    server = FakeOpenAI(plan=...)
    HttpBackend(server.base_url, "fake-model", transport=server.transport())

As a subprocess (client and server do not share a GIL):

    python tests/support/fake_openai.py --port 0 --latency 0.1 --port-file F [--fail-share 0.1] [--api-key K]

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions; anything else 404.
The answers themselves (tokens, made-up log-probs, schema filling) are fake_answers.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import signal
import threading
from typing import Any, Callable, NamedTuple

try:
    from tests.support.fake_answers import body_hash, chat_answer, completion_answer
    from tests.support.fake_faults import (
        CHAT, COMPLETIONS, FAULT_KINDS, GENERATION_PATHS, MODELS, Fault, Plan, error_body, FAULT_BODIES, always, fail_first,
        fail_share,
    )
except ImportError:  # run as a script: python tests/support/fake_openai.py
    from fake_answers import body_hash, chat_answer, completion_answer  # type: ignore[no-redef]
    from fake_faults import (  # type: ignore[no-redef]
        CHAT, COMPLETIONS, FAULT_KINDS, GENERATION_PATHS, MODELS, Fault, Plan, error_body, FAULT_BODIES, always, fail_first,
        fail_share,
    )

__all__ = ["CHAT", "COMPLETIONS", "FAULT_KINDS", "GENERATION_PATHS", "MODELS", "FakeOpenAI", "Fault", "Plan", "Reply",
           "Request", "always", "body_hash", "fail_first", "fail_share"]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Request(NamedTuple):
    """One log entry: status is the HTTP status sent, or "drop"."""

    path: str
    body_hash: str
    attempt: int
    status: int | str


class Reply(NamedTuple):
    """One response, before it is written to a socket or handed to httpx."""

    status: int
    payload: bytes
    headers: dict[str, str] = {}

    def http(self) -> bytes:
        """The HTTP/1.1 response bytes."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(self.payload)}\r\n{extra}\r\n").encode() + self.payload


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

    def transport(self) -> Any:
        """An `httpx.MockTransport` answering as this server would, with no socket (sync or async
        clients); a dropped connection raises `httpx.RemoteProtocolError`, as a real one does."""
        import httpx

        def response(request: httpx.Request, reply: Reply | None) -> httpx.Response:
            if reply is None:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
            return httpx.Response(reply.status, headers={"content-type": "application/json", **reply.headers},
                                  content=reply.payload, request=request)

        def handle(request: httpx.Request) -> Any:
            args = (request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()},
                    request.content)
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # a sync client: answer here, on a loop of our own
                return response(request, asyncio.run(self._handle(*args)))

            async def answer() -> httpx.Response:
                return response(request, await self._handle(*args))
            return answer()

        return httpx.MockTransport(handle)

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
                reply = await self._handle(method, target.split("?", 1)[0], headers, raw)
                if reply is None:  # drop
                    return
                response = reply.http()
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

    def _log(self, path: str, digest: str, attempt: int, status: int | str, valid: bool = False) -> None:
        with self._lock:
            self.requests.append(Request(path, digest, attempt, status))
            if valid and path in GENERATION_PATHS:
                self._answered[digest] += 1

    async def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply | None:
        """The response, or None to drop the connection."""
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

        def answer(status: int, payload: dict, extra: dict[str, str] | None = None) -> Reply:
            self._log(path, digest, attempt, status, valid=status == 200)
            return Reply(status, json.dumps(payload).encode(), extra or {})

        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return answer(401, error_body("Incorrect API key provided. You can find your API key at "
                                      "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                                      "invalid_api_key"))
        routes = {MODELS: "GET", CHAT: "POST", COMPLETIONS: "POST"}
        if path not in routes:
            return answer(404, error_body(f"Invalid URL ({method} {path})", "invalid_request_error"))
        if routes[path] != method:
            return answer(405, error_body(f"Method {method} not allowed for {path}", "invalid_request_error"))
        if parse_error:
            return answer(400, error_body(parse_error, "invalid_request_error"))

        fault = self.plan(path, body or {}, attempt) if self.plan else None
        if fault is not None:
            if fault.kind == "drop":
                self._log(path, digest, attempt, "drop")
                return None
            if fault.kind == "malformed":
                self._log(path, digest, attempt, 200)
                return Reply(200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [<html>')
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.kind != "empty":
                status, payload = FAULT_BODIES[fault.kind]
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
            payload = self._answer(path, body, digest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return answer(400, error_body(f"Invalid request: {e}", "invalid_request_error"))
        if fault is not None and fault.kind == "empty":
            payload["choices"] = []
            self._log(path, digest, attempt, 200)
            return Reply(200, json.dumps(payload).encode())
        return answer(200, payload)

    def _answer(self, path: str, body: dict, digest: str) -> dict:
        """The answer of a completions endpoint, as this server's `honour_*` flags allow."""
        if path == CHAT:
            return chat_answer(body, digest, model=self.model, honour_json_schema=self.honour_json_schema,
                               honour_logprobs=self.honour_logprobs)
        return completion_answer(body, digest, model=self.model, honour_logprobs=self.honour_logprobs,
                                 honour_echo=self.honour_echo, echo_shift=self.echo_shift)


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
