"""gecko's own backends, as a plugin: the embedded model and any OpenAI-compatible server.

They register through the same hook an outside package provides (see registry.py), and import
their heavy modules (torch, httpx) only when opened.
"""

from __future__ import annotations

import os
from pathlib import Path

from gecko_cli.contract.errors import UsageError
from gecko_cli.llm.base import EMBEDDED, LLMBackend, LLMOptions, Register, Report, is_model_path
from gecko_cli.llm.tokens import TokenMeter


def register_backends(register: Register) -> None:
    """The plugin hook: `--llm` empty, `embedded` or `local` is SmolLM2 in-process; a `.gguf`
    file or a transformers model directory runs in-process the same way; any other value is taken
    for a server URL (a malformed one gets the URL's own error message)."""
    register("embedded", is_embedded, open_embedded)
    register("http", lambda llm: not is_embedded(llm), open_http)
    register("model-file", is_model_path, open_model_file)


def is_embedded(llm: str) -> bool:
    """Whether `--llm` names the embedded model.

    >>> is_embedded(" Embedded "), is_embedded(""), is_embedded("http://127.0.0.1:8000/v1")
    (True, True, False)
    """
    return llm.strip().lower() in EMBEDDED


def open_embedded(options: LLMOptions, meter: TokenMeter, report: Report | None) -> LLMBackend:
    """SmolLM2-135M-Instruct in-process (loads lazily, on its first call)."""
    if options.model:
        raise UsageError("--model names a model on an LLM server; give the server with --llm URL")
    from transformers.utils import logging as hf_logging

    from gecko_cli.llm.local import LocalBackend

    hf_logging.disable_progress_bar()  # the one-time GGUF conversion bar is noise on stderr
    return LocalBackend(meter=meter, device=options.device, dtype=options.dtype)


def open_model_file(options: LLMOptions, meter: TokenMeter, report: Report | None) -> LLMBackend:
    """A local GGUF file or transformers model directory, in-process with the embedded machinery."""
    if options.model:
        raise UsageError("--model names a model on an LLM server; --llm PATH already names the model")
    from transformers.utils import logging as hf_logging

    from gecko_cli.llm.local import LocalBackend

    hf_logging.disable_progress_bar()
    return LocalBackend(meter=meter, source=Path(options.llm or "").expanduser().resolve(), device=options.device,
                        dtype=options.dtype)


def open_http(options: LLMOptions, meter: TokenMeter, report: Report | None) -> LLMBackend:
    """The server at `--llm`; the key is read from the variable `--api-key-env` names, now."""
    from gecko_cli.llm.http import HttpBackend, fetch_single_model

    key = os.environ.get(options.api_key_env) or None
    model = options.model or fetch_single_model(options.llm or "", key)
    return HttpBackend(options.llm or "", model, api_key=key, concurrency=options.concurrency,
                       max_retries=options.max_retries, timeout=options.timeout, meter=meter, report=report)
