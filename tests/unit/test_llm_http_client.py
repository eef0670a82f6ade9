"""The HTTP backend's client logic in-process: `HttpBackend(transport=...)` on an
`httpx.MockTransport` — the fake OpenAI server's own answers and faults (tests/support/fake_openai.py)
without a socket, or a few lines of handler. Retries, Retry-After, give-up, quota, keys, the
capability probe, JSON repair, budgets, streaming into the cache, GET /models.

The same behaviour through real `gecko` processes and a real socket is tests/integration/test_llm_http.py.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from gecko_cli.contract.errors import BackendError, UsageError
from gecko_cli.llm.base import Failure
from gecko_cli.llm.cache import CachedBackend, ResultCache
from gecko_cli.llm.http import HttpBackend, fetch_single_model, retry
from gecko_cli.llm.http.backend import _chat_estimate
from gecko_cli.llm.http.schema import schema_problem
from gecko_cli.llm.tokens import BudgetExhausted, TokenMeter
from tests.support.fake_answers import token_logprobs, tokenize
from tests.support.fake_openai import CHAT, COMPLETIONS, Fault, FakeOpenAI, always, fail_first, fail_share

SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
WORDS = ("river", "enzyme", "glacier", "protein", "orbit", "vaccine", "copper", "neuron", "harvest", "tariff")


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff of a thousandth of the real waits: the retry logic is under test, not the clock."""
    monkeypatch.setattr(retry, "BASE_DELAY", 0.0005)


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Passage: the {WORDS[i % 10]} study number {i}: {WORDS[(i * 3) % 10]} "
                                        f"changes the {WORDS[(i * 7 + 1) % 10]}."}]


def backend(server: FakeOpenAI | httpx.MockTransport, **kwargs: Any) -> HttpBackend:
    transport = server.transport() if isinstance(server, FakeOpenAI) else server
    return HttpBackend("http://127.0.0.1:9/v1", "fake-model", transport=transport, **kwargs)


PROBES = ("Say hi in one word.", "Is the sky blue?", "The capital of France is")  # the probe's prompts


def is_probe(body: dict) -> bool:
    return any(text in json.dumps(body) for text in PROBES)


def not_the_probe(plan: Any) -> Any:
    """A fault plan that leaves the capability probe's requests alone."""
    return lambda path, body, attempt: None if is_probe(body) else plan(path, body, attempt)


def recording(server: FakeOpenAI) -> tuple[httpx.MockTransport, list[dict]]:
    """The server's transport, keeping every request body it sees."""
    inner, bodies = server.transport(), []

    def handle(request: httpx.Request) -> Any:
        bodies.append(json.loads(request.content) if request.content else {})
        return inner.handler(request)
    return httpx.MockTransport(handle), bodies


def test_every_prompt_answered_through_faults_a_refused_one_fails_alone_and_retries_are_counted() -> None:
    kinds = [Fault("429", retry_after=0), Fault("503", retry_after_ms=1), "500", "drop", "malformed", "empty"]
    faults = fail_share(0.5, kinds, seed=3)
    server = FakeOpenAI(plan=not_the_probe(lambda path, body, attempt: Fault("400") if "number 7:" in json.dumps(body)
                                           else faults(path, body, attempt)))
    heard: list[int] = []
    with closing(backend(server, concurrency=8)) as llm:
        out = llm.generate_json([chat(i) for i in range(40)], SCHEMA, temperature=0.7, seed=0, max_new_tokens=48,
                                on_result=lambda i, value: heard.append(i))
    assert isinstance(out[7], Failure) and out[7].error.startswith("HTTP 400")
    assert all(schema_problem(o, SCHEMA) is None for i, o in enumerate(out) if i != 7)
    assert sorted(heard) == [i for i in range(40) if i != 7]  # each answer reported once; the failure never
    requests = server.count(CHAT)
    assert requests - 41 > 10  # many faults; the probe and every prompt's last request are not retries
    assert llm.meter.retries == requests - 41  # every failed request but the 400 was retried once
    assert sorted(server.answered().values()) == [1] * 40  # the probe + 39 prompts, none answered twice


def test_a_server_that_stays_down_raises_backend_error_after_max_retries() -> None:
    server = FakeOpenAI(plan=not_the_probe(always(Fault("503", retry_after=0))))
    with closing(backend(server, max_retries=2)) as llm, pytest.raises(BackendError) as error:
        llm.generate_json([chat(0)], SCHEMA, temperature=0.7, seed=0, max_new_tokens=48)
    assert "HTTP 503" in str(error.value) and "gave up after 2 retries" in str(error.value)
    assert llm.meter.retries == 2 and server.count(CHAT, 503) == 3


