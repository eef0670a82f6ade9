"""The server's base URL: normalised for requests, shown without credentials in messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from gecko_cli.contract.errors import UsageError


def normalize_base_url(url: str) -> str:
    """`http://host:8000` -> `http://host:8000/v1`; a URL with a path is kept; no trailing slash.

    >>> normalize_base_url("http://127.0.0.1:8000"), normalize_base_url("https://api.example.com/openai/v1/")
    ('http://127.0.0.1:8000/v1', 'https://api.example.com/openai/v1')
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--llm {display_url(url)}: expected http://HOST:PORT/v1 (or 'embedded')")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def display_url(url: str) -> str:
    """The URL without user:password, for messages and provenance.

    >>> display_url("http://me:secret@host:8000/v1")
    'http://host:8000/v1'
    """
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
