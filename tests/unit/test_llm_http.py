"""Pure parts of the HTTP backend: retry policy, answer parsing, schema checks, budget, resume.

The client itself (retries, probe, repair, budget, keys) is tested in-process on
`httpx.MockTransport` in test_llm_http_client.py."""

from __future__ import annotations

import json
import random
import time
from email.utils import formatdate

import pytest

from gecko_cli.contract.errors import UsageError
from gecko_cli.llm.http import HttpBackend, retry
from gecko_cli.llm.http.answers import CallError, Unusable, chat_content, continuation_logprob, next_token_logprobs
from gecko_cli.llm.http.schema import schema_problem
from gecko_cli.llm.http.urls import display_url, normalize_base_url
from gecko_cli.llm.tokens import BudgetExhausted, TokenMeter
from gecko_cli.contract.stream import resume_state


@pytest.mark.parametrize("status,body,action", [
    (408, None, "retry"), (409, None, "retry"), (429, {"error": {"code": "rate_limit_exceeded"}}, "retry"),
    (500, None, "retry"), (502, None, "retry"), (503, None, "retry"), (504, None, "retry"),
    (400, {"error": {"message": "context length exceeded"}}, "fail_call"), (422, None, "fail_call"),
    (401, None, "fail_run"), (403, None, "fail_run"), (404, None, "fail_run"),
    (429, {"error": {"code": "insufficient_quota"}}, "fail_run"),
    (429, {"error": {"type": "insufficient_quota", "message": "quota"}}, "fail_run"),
])
def test_classify(status, body, action):
    assert retry.classify(status, body).action == action


def test_error_message_is_in_the_reason():
    assert "context length exceeded" in retry.classify(400, {"error": {"message": "context length exceeded"}}).reason
    assert retry.classify(500, {"detail": "boom"}).reason == "HTTP 500: boom"


def test_server_delay_forms():
    assert retry.server_delay({"Retry-After-Ms": "1500"}) == 1.5
    assert retry.server_delay({"retry-after": "0.2"}) == 0.2
    assert retry.server_delay({"Retry-After": "100000"}) == retry.MAX_SERVER_DELAY
    assert retry.server_delay({"Retry-After": "soon"}) is None
    now = time.time()
    assert 8 <= retry.server_delay({"Retry-After": formatdate(now + 10, usegmt=True)}, now=now) <= 10


def test_backoff_doubles_with_jitter_and_caps():
    rng = random.Random(0)
    for n, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = [retry.backoff(n, rng) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits) and len(set(waits)) > 1
    assert retry.retry_delay(0, {"retry-after": "3"}) == 3.0


def test_schema_problem():
    schema = {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}}
    assert schema_problem('{"query": "q"}', schema) is None
    assert schema_problem('{"q": "x"}', schema) == 'missing field "query"'
    assert schema_problem('{"query": 3}', schema) == '"query" should be a JSON string'
    assert schema_problem('["query"]', schema) == "the answer should be a JSON object"
    assert schema_problem('{"query": "q"', schema).startswith("not JSON")


def test_continuation_logprob_uses_character_offsets():
    prompt, prefix = "Passage: x\nQuery: why sky", "Passage: x\nQuery:"
    lp = {"tokens": ["Passage", ":", " x", "\n", "Query", ":", " why", " sky", "!"],
          "token_logprobs": [None, -1.0, -2.0, -0.5, -0.1, -0.2, -3.0, -4.0, -9.0],
          "text_offset": [0, 7, 8, 10, 11, 16, 17, 21, 25]}
    data = {"choices": [{"logprobs": lp}]}
    assert continuation_logprob(data, prefix, prompt) == -7.0  # the generated "!" is not counted
    del lp["text_offset"]  # offsets rebuilt from token lengths
    assert continuation_logprob(data, prefix, prompt) == -7.0