def test_quota_exhausted_is_not_retried() -> None:
    server = FakeOpenAI(plan=always("quota"))
    with closing(backend(server)) as llm, pytest.raises(BackendError, match="quota"):
        llm.generate_json([chat(0)], SCHEMA, temperature=0.7, seed=0, max_new_tokens=48)
    assert server.count() == 1  # the probe's request and nothing more


def test_timeouts_are_retried_then_give_up() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with closing(backend(httpx.MockTransport(handle), max_retries=1, timeout=5)) as llm, \
            pytest.raises(BackendError, match=r"no answer within 5 s; gave up after 1 retries"):
        llm.label_logprobs(["Q: a\nAnswer:"], [" Yes", " No"])


def test_retry_after_is_honoured() -> None:
    server = FakeOpenAI(plan=not_the_probe(fail_first(1, [Fault("429", retry_after_ms=80)])))
    with closing(backend(server)) as llm:
        started = time.perf_counter()
        out = llm.label_logprobs(["Q: a\nAnswer:"], [" Yes", " No"])
        assert time.perf_counter() - started >= 0.08
    assert set(out[0]) == {" Yes", " No"} and llm.meter.retries == 1


def test_a_wrong_key_stops_the_run_and_is_never_quoted() -> None:
    key = "sk-gecko-test-7f3a9c1e5b"
    quoted = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": {
        "message": f"Incorrect API key provided: {request.headers['authorization'].removeprefix('Bearer ')}"}}))
    with closing(backend(quoted, api_key=key)) as llm, pytest.raises(BackendError) as error:
        llm.generate_json([chat(0)], SCHEMA, temperature=0.7, seed=0, max_new_tokens=48)
    message = str(error.value)
    assert "HTTP 401" in message and "--api-key-env" in message and "***" in message and key not in message
    server = FakeOpenAI(api_key=key)
    with closing(backend(server, api_key=key)) as llm:  # the right key, in the header only
        assert schema_problem(llm.generate_json([chat(0)], SCHEMA, temperature=0.7, seed=0, max_new_tokens=48)[0],
                              SCHEMA) is None
    assert key not in repr(llm) and server.count(status=401) == 0


def test_the_probe_reports_what_the_server_does_and_invalid_json_gets_one_repair() -> None:
    server = FakeOpenAI(honour_json_schema=False, honour_echo=False)
    transport, bodies = recording(server)
    lines: list[str] = []
    with closing(backend(transport, report=lines.append)) as llm:
        out = llm.generate_json([chat(0)], SCHEMA, temperature=0.7, seed=0, max_new_tokens=48)
        with pytest.raises(UsageError, match="--scorers rc"):
            llm.query_likelihood(["Passage: x\nQuery:"], [" why"])
        assert set(llm.label_logprobs(["Q: a\nAnswer:"], [" Yes", " No"])[0]) == {" Yes", " No"}
    assert schema_problem(out[0], SCHEMA) is not None  # still not JSON: the caller rejects it
    assert lines[0].endswith("JSON schema: no (JSON answers are still validated and repaired here)")
    assert "prompt log-probs (query likelihood): no" in lines[1] and "top log-probs (relevance): yes" in lines[2]
    chats = [b for b in bodies if "messages" in b and not is_probe(b)]
    assert len(chats) == 2 and "response_format" not in chats[0]  # the answer, then one repair
    assert chats[1]["messages"][-1]["content"].startswith("That answer is invalid (not JSON")


def test_the_probe_catches_prompt_logprobs_that_are_off_by_one() -> None:
    with closing(backend(FakeOpenAI(echo_shift=True))) as llm, pytest.raises(UsageError) as error:
        llm.query_likelihood(["Passage: x\nQuery:"], [" why"])
    assert "misaligned" in str(error.value) and "--scorers rc" in str(error.value)


def test_query_likelihood_sums_the_continuations_echoed_logprobs_and_labels_come_from_the_top() -> None:
    prefix, continuation = "Passage: the sky is blue.\nQuery:", " why is the sky blue"
    with closing(backend(FakeOpenAI())) as llm:
        ql = llm.query_likelihood([prefix, prefix], [continuation, " sky"])
        rc = llm.label_logprobs(["Q: a\nAnswer:"], [" Yes", " No", "maybe"])[0]
    expected = sum(token_logprobs(tokenize(prefix + continuation))[-5:])
    assert ql[0] == pytest.approx(expected) and ql[1] == pytest.approx(token_logprobs(tokenize(prefix + " sky"))[-1])
    assert rc[" Yes"] != rc[" No"] and rc["maybe"] == min(rc.values())  # outside the top-k: its floor


