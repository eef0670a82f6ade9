"""Choosing the LLM backend from the command line: the embedded model, or a server URL.

`--llm` (env GECKO_LLM) is empty or `embedded` for SmolLM2 in-process, or the base URL of an
OpenAI-compatible server. The API key is read from the environment variable named by
`--api-key-env` at the moment the client is built, and goes nowhere but the request header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from gecko_cli.contract.errors import UsageError
from gecko_cli.llm.cache import CachedBackend, ResultCache
from gecko_cli.llm.tokens import TokenMeter

EMBEDDED = ("", "embedded", "local")


@dataclass(frozen=True)
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

    @property
    def is_http(self) -> bool:
        return (self.llm or "").strip().lower() not in EMBEDDED


def open_backend(options: LLMOptions, report: Callable[[str], None] | None = None) -> CachedBackend:
    """The backend the options name, behind the result cache (unless --no-cache), with a token meter."""
    from gecko_cli.contract.env import cache_dir

    cache = ResultCache(cache_dir() / "llm.sqlite" if options.use_cache else None)
    meter = TokenMeter(budget=options.max_tokens_budget)
    if not options.is_http:
        if options.model:
            raise UsageError("--model names a model on an LLM server; give the server with --llm URL")
        from transformers.utils import logging as hf_logging

        from gecko_cli.llm.local import LocalBackend

        hf_logging.disable_progress_bar()  # the one-time GGUF conversion bar is noise on stderr
        local = LocalBackend()
        local.meter = meter
        backend = CachedBackend(local, cache)
    else:
        from gecko_cli.llm.http import HttpBackend, fetch_single_model

        key = os.environ.get(options.api_key_env) or None
        model = options.model or fetch_single_model(options.llm or "", key)
        inner = HttpBackend(options.llm or "", model, api_key=key, concurrency=options.concurrency,
                            max_retries=options.max_retries, timeout=options.timeout, meter=meter, report=report)
        backend = CachedBackend(inner, cache)
    backend.meter = meter
    return backend
