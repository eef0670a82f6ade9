"""The fake OpenAI server (tests/support/fake_openai.py): shapes, determinism, faults, hold, auth, log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.fake_openai import CHAT, COMPLETIONS, Fault, FakeOpenAI, always, body_hash, fail_first, fail_share

SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
PASSAGE = ("Alterations of the architecture of cerebral white matter in the developing human brain can affect "
           "cortical development and result in functional disabilities.")


def chat_body(text: str = PASSAGE, schema: dict | None = SCHEMA, **extra) -> dict:
    body = {"model": "fake-model", "temperature": 0.7, "seed": 1,
            "messages": [{"role": "system", "content": "Reply with JSON."},
                         {"role": "user", "content": f"Task: find it\nPassage: {text}"}], **extra}
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "q", "schema": schema, "strict": True}}
    return body


@pytest.fixture(scope="module")
def server():
    with FakeOpenAI() as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=5) as c:
        yield c


def test_models(client):
    assert client.get("/models").json() == {"object": "list", "data": [
        {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake-openai"}]}


def test_chat_json_schema_shape_and_determinism(client):
    r = client.post("/chat/completions", json=chat_body())
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "fake-model" and out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int)
    choice = out["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    query = json.loads(choice["message"]["content"])["query"]
    assert query.startswith("what is ") and len(query.split()) == 5
    assert set(query.split()[2:]) <= set(PASSAGE.lower().replace(".", "").split())
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 20
    again = client.post("/chat/completions", json=chat_body()).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    others = {client.post("/chat/completions", json=chat_body(seed=s)).json()["choices"][0]["message"]["content"]
              for s in range(2, 8)}
    assert len(others) >= 4  # a different body usually picks other words


def test_chat_schema_fills_required_fields(client):
    schema = {"type": "object", "properties": {"task": {"type": "string"}, "query": {"type": "string"},
                                               "n": {"type": "integer"}}, "required": ["task", "query", "n"]}
    value = json.loads(client.post("/chat/completions", json=chat_body(schema=schema)).json()
                       ["choices"][0]["message"]["content"])
    assert set(value) == {"task", "query", "n"} and isinstance(value["task"], str) and isinstance(value["n"], int)


def test_chat_without_schema_is_plain_text():
    with FakeOpenAI(honour_json_schema=False) as s, httpx.Client(base_url=s.base_url) as c:
        for body in (chat_body(schema=None), chat_body()):
            content = c.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            assert content.startswith("What is ")
            with pytest.raises(ValueError):
                json.loads(content)


def test_chat_logprobs(client):
    choice = client.post("/chat/completions", json=chat_body(logprobs=True, top_logprobs=3)).json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    for e in entries:
        assert e["logprob"] <= 0 and bytes(e["bytes"]).decode() == e["token"]
        assert len(e["top_logprobs"]) == 3 and e["top_logprobs"][0]["token"] == e["token"]
        assert all(set(t) == {"token", "logprob", "bytes"} and t["logprob"] <= 0 for t in e["top_logprobs"])
    with FakeOpenAI(honour_logprobs=False) as s:
        assert httpx.post(s.base_url + "/chat/completions",
                          json=chat_body(logprobs=True, top_logprobs=3)).json()["choices"][0]["logprobs"] is None


def test_completions_echo_logprobs(client):
    prompt = "Passage: the sky is blue.\nQuery: why is the sky blue"
    out = client.post("/completions", json={"model": "m", "prompt": prompt, "echo": True, "logprobs": 1,
                                            "max_tokens": 0}).json()
    assert out["object"] == "text_completion" and out["usage"]["prompt_tokens"] == 11
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == prompt and "".join(lp["tokens"]) == prompt and len(lp["tokens"]) == 11
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v < 0 for v in lp["token_logprobs"][1:])
    assert lp["text_offset"] == [prompt.index(t, o) for t, o in zip(lp["tokens"], lp["text_offset"])]
    assert lp["text_offset"][lp["tokens"].index("\nQuery:")] == prompt.index("\nQuery:")
    other = client.post("/completions", json={"model": "m", "prompt": "Passage: rain is wet.\nQuery: why is the sky blue",
                                              "echo": True, "logprobs": 1, "max_tokens": 0}).json()
    assert other["choices"][0]["logprobs"]["token_logprobs"][-5:] != lp["token_logprobs"][-5:]  # context matters
    generated = client.post("/completions", json={"model": "m", "prompt": prompt, "echo": True, "logprobs": 2,
                                                  "max_tokens": 3}).json()["choices"][0]
    assert len(generated["logprobs"]["tokens"]) == 14 and generated["text"].startswith(prompt)
    assert all(len(t) == 2 for t in generated["logprobs"]["top_logprobs"][1:])


def test_completions_yes_no_and_batches(client):
    out = client.post("/completions", json={"model": "m", "prompt": ["Q: a\nAnswer:", "Q: b\nAnswer:", [1, 2, 3]],
                                            "logprobs": 5, "max_tokens": 1}).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2] and out["usage"]["prompt_tokens"] == 3 + 3 + 3
    for choice in out["choices"][:2]:
        top = choice["logprobs"]["top_logprobs"][0]
        assert len(top) == 5 and top[" Yes"] != top[" No"] and max(top.values()) <= 0
        assert choice["text"] == max((" Yes", " No"), key=top.get) == choice["logprobs"]["tokens"][0]
        assert choice["logprobs"]["text_offset"] == [len("Q: a\nAnswer:")]
    plain = client.post("/completions", json={"model": "m", "prompt": "Hello there"}).json()["choices"][0]
    assert plain["logprobs"] is None and plain["text"] and plain["finish_reason"] in ("stop", "length")


def test_errors(client):
    for r in (client.post("/nope", json={}), client.get("/chat/completions")):
        assert r.status_code in (404, 405) and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert client.post("/completions", content=b"{not json").status_code == 400
    assert client.post("/chat/completions", json={"model": "m"}).status_code == 400


def test_fault_plan_and_log():
    plan = fail_first(3, [Fault("429", retry_after=0.5, retry_after_ms=500), "500", "503"])
    with FakeOpenAI(plan=plan) as s, httpx.Client(base_url=s.base_url) as c:
        body = chat_body()
        r = c.post("/chat/completions", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "0.5" and r.headers["retry-after-ms"] == "500"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert [c.post("/chat/completions", json=body).status_code for _ in range(3)] == [500, 503, 200]
        assert c.get("/models").status_code == 200  # helper plans only touch the completions endpoints
        h = body_hash(body)
        assert [(r.body_hash, r.attempt, r.status) for r in s.requests if r.path == CHAT] == [
            (h, 0, 429), (h, 1, 500), (h, 2, 503), (h, 3, 200)]
        assert s.count(CHAT) == 4 and s.count(status=200) == 2 and s.count(COMPLETIONS) == 0
        assert s.answered() == {h: 1}


def test_fault_kinds():
    faults = {"d": Fault("drop"), "m": Fault("malformed"), "e": Fault("empty"), "q": Fault("quota"),
              "s": Fault("slow", delay=0.3), "4": Fault("404")}
    assert always("400", when=lambda path, body, attempt: False)(CHAT, {}, 0) is None
    assert always("400")(CHAT, {}, 5).kind == "400"
    with FakeOpenAI(plan=lambda path, body, attempt: faults.get(body.get("user"))) as s:
        with httpx.Client(base_url=s.base_url) as c:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                c.post("/chat/completions", json=chat_body(user="d"))
            r = c.post("/chat/completions", json=chat_body(user="m"))
            assert r.status_code == 200
            with pytest.raises(ValueError):
                r.json()
            assert c.post("/chat/completions", json=chat_body(user="e")).json()["choices"] == []
            q = c.post("/chat/completions", json=chat_body(user="q"))
            assert q.status_code == 429 and q.json()["error"]["code"] == "insufficient_quota"
            assert c.post("/completions", json={"prompt": "x", "user": "4"}).status_code == 404
            started = time.perf_counter()
            assert c.post("/chat/completions", json=chat_body(user="s")).status_code == 200
            assert time.perf_counter() - started >= 0.3
        assert s.count(status="drop") == 1 and s.count(status=200) == 3
        assert len(s.answered()) == 1  # malformed and empty 200s are not valid answers


def test_fail_share_is_deterministic():
    bodies = [chat_body(seed=i) for i in range(400)]
    a, b = fail_share(0.25, ["429", "500"], seed=3), fail_share(0.25, ["429", "500"], seed=3)
    failing = [body_hash(x) for x in bodies if a(CHAT, x, 0)]
    assert failing == [body_hash(x) for x in bodies if b(CHAT, x, 0)]
    assert 60 < len(failing) < 140 and {a(CHAT, x, 0).kind for x in bodies if a(CHAT, x, 0)} == {"429", "500"}
    assert not any(a(CHAT, x, 1) for x in bodies)


def test_api_key():
    with FakeOpenAI(api_key="sk-secret") as s:
        r = httpx.post(s.base_url + "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" and "sk-wrong" not in r.text
        assert httpx.get(s.base_url + "/models").status_code == 401
        ok = httpx.post(s.base_url + "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-secret"})
        assert ok.status_code == 200


def test_hold_after_and_latency_overlap():
    hold = threading.Event()
    with (FakeOpenAI(latency=0.2, hold=hold, hold_after=2) as s, ThreadPoolExecutor(64) as pool,
          httpx.Client(base_url=s.base_url, timeout=5, limits=httpx.Limits(max_connections=100)) as c):
        post = lambda i: c.post("/chat/completions", json=chat_body(seed=i))  # noqa: E731
        first = [pool.submit(post, i) for i in range(2)]
        assert all(f.result().status_code == 200 for f in first)
        held = [pool.submit(post, i) for i in range(2, 66)]
        time.sleep(0.5)
        assert not any(f.done() for f in held) and s.count() == 2 and s.received == 66
        started = time.perf_counter()
        hold.set()
        assert all(f.result().status_code == 200 for f in held)
        assert time.perf_counter() - started < 1.5  # 64 concurrent connections overlapped their latency
        assert s.count(CHAT, 200) == 66


def test_stop_while_held():
    with ThreadPoolExecutor(1) as pool:
        with FakeOpenAI(hold=threading.Event()) as s:
            pending = pool.submit(httpx.get, s.base_url + "/models", timeout=5)
            time.sleep(0.2)
        with pytest.raises(httpx.TransportError):
            pending.result(timeout=2)


def test_subprocess_mode(tmp_path: Path):
    port_file = tmp_path / "port"
    script = Path(__file__).resolve().parents[1] / "support" / "fake_openai.py"
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--port-file", str(port_file),
                             "--latency", "0.01"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        port = int(port_file.read_text())
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"] == "fake-model"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_transport_mode_answers_as_the_socket_does(client):
    """`FakeOpenAI.transport()`: the same answers, faults and log, in-process (no socket)."""
    body = chat_body()
    server = FakeOpenAI(plan=fail_first(1, [Fault("429", retry_after=0.5)]))
    with httpx.Client(transport=server.transport(), base_url=server.base_url) as c:
        refused = c.post("/chat/completions", json=body)
        in_process = c.post("/chat/completions", json=body).json()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "0.5"
    over_socket = client.post("/chat/completions", json=body).json()
    assert in_process["choices"] == over_socket["choices"] and in_process["usage"] == over_socket["usage"]
    assert [(r.path, r.status) for r in server.requests] == [(CHAT, 429), (CHAT, 200)]
    dropping = FakeOpenAI(plan=always("drop"))
    with httpx.Client(transport=dropping.transport(), base_url=dropping.base_url) as c, \
            pytest.raises(httpx.RemoteProtocolError):
        c.post("/chat/completions", json=body)
