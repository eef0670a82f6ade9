"""The lean HTTP/1.1 client (gecko_cli.llm.http.wire) against scripted servers on 127.0.0.1.

Each test's server answers with exact bytes, so every way an HTTP/1.1 answer can be framed
(Content-Length in pieces, chunked, until close, an interim 100, gzip) and every way a connection
can end (Connection: close, an idle close, a drop, silence, nothing listening) is exercised. The
whole backend on this client against the fake OpenAI server is tests/integration/test_llm_http.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from contextlib import closing
from typing import Awaitable, Callable

import httpx
import pytest

from gecko_cli.llm.http import HttpBackend, wire
from gecko_cli.llm.http.wire import Target, WirePool, serves
from tests.support.fake_openai import FakeOpenAI

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes, *extra: str) -> bytes:
    """A 200 with Content-Length and any extra header lines."""
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head.encode(), body)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's body (the client always sends Content-Length)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    length = int(head.split("content-length:")[1].split("\r\n")[0])
    return await reader.readexactly(length)


def serve(script: Script, *requests: bytes, timeout: float = 5.0, settle: float = 0.0) -> tuple[list, int]:
    """POST each body in turn through one WirePool to a server running `script` per connection:
    (each reply or the exception it raised, connections the server accepted). `settle` waits
    between requests, so a close the server sent is seen before the next request."""
    accepted = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> list:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = WirePool(f"http://127.0.0.1:{port}/v1", headers={"Authorization": "Bearer sk-secret"},
                        timeout=timeout, connect_timeout=5.0)
        out: list = []
        for body in requests:
            try:
                out.append(await pool.post("/chat/completions", body))
            except httpx.TransportError as exc:
                out.append(exc)
            await asyncio.sleep(settle)
        await pool.aclose()
        server.close()
        return out

    replies = asyncio.run(main())
    return replies, accepted


def echo_forever(framing: Callable[[bytes], bytes | list[bytes]]) -> Script:
    """A keep-alive server: every request is answered with framing(its body), written piece by piece."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            answer = framing(await read_request(reader))
            for piece in answer if isinstance(answer, list) else [answer]:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
    return script


def test_content_length_answers_in_pieces_and_the_connection_is_kept() -> None:
    def bytewise(body: bytes) -> list[bytes]:
        data = ok(b'{"echo": %s}' % body, "Content-Type: application/json")
        return [data[i:i + 1] for i in range(len(data))]

    replies, accepted = serve(echo_forever(bytewise), b'{"n": 1}', b'{"n": 2}', b'{"n": 3}')
    assert [json.loads(r.content)["echo"]["n"] for r in replies] == [1, 2, 3]
    assert replies[0].status_code == 200 and replies[0].headers["content-type"] == "application/json"
    assert accepted == 1


def test_chunked_answers_with_extensions_and_trailers() -> None:
    def chunked(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4;name=value\r\n{\"a\"\r\n" + b"%x\r\n%s\r\n" % (len(b": 1}"), b": 1}")
                + b"0\r\nX-Trailer: t\r\n\r\n")

    replies, accepted = serve(echo_forever(chunked), b"{}", b"{}")
    assert [r.content for r in replies] == [b'{"a": 1}', b'{"a": 1}'] and accepted == 1


def test_an_interim_100_is_skipped_and_a_gzip_body_is_decoded() -> None:
    def interim(body: bytes) -> bytes:
        packed = gzip.compress(b'{"z": true}')
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(packed, "Content-Encoding: gzip")

    replies, _ = serve(echo_forever(interim), b"{}")
    assert replies[0].content == b'{"z": true}'


def test_connection_close_and_a_body_that_ends_with_the_connection_open_a_new_one() -> None:
    answers = iter([ok(b"{}", "Connection: close"), b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"e\": 1}", ok(b"{}")])

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(next(answers))
        await writer.drain()

    replies, accepted = serve(once, b"{}", b"{}", b"{}")
    assert [r.status_code for r in replies] == [200, 503, 200]
    assert replies[1].content == b'{"e": 1}' and accepted == 3


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"{}"))  # keep-alive by default, then the server's idle timeout closes it
        await writer.drain()

    replies, accepted = serve(one_then_close, b"{}", b"{}", settle=0.05)
    assert [r.status_code for r in replies] == [200, 200] and accepted == 2


