"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, TGI, OpenAI) as an LLM backend.

Operations map to endpoints:
- `generate_json`: /chat/completions with `response_format: json_schema`; the answer is always
  validated here, and an invalid one gets one repair request that quotes the problem.
- `query_likelihood`: /completions with `echo` + `logprobs` and no new tokens: the log-probs
  of the prompt's own tokens; the continuation's are those at character offsets ≥ len(prefix).
- `label_logprobs`: /completions with `max_tokens: 1` and `logprobs: k`: the next token's top-k.

Each capability is probed once before it is used (probe.py); the requests, pools and retries are
client.py's. The API key lives only in the request header; it is never part of a message, repr
or cache key.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Sequence

import httpx

from gecko_cli.contract.errors import BackendError, UsageError
from gecko_cli.llm.base import BaseBackend, Message, OnResult, Report, Seeds, answer_prefix, seed_list
from gecko_cli.llm.http.answers import chat_content, continuation_logprob, json_or_none, next_token_logprobs
from gecko_cli.llm.http.client import Connection
from gecko_cli.llm.http.probe import Capabilities, probe
from gecko_cli.llm.http.schema import response_format, schema_problem
from gecko_cli.llm.http.urls import display_url, normalize_base_url
from gecko_cli.llm.tokens import TokenMeter, count_tokens

TOP_LOGPROBS = 20  # the most OpenAI-compatible servers return; labels outside the top-k get its floor


