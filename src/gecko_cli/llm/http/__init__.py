"""Any OpenAI-compatible server as an LLM backend, split at its seams:

- `urls`: the base URL, normalised, and shown without credentials;
- `schema`: `response_format` and the JSON check every generated answer gets;
- `answers`: reading completions (never trust a 200: `Unusable` is retried, `CallError` is not);
- `retry`: which answers are retried and how long to wait (pure);
- `wire`: a lean HTTP/1.1 client for plain-http servers (httpx serves the rest);
- `client`: pooled async connections on a loop thread, each POST retried, token budget (`Connection`);
- `probe`: what the server really does, checked once per capability (`Capabilities`);
- `backend`: `HttpBackend`, the protocol on top of them, and `fetch_single_model`.
"""

from gecko_cli.llm.http.answers import CallError, Unusable
from gecko_cli.llm.http.backend import HttpBackend, fetch_single_model
from gecko_cli.llm.http.client import Connection
from gecko_cli.llm.http.probe import Capabilities
from gecko_cli.llm.http.urls import display_url, normalize_base_url

__all__ = ["CallError", "Capabilities", "Connection", "HttpBackend", "Unusable", "display_url", "fetch_single_model",
           "normalize_base_url"]