@pytest.mark.parametrize("data", [
    {"choices": [{"logprobs": None}]},
    {"choices": [{"logprobs": {"tokens": ["!"], "token_logprobs": [-1.0], "text_offset": [25]}}]},  # echo ignored
    {"choices": []}, {},
])
def test_continuation_logprob_refuses_answers_without_prompt_logprobs(data):
    with pytest.raises(Unusable):
        continuation_logprob(data, "Passage: x\nQuery:", "Passage: x\nQuery: why sky")


def test_next_token_logprobs_both_top_logprob_shapes():
    listed = {"choices": [{"logprobs": {"token_logprobs": [-0.1], "top_logprobs": [[
        {"token": " No", "logprob": -0.1}, {"token": " Yes", "logprob": -2.4}]]}}]}
    assert next_token_logprobs(listed, [" Yes", " No"]) == {" Yes": -2.4, " No": -0.1}
    with pytest.raises(Unusable):
        next_token_logprobs({"choices": [{"logprobs": {"token_logprobs": [-0.1], "top_logprobs": []}}]}, [" Yes"])


def test_chat_content_never_trusts_a_200():
    assert chat_content({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    for bad in ({}, {"choices": []}, {"choices": [{"message": {"content": None}}]}):
        with pytest.raises(Unusable):
            chat_content(bad)


def test_urls():
    assert normalize_base_url("http://localhost:8000/") == "http://localhost:8000/v1"
    with pytest.raises(UsageError):
        normalize_base_url("localhost:8000")
    assert "secret" not in display_url("https://u:secret@api.example.com/v1")


def test_backend_repr_and_errors_hide_the_key():
    backend = HttpBackend("http://127.0.0.1:9/v1", "m", api_key="sk-hidden-123")
    assert "sk-hidden-123" not in repr(backend) and "sk-hidden-123" not in repr(vars(backend).get("_report"))
    assert backend.connection.redact("Incorrect API key provided: sk-hidden-123") == "Incorrect API key provided: ***"


def test_token_meter_reserves_settles_and_releases():
    meter = TokenMeter(budget=100)
    meter.reserve(40)
    meter.reserve(40)
    with pytest.raises(BudgetExhausted):
        meter.reserve(40)
    meter.settle(40, 10, 5)
    meter.release(40)
    assert (meter.total, meter.reserved, meter.calls) == (15, 0, 1)
    meter.reserve(85)  # 15 used + 85 = the budget exactly


def test_resume_state_cuts_a_torn_line_and_reads_ids_and_rejected_lines(tmp_path):
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    out.write_bytes(b'{"id":"a#0","seed":{"id":"a"}}\n{"id":"b#0","seed":{"id":"b"}}\n{"id":"c#0","se')
    rejects.write_text(json.dumps({"line": 4, "error": "x", "raw": "{}"}) + "\n")
    state = resume_state(out, rejects, lambda r: r["seed"]["id"])
    assert state.ids == {"a", "b"} and state.lines == {4}
    assert out.read_bytes().endswith(b'"b"}}\n')  # the torn third line is gone
    assert resume_state(tmp_path / "none.jsonl", None, lambda r: r["id"]).ids == frozenset()


def test_an_answer_that_stopped_at_once_without_logprobs_is_not_retried():
    """llama-cpp-python sends no log-probs when the first token is end-of-text: deterministic at
    temperature 0, so the pair is reported (the record rejected) instead of retried in vain."""
    for logprobs in (None, {"tokens": [], "token_logprobs": [], "top_logprobs": []}):
        stopped = {"choices": [{"text": "", "finish_reason": "stop", "logprobs": logprobs}]}
        with pytest.raises(CallError, match="ends the text"):
            next_token_logprobs(stopped, [" Yes", " No"])
    with pytest.raises(Unusable):  # no log-probs for another reason: retried as before
        next_token_logprobs({"choices": [{"text": " Yes", "finish_reason": "length", "logprobs": None}]}, [" Yes"])
