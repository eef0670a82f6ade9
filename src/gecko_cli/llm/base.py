"""The LLM backend protocol: every operation `generate` and `rerank` use, nothing more.

A backend is anything with these attributes and methods (embedded model, HTTP server, the
result cache around either, a test fake); stages type against `LLMBackend` and never against a
concrete class. `BaseBackend` gives the optional capabilities their documented defaults, so a
new backend writes the four operations of DESIGN §4 and inherits the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from numbers import Integral
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from gecko_cli.llm.tokens import TokenMeter

Message = dict[str, str]
"""One chat message, e.g. `{"role": "user", "content": "Write a query for ..."}`."""

Seeds = int | Sequence[int]
"""`generate_json`'s sampling seed: one for every prompt, or one per prompt."""


def seed_list(seed: Seeds, count: int) -> list[int]:
    """One seed per prompt, so a call can carry samples that each have their own seed (all K
    samples of a passage in one batch); an int is every prompt's seed.

    >>> seed_list(7, 3), seed_list((1, 2), 2)
    ([7, 7, 7], [1, 2])
    """
    if isinstance(seed, Integral):
        return [int(seed)] * count
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"generate_json: {len(seeds)} seeds for {count} prompts")
    return seeds


def answer_prefix(messages: list[Message]) -> tuple[list[Message], str]:
    """A chat prompt may end with the start of the answer (an assistant message): the model
    continues it, and the text a backend returns begins with it. -> (messages to send, prefix).

    >>> answer_prefix([{"role": "user", "content": "q?"}, {"role": "assistant", "content": '{"query": "'}])
    ([{'role': 'user', 'content': 'q?'}], '{"query": "')
    >>> answer_prefix([{"role": "user", "content": "q?"}])
    ([{'role': 'user', 'content': 'q?'}], '')
    """
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def is_model_path(value: str) -> bool:
    """Whether `--llm` names a local model file: a `.gguf` file or a transformers model directory.

    >>> is_model_path("http://127.0.0.1:8000/v1"), is_model_path("")
    (False, False)
    """
    if not value.strip() or "://" in value:
        return False
    path = Path(value).expanduser()
    return (path.is_file() and path.suffix.lower() == ".gguf") or (path / "config.json").is_file()


OnResult = Callable[[int, Any], None]
"""Hears one result as soon as it exists: (index in the call's list, value)."""

OnScore = Callable[[str, int, Any], None]
"""`OnResult` of `score_shared`: (kind "ql" | "labels", index in that kind's list, value)."""

Report = Callable[[str], None]
"""Receives a line for stderr (e.g. what the server's capability probe found)."""

EMBEDDED = ("", "embedded", "local")
"""The `--llm` values that name the embedded model."""


@dataclass(frozen=True)
class Failure:
    """A call that failed for its own record only (e.g. HTTP 400: prompt too long): returned in
    place of that result, so the stage rejects the one record and the run goes on. A server that
    is down is not a Failure: the backend raises BackendError and the run stops (exit 3)."""

    error: str


@dataclass(frozen=True, kw_only=True)
class LLMOptions:
    """The LLM options every LLM stage takes (see options.py for their help texts)."""

    llm: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    max_retries: int = 6
    timeout: float = 120.0
    max_tokens_budget: int | None = None
    use_cache: bool = True

    device: str | None = None
    dtype: str = "float32"  # auto | float32 | bfloat16, of an in-process LLM

    def __post_init__(self) -> None:
        from gecko_cli.contract.env import check_dtype
        from gecko_cli.contract.errors import UsageError

        try:  # refused whatever the backend, before anything loads
            check_dtype(self.dtype)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    @property
    def is_embedded(self) -> bool:
        """Whether `--llm` names the embedded model (the default)."""
        return (self.llm or "").strip().lower() in EMBEDDED

    @property
    def is_http(self) -> bool:
        """Whether `--llm` names something other than a model run in-process (a server, a plugin)."""
        return not (self.is_embedded or is_model_path(self.llm or ""))