def test_a_drop_silence_and_nothing_listening_raise_httpx_errors() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    (dropped,), _ = serve(drop, b"{}")
    (cut,), _ = serve(half, b"{}")
    (waited,), _ = serve(silent, b"{}", timeout=0.05)
    (nonsense,), _ = serve(garbage, b"{}")
    assert isinstance(dropped, httpx.RemoteProtocolError) and "without sending a response" in str(dropped)
    assert isinstance(cut, httpx.RemoteProtocolError) and "complete message body" in str(cut)
    assert isinstance(waited, httpx.ReadTimeout)
    assert isinstance(nonsense, httpx.RemoteProtocolError)

    async def refused() -> None:
        pool = WirePool("http://127.0.0.1:9/v1", headers={}, timeout=5, connect_timeout=5)
        await pool.post("/models", b"{}")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(refused())


def test_a_cancelled_request_leaves_no_connection_to_reuse() -> None:
    seen: list[bytes] = []

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            seen.append(body)
            if body == b'"slow"':
                await asyncio.sleep(5)
            writer.write(ok(body))
            await writer.drain()

    async def main() -> tuple[bytes, int]:
        server = await asyncio.start_server(slow_first, "127.0.0.1", 0)
        pool = WirePool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", headers={}, timeout=5,
                        connect_timeout=5)
        task = asyncio.ensure_future(pool.post("/x", b'"slow"'))
        while not seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reply = await pool.post("/x", b'"fast"')  # on a new connection: the old one is out of step
        open_now = len(pool._open)
        await pool.aclose()
        server.close()
        return reply.content, open_now

    content, open_now = asyncio.run(main())
    assert content == b'"fast"' and open_now == 1


def test_requests_carry_the_path_host_and_headers_and_the_pool_never_shows_the_key() -> None:
    heads: list[str] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        heads.append(head)
        await reader.readexactly(int(head.lower().split("content-length:")[1].split("\r\n")[0]))
        writer.write(ok(b"{}"))
        await writer.drain()

    serve(record, '{"q": "é"}'.encode())
    lines = heads[0].split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert "Authorization: Bearer sk-secret" in lines and "Content-Type: application/json" in lines
    assert any(line.startswith("Host: 127.0.0.1:") for line in lines)
    assert "Content-Length: 11" in lines  # bytes, not characters
    pool = WirePool("http://127.0.0.1:9/v1", headers={"Authorization": "Bearer sk-secret"}, timeout=1,
                    connect_timeout=1)
    assert "sk-secret" not in repr(pool)


def test_which_urls_the_lean_client_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert serves("http://127.0.0.1:8000/v1") and serves("http://[::1]:8000/v1")
    assert not serves("https://api.openai.com/v1") and not serves("http://user:pw@127.0.0.1:8000/v1")
    assert not serves("http://127.0.0.1:port/v1")  # httpx reports what is wrong with it
    assert Target.of("http://[::1]:8000/v1") == Target("::1", 8000, "[::1]:8000", "/v1")
    assert Target.of("http://localhost/v1") == Target("localhost", 80, "localhost", "/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert not serves("http://127.0.0.1:8000/v1")  # httpx applies the proxy, so httpx sends it


def test_the_backend_uses_the_lean_client_for_http_and_httpx_for_a_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    prompts = [[{"role": "user", "content": f"Passage: the {w} study changes the glacier orbit."}]
               for w in ("river", "enzyme", "copper")]
    schema = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    with FakeOpenAI() as server:
        with closing(HttpBackend(server.base_url, "fake-model", concurrency=2)) as llm:
            on_wire = llm.generate_json(prompts, schema, temperature=0.7, seed=[1, 2, 3], max_new_tokens=48)
            assert llm.connection._wire is not None and not llm.connection._clients
        with closing(HttpBackend(server.base_url, "fake-model", concurrency=2, transport=server.transport())) as llm:
            on_httpx = llm.generate_json(prompts, schema, temperature=0.7, seed=[1, 2, 3], max_new_tokens=48)
            assert llm.connection._wire is None and llm.connection._clients
    assert on_wire == on_httpx and all(json.loads(v)["query"].startswith("what is ") for v in on_wire)
    assert wire.KEEPALIVE_EXPIRY > 0