class HttpBackend(BaseBackend):
    """An OpenAI-compatible server; `report` receives the probe results (a line for stderr).

    `transport` (an `httpx.AsyncBaseTransport`, e.g. `httpx.MockTransport(handler)`) replaces the
    network for every client the backend builds.
    """

    name = "http"
    streams_results = True  # results reach the cache one by one, as calls finish (kill -9 safety)
    per_prompt_seeds = True  # each prompt is its own request, with its own seed

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, concurrency: int = 16,
                 max_retries: int = 6, timeout: float = 120.0, meter: TokenMeter | None = None,
                 report: Report | None = None, seed: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(meter)
        self.base_url = normalize_base_url(base_url)
        self.model_id = model
        self.capabilities = Capabilities()
        self.connection = Connection(self.base_url, api_key=api_key, concurrency=concurrency,
                                     max_retries=max_retries, timeout=timeout, meter=self.meter, seed=seed,
                                     transport=transport)
        self._report = report or (lambda line: None)

    def __repr__(self) -> str:  # never the key
        return f"HttpBackend({display_url(self.base_url)!r}, model={self.model_id!r})"

    def close(self) -> None:
        """Close the connection pools and stop the loop thread."""
        self.connection.close()

    def probe(self, needs: Sequence[str]) -> Capabilities:
        """Check, once each, the capabilities `needs` ("json_schema", "echo", "top_logprobs") by
        what the answers contain, and report them; a parameter the server ignored shows here."""
        caps = self.capabilities
        todo = caps.unknown(needs)
        if not todo:
            return caps
        self.connection.run(probe(self.connection, self.model_id, todo, caps))
        line = caps.describe(todo)
        self._report(f"LLM server {display_url(self.base_url)}, model {self.model_id}: {line}"
                     + ("" if "json_schema" not in todo or caps.json_schema else
                        " (JSON answers are still validated and repaired here)"))
        return caps

    # -- the protocol --------------------------------------------------------------------------

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float = 0.0,
                      seed: Seeds = 0, max_new_tokens: int = 256, attempt: int = 0,
                      on_result: OnResult | None = None) -> list[Any]:
        """One JSON answer per chat prompt (validated; one repair request), or a Failure; each
        request sends its prompt's seed (`seed_list`) + attempt."""
        seeds = [s + attempt for s in seed_list(seed, len(prompts))]
        caps = self.probe(["json_schema"])
        # Chat APIs cannot continue an assistant message (vLLM's continue_final_message is not
        # portable); structured output keeps the answer a JSON object without the nudge.
        prompts = [answer_prefix(m)[0] for m in prompts]

        # One response_format for the whole batch: the same dict goes into every request body.
        form = response_format(schema, caps.json_format) if caps.json_schema else None

        def make(i: int, reserved: int) -> Callable[[], Awaitable[Any]]:
            return lambda: self._json_call(prompts[i], schema, temperature, seeds[i], max_new_tokens, form, reserved)

        return self.connection.schedule(len(prompts), lambda i: _chat_estimate(prompts[i], max_new_tokens), make,
                                        on_result)

    async def _json_call(self, messages: list[Message], schema: dict, temperature: float, seed: int,
                         max_new_tokens: int, form: dict | None, reserved: int) -> str:
        body: dict[str, Any] = {"model": self.model_id, "messages": messages, "temperature": temperature,
                                "seed": seed, "max_tokens": max_new_tokens}
        if form is not None:
            body["response_format"] = form
        content = await self.connection.metered("/chat/completions", body, chat_content,
                                                lambda: _messages_text(messages), reserved, _same)
        problem = schema_problem(content, schema)
        if problem is None:
            return content
        # One repair request: show the model its answer and what is wrong with it.
        repair = [*messages, {"role": "assistant", "content": content},
                  {"role": "user", "content": f"That answer is invalid ({problem}). Reply with only a JSON object "
                                              f"matching this schema: {json.dumps(schema)}"}]
        worst = _chat_estimate(repair, max_new_tokens)
        self.meter.reserve(worst)
        return await self.connection.metered("/chat/completions", {**body, "messages": repair}, chat_content,
                                             lambda: _messages_text(repair), worst, _same)

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
            return lambda: self.connection.metered(
                "/completions", body, lambda d: continuation_logprob(d, prefixes[i], prompt), lambda: prompt, reserved)

        return self.connection.schedule(len(prefixes), lambda i: _text_estimate(prefixes[i] + continuations[i], 1),
                                        make, on_result)

    def label_logprobs(self, prompts: list[str], labels: list[str], on_result: OnResult | None = None) -> list[Any]:
        """Each label's log-prob as the next token (from the server's top log-probs)."""
        caps = self.probe(["top_logprobs"])
        if not caps.top_logprobs:
            raise UsageError(f"the LLM server at {display_url(self.base_url)} does not return top log-probs, so "
                             "relevance classification cannot be scored there; use --scorers ql")

        def make(i: int, reserved: int) -> Callable[[], Awaitable[Any]]:
            body = {"model": self.model_id, "prompt": prompts[i], "max_tokens": 1, "logprobs": TOP_LOGPROBS,
                    "temperature": 0}
            return lambda: self.connection.metered("/completions", body, lambda d: next_token_logprobs(d, labels),
                                                   lambda: prompts[i], reserved)

        return self.connection.schedule(len(prompts), lambda i: _text_estimate(prompts[i], 1), make, on_result)

    def count_tokens(self, text: str) -> int:
        return count_tokens(text)


def _same(text: str) -> str:
    return text


def _messages_text(messages: list[Message]) -> str:
    return "\n".join(m["content"] for m in messages)


def _text_estimate(text: str, completion: int) -> int:
    # tiktoken is not the server's tokenizer: reserve 25% more, plus the chat markup
    return int(count_tokens(text) * 1.25) + 16 + completion


def _chat_estimate(messages: list[Message], max_new_tokens: int) -> int:
    return _text_estimate(_messages_text(messages), max_new_tokens) + 4 * len(messages)


def fetch_single_model(base_url: str, api_key: str | None, timeout: float = 30.0,
                       transport: httpx.BaseTransport | None = None) -> str:
    """The id of the one model a server serves (GET /models), for `--llm URL` without `--model`."""
    url = normalize_base_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(transport=transport) as client:
            response = client.get(f"{url}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise BackendError(f"LLM server {display_url(url)}: cannot connect ({type(exc).__name__})") from None
    data = json_or_none(response)
    models = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict)] if isinstance(data, dict) else []
    if response.status_code != 200 or len(models) != 1:
        raise UsageError(f"--llm {display_url(url)}: name the model with --model (the server lists "
                         f"{len(models)} models)" if response.status_code == 200 else
                         f"--llm {display_url(url)}: GET /models answered HTTP {response.status_code}; give --model")
    return str(models[0])