@runtime_checkable
class LLMBackend(Protocol):
    """What `generate` and `rerank` need from an LLM.

    `name` identifies the backend kind (`"local"`, `"http"`), `model_id` the exact model; both go
    into cache keys and provenance. `meter` counts the tokens its calls use and holds the budget.
    Every batch method takes `on_result`, which (when given) hears each result as soon as it
    exists, at the latest before the method returns (a `Failure` is returned, never reported).
    """

    name: str
    model_id: str
    meter: TokenMeter
    streams_results: bool
    """True when results finish one by one (each HTTP call on its own): the result cache then
    commits each as `on_result` reports it, so a finished call is never sent again after a crash.
    False: the cache stores a batch when the call returns."""
    # Optional (read with getattr, so a plugin written before it still satisfies the protocol):
    # `per_prompt_seeds = True` says generate_json takes a sequence of seeds, one per prompt.

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float, seed: Seeds,
                      max_new_tokens: int, attempt: int = 0, on_result: OnResult | None = None) -> list[Any]:
        """One raw completion per chat prompt (or a `Failure`); the caller validates it against `schema`.

        `seed` is one int for every prompt or a sequence of one per prompt (`seed_list`); a backend
        whose `per_prompt_seeds` is not True is only ever given an int (`generate_by_seed` splits
        a call by seed for it). Attempt n of the same prompt (a retry after an unusable answer)
        samples with its seed + n. A prompt ending with an assistant message is the start of the
        answer (`answer_prefix`): a backend that can continue it does, one that cannot drops it (a
        JSON-schema server needs no nudge); either way the returned text is the whole answer.
        [[{"role": "user", "content": "..."}]] -> ['{"task": "...", "query": "..."}']
        """
        ...

    def query_likelihood(self, prefixes: list[str], continuations: list[str],
                         on_result: OnResult | None = None) -> list[Any]:
        """Sum of the continuation tokens' log-probs given the prefix, one per pair (or a `Failure`).

        Prefix and continuation are tokenized separately and their ids concatenated, so a
        score never depends on how the two strings would merge at the boundary.
        (["Passage: ... Query:"], [" why is the sky blue"]) -> [-23.7]
        """
        ...

    def label_logprobs(self, prompts: list[str], labels: list[str],
                       on_result: OnResult | None = None) -> list[Any]:
        """Log-prob of each label's first token as the next token (full-vocabulary softmax).

        (["... Relevant? Answer:"], [" Yes", " No"]) -> [{" Yes": -2.1, " No": -0.2}]
        """
        ...

    def score_shared(self, ql_prefixes: list[str], ql_continuations: list[str], rc_prompts: list[str],
                     labels: list[str], on_result: OnScore | None = None) -> tuple[list[Any], list[Any]]:
        """`query_likelihood(ql_prefixes, ql_continuations)` and `label_logprobs(rc_prompts, labels)`
        in one call, so a backend can share the work of both (the embedded one runs a passage's
        prefix once for every query and scorer). Default (`BaseBackend`): the two calls in turn.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text`, e.g. "hello world" -> 2."""
        ...

    def close(self) -> None:
        """Release connections and threads; the backend is not used afterwards. Default: nothing."""
        ...


def generate_by_seed(backend: LLMBackend, prompts: list[list[Message]], schema: dict, seed: Seeds, *,
                     on_result: OnResult | None = None, **kwargs: Any) -> list[Any]:
    """`backend.generate_json` with one seed per prompt: passed through when the backend says it
    takes them (`per_prompt_seeds`), else one call per distinct seed (what a backend written
    for one seed per call understands), results in prompt order and `on_result` indices mapped
    back to the call's.

    `kwargs` are the other `generate_json` arguments (temperature, max_new_tokens, attempt).
    """
    seeds = seed_list(seed, len(prompts))
    heard = {} if on_result is None else {"on_result": on_result}
    if getattr(backend, "per_prompt_seeds", False):
        return backend.generate_json(prompts, schema, seed=seeds, **kwargs, **heard)
    out: list[Any] = [None] * len(prompts)
    for one in dict.fromkeys(seeds):
        idx = [i for i, s in enumerate(seeds) if s == one]
        mapped = {} if on_result is None else {"on_result": lambda j, value, idx=idx: on_result(idx[j], value)}
        for i, value in zip(idx, backend.generate_json([prompts[i] for i in idx], schema, seed=one, **kwargs,
                                                        **mapped)):
            out[i] = value
    return out


Opener = Callable[[LLMOptions, TokenMeter, Report | None], LLMBackend]
"""Builds a backend from the options, the run's token meter and the stderr line sink."""

Register = Callable[[str, Callable[[str], bool], Opener], None]
"""The registry's `register(name, claims, open)`, handed to each plugin's `register_backends`."""


class BaseBackend:
    """The optional capabilities' defaults: subclass it and write `generate_json`,
    `query_likelihood`, `label_logprobs` and `count_tokens` (set `name` and `model_id`)."""

    name: str
    model_id: str
    meter: TokenMeter
    streams_results: bool = False
    per_prompt_seeds: bool = False
    """True when `generate_json` takes a sequence of seeds (one per prompt); a subclass that says
    so reads its `seed` through `seed_list`."""

    def __init__(self, meter: TokenMeter | None = None) -> None:
        self.meter = meter or TokenMeter()

    def query_likelihood(self, prefixes: list[str], continuations: list[str],
                         on_result: OnResult | None = None) -> list[Any]:
        """See `LLMBackend.query_likelihood`; every backend writes its own."""
        raise NotImplementedError

    def label_logprobs(self, prompts: list[str], labels: list[str],
                       on_result: OnResult | None = None) -> list[Any]:
        """See `LLMBackend.label_logprobs`; every backend writes its own."""
        raise NotImplementedError

    def score_shared(self, ql_prefixes: list[str], ql_continuations: list[str], rc_prompts: list[str],
                     labels: list[str], on_result: OnScore | None = None) -> tuple[list[Any], list[Any]]:
        """The two calls in turn, each only when it has inputs; `on_result` hears both kinds."""
        def heard(kind: str) -> dict[str, OnResult]:
            return {} if on_result is None else {"on_result": partial(on_result, kind)}

        ql = self.query_likelihood(ql_prefixes, ql_continuations, **heard("ql")) if ql_prefixes else []
        rc = self.label_logprobs(rc_prompts, labels, **heard("labels")) if rc_prompts else []
        return ql, rc

    def close(self) -> None:
        """Nothing to release."""
        return None