def test_attempt_n_sends_seed_plus_n() -> None:
    transport, bodies = recording(FakeOpenAI())
    with closing(backend(transport)) as llm:
        llm.generate_json([chat(0)], SCHEMA, temperature=0.7, seed=5, max_new_tokens=48, attempt=1)
    assert [b["seed"] for b in bodies if "seed" in b] == [6]


def test_a_seed_per_prompt_goes_into_each_prompts_own_request() -> None:
    transport, bodies = recording(FakeOpenAI())
    prompts = [chat(i) for i in range(4)]
    with closing(backend(transport, concurrency=4)) as llm:
        out = llm.generate_json(prompts, SCHEMA, temperature=0.7, seed=[11, 12, 11, 40], max_new_tokens=48, attempt=1)
        with pytest.raises(ValueError, match="3 seeds for 4 prompts"):
            llm.generate_json(prompts, SCHEMA, temperature=0.7, seed=[1, 2, 3], max_new_tokens=48)
    assert all(schema_problem(o, SCHEMA) is None for o in out)
    sent = {b["messages"][-1]["content"]: b["seed"] for b in bodies if "messages" in b and not is_probe(b)}
    assert sent == {p[-1]["content"]: s + 1 for p, s in zip(prompts, [11, 12, 11, 40])}


def test_the_token_budget_runs_what_fits_then_stops() -> None:
    prompts = [chat(i) for i in range(6)]
    budget = sum(_chat_estimate(p, 48) for p in prompts[:3])
    heard: list[int] = []
    server = FakeOpenAI()
    with closing(backend(server, meter=TokenMeter(budget=budget))) as llm, pytest.raises(BudgetExhausted):
        llm.generate_json(prompts, SCHEMA, temperature=0.7, seed=0, max_new_tokens=48,
                          on_result=lambda i, value: heard.append(i))
    assert sorted(heard) == [0, 1, 2] and server.count(CHAT, 200) == 1 + 3  # the probe, then what fit
    assert 0 < llm.meter.total <= budget and llm.meter.reserved == 0


def test_every_pool_uses_the_injected_transport() -> None:
    server = FakeOpenAI(latency=0.01)
    with closing(backend(server, concurrency=40)) as llm:  # three pools of at most 16 connections
        out = llm.label_logprobs([f"Q: {w}\nAnswer:" for w in WORDS * 6], [" Yes", " No"])
    assert len(out) == 60 and server.count(COMPLETIONS, 200) == 61  # port 9 was never dialled


def test_the_cache_commits_each_streamed_result_and_never_a_failure(tmp_path: Path) -> None:
    server = FakeOpenAI(plan=not_the_probe(always("400", when=lambda path, body, attempt: "bad" in body["prompt"])))
    cached = CachedBackend(backend(server), ResultCache(tmp_path / "llm.sqlite"))
    prefixes, continuations = ["Passage: x\nQuery:"] * 3, [" why", " bad", " how"]
    rc_prompts = ["Passage: x\nQuery: why\nAnswer:"]
    with closing(cached):
        ql, rc = cached.score_shared(prefixes, continuations, rc_prompts, [" Yes", " No"])
        sent = server.count()
        again = cached.score_shared(prefixes, continuations, rc_prompts, [" Yes", " No"])
    assert isinstance(ql[1], Failure) and all(isinstance(v, float) for v in (ql[0], ql[2]))
    assert again == (ql, rc) and server.count() == sent + 1  # only the failed pair is asked again
    assert cached.cache.hits == 3


def test_fetch_single_model() -> None:
    assert fetch_single_model("http://127.0.0.1:9/v1", None, transport=FakeOpenAI().transport()) == "fake-model"
    two = httpx.MockTransport(lambda request: httpx.Response(200, json={"data": [{"id": "a"}, {"id": "b"}]}))
    with pytest.raises(UsageError, match=r"name the model with --model \(the server lists 2 models\)"):
        fetch_single_model("http://127.0.0.1:9", None, transport=two)
    down = httpx.MockTransport(lambda request: httpx.Response(500))
    with pytest.raises(UsageError, match="GET /models answered HTTP 500"):
        fetch_single_model("http://127.0.0.1:9", None, transport=down)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)
    with pytest.raises(BackendError, match=r"cannot connect \(ConnectError\)"):
        fetch_single_model("http://me:secret@127.0.0.1:9", "sk-x", transport=httpx.MockTransport(refuse))
