"""A lean HTTP/1.1 client for a plain-`http://` server: keep-alive connections as asyncio Protocols.

Why it exists: behind `httpx.AsyncClient.post`, httpx 0.29 and httpcore 1.0 spent 1.2-1.5 ms of
CPU per request at concurrency 64 (the pool re-scans every connection for every waiting request
and checks each idle socket's readability through anyio's attribute lookups; h11 builds events;
the client builds URL, cookie and header objects), so the client thread, not the server, set the
pace of `gecko generate --llm URL`. A local OpenAI-compatible server (vLLM, SGLang, llama.cpp,
Ollama, TGI) speaks plain HTTP/1.1 with JSON bodies: this module does exactly that, a request
being one `write` and its answer parsed from the bytes `data_received` hands over, in under
0.05 ms of CPU.

What it is not: it serves only `http://` URLs without credentials and without a proxy in the
environment (`serves`); https, proxies, userinfo and any injected `transport` go through httpx
(client.py). Its failures are httpx's own exception classes (ConnectError, ConnectTimeout,
ReadTimeout, ReadError, RemoteProtocolError), so the retry policy and the messages built from the
class name do not depend on which client sent the request.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import NamedTuple
from urllib.parse import urlsplit
from urllib.request import getproxies

import httpx

from gecko_cli import __version__

KEEPALIVE_EXPIRY = 5.0  # as httpcore: an idle connection older than this is closed, not reused
MAX_HEAD = 64 * 1024  # a status line + headers larger than this is not an HTTP server we can talk to
_NO_BODY = frozenset({204, 304})


class Reply(NamedTuple):
    """One HTTP answer: status, headers (lower-case names) and the whole (decoded) body."""

    status_code: int
    headers: dict[str, str]
    content: bytes


def serves(base_url: str) -> bool:
    """Whether this client may replace httpx for `base_url`: plain http, no user:password in the
    URL, and no proxy variable that httpx (trust_env) would apply to it.

    >>> serves("http://127.0.0.1:8000/v1"), serves("https://api.openai.com/v1"), serves("http://u:p@h/v1")
    (True, False, False)
    """
    parts = urlsplit(base_url)
    try:
        parts.port  # noqa: B018 - a port that is not a number is httpx's to report, as before
    except ValueError:
        return False
    if parts.scheme != "http" or "@" in parts.netloc or not parts.hostname:
        return False
    proxies = getproxies()
    return "http" not in proxies and "all" not in proxies


class Target(NamedTuple):
    """Where requests go: the address to dial, the Host header and the path every request starts with."""

    host: str
    port: int
    authority: str
    prefix: str

    @classmethod
    def of(cls, base_url: str) -> "Target":
        """`http://[::1]:8000/v1` -> Target("::1", 8000, "[::1]:8000", "/v1")."""
        parts = urlsplit(base_url)
        return cls(parts.hostname or "", parts.port or 80, parts.netloc, parts.path.rstrip("/"))


class _Exchange(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight, its answer parsed as bytes arrive.

    States: "head" (waiting for the blank line), "length" (Content-Length bytes), "chunk" /
    "data" / "trailer" (chunked coding), "eof" (no length: the body ends with the connection),
    "idle" (no request in flight).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._state = "idle"
        self._buf = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last = 0.0  # loop time of the last byte received (the read timeout is inactivity, as httpx's)
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep = True
        self._need = 0
        self._chunks: list[bytes] = []
        self._heard = False  # any byte of the current answer received

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is out of step
            self.abort()
            return
        self._heard = True
        self._last = self.loop.time()
        self._buf += data
        try:
            self._advance()
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self.closed = True
        if self._waiter is not None:
            if self._state == "eof":
                body = bytes(self._buf)
                self._buf.clear()
                self._finish(body, keep=False)
            else:
                self._fail(httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body" if self._heard else
                    "Server disconnected without sending a response."))
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None:
            self._fail(httpx.ReadError(str(exc)) if exc is not None else
                       httpx.RemoteProtocolError("Server disconnected without sending a response."))

    # -- one request ---------------------------------------------------------------------------

    async def exchange(self, request: bytes, timeout: float) -> Reply:
        """Send `request` (head and body) and wait for its whole answer; raises httpx errors."""
        assert self.transport is not None and self._waiter is None
        self._waiter = waiter = self.loop.create_future()
        self._state, self._heard, self._keep = "head", False, True
        self._timeout, self._last = timeout, self.loop.time()
        self._timer = self.loop.call_at(self._last + timeout, self._on_timer)
        self.transport.write(request)
        return await waiter

    @property
    def reusable(self) -> bool:
        """Idle, open, and the last answer did not say `Connection: close`."""
        return self._waiter is None and self._keep and not self.closed and self._state == "idle"

    def abort(self) -> None:
        """Drop the connection at once (a request was abandoned mid-way, or the answer made no sense)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close politely (no request in flight)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _on_timer(self) -> None:
        if self._waiter is None:
            return
        quiet = self.loop.time() - self._last
        if quiet < self._timeout:  # bytes came meanwhile: wait out the rest of the inactivity window
            self._timer = self.loop.call_at(self._last + self._timeout, self._on_timer)
            return
        self._fail(httpx.ReadTimeout("timed out"))
        self.abort()

    def _finish(self, body: bytes, keep: bool = True) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = "idle"
        self._keep = self._keep and keep
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf:  # more bytes than the answer: do not trust this connection again
            self._keep = False
        if waiter is not None and not waiter.done():
            waiter.set_result(Reply(self._status, self._headers, _decoded(body, self._headers)))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._state, self._keep = "idle", False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- parsing -------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Consume what the buffer holds of the answer; finish it when it is whole."""
        buf = self._buf
        while self._waiter is not None:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise httpx.RemoteProtocolError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._start(head)
            elif state == "length":
                if len(buf) < self._need:
                    return
                body = bytes(buf[:self._need])
                del buf[:self._need]
                self._finish(body)
            elif state == "chunk":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                try:
                    size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("malformed chunk size") from None
                del buf[:end + 2]
                self._state, self._need = ("data", size) if size else ("trailer", 0)
            elif state == "data":
                if len(buf) < self._need + 2:
                    return
                self._chunks.append(bytes(buf[:self._need]))
                del buf[:self._need + 2]
                self._state = "chunk"
            elif state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[:end + 2]
                if end == 0:
                    body, self._chunks = b"".join(self._chunks), []
                    self._finish(body)
            else:  # "eof": the body is everything until the server closes
                return

    def _start(self, head: bytes) -> None:
        """Read a status line and headers; choose how the body ends (RFC 9112 §6.3)."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise httpx.RemoteProtocolError("malformed header line")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return
        self._status, self._headers = status, headers
        connection = headers.get("connection", "").lower()
        self._keep = "close" not in connection if parts[0] == "HTTP/1.1" else "keep-alive" in connection
        if status in _NO_BODY:
            self._finish(b"")
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state, self._chunks = "chunk", []
        elif "content-length" in headers:
            try:
                self._state, self._need = "length", int(headers["content-length"])
            except ValueError:
                raise httpx.RemoteProtocolError("malformed Content-Length") from None
        else:
            self._state, self._keep = "eof", False


def _decoded(body: bytes, headers: dict[str, str]) -> bytes:
    """The body without a gzip/deflate coding (none is asked for, but a server may send one anyway);
    a body that does not decode is returned as it is (it then fails as JSON and is retried)."""
    coding = headers.get("content-encoding", "").strip().lower()
    if not body or coding not in ("gzip", "deflate", "x-gzip"):
        return body
    try:
        if coding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    except zlib.error:
        return body


class WirePool:
    """Keep-alive connections to one server, opened as needed (the caller bounds how many requests
    are in flight, so the pool never waits for a free connection), reused newest first."""

    def __init__(self, base_url: str, *, headers: dict[str, str], timeout: float, connect_timeout: float) -> None:
        self.target = Target.of(base_url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        fixed = {"Host": self.target.authority, "Accept": "application/json", "User-Agent": f"gecko/{__version__}",
                 "Content-Type": "application/json", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: list[_Exchange] = []
        self._open: set[_Exchange] = set()

    def __repr__(self) -> str:  # the headers hold the key: never shown
        return f"WirePool({self.target.authority!r})"

    async def post(self, path: str, body: bytes) -> Reply:
        """POST `body` (JSON) to the base path + `path`; raises httpx.TransportError subclasses."""
        request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            (self.target.prefix + path).encode("latin-1"), self._head, len(body), body)
        conn = self._reuse() or await self._connect()
        try:
            reply = await conn.exchange(request, self.timeout)
        except BaseException:  # failed or cancelled mid-exchange: the connection's state is unknown
            conn.abort()
            self._open.discard(conn)
            raise
        if conn.reusable:
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        return reply

    def _reuse(self) -> _Exchange | None:
        """The most recently used idle connection still open and fresh, else None."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and conn.loop.time() - conn.idle_since < KEEPALIVE_EXPIRY:
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Exchange(loop), self.target.host, self.target.port),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout("timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from None
        self._open.add(conn)
        return conn

    async def aclose(self) -> None:
        """Close every connection (requests still in flight fail as disconnected)."""
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost before the loop stops
