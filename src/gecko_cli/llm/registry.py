"""The LLM backends `--llm` can name, in one tiny registry (the `llm` tool's plugins, in small).

A plugin is a function `register_backends(register)` that calls
`register(name, claims, open)` once per backend: `claims(llm)` says whether the backend serves
that `--llm` value, `open(options, meter, report)` builds it. gecko's own backends are such a
plugin (builtin.py); an outside package exposes its function as an entry point:

    [project.entry-points."gecko_cli.llm_backends"]
    mine = "my_package.gecko_plugin:register_backends"

Adding a backend is that one registration: the cache, scoring and the stages see only the
`LLMBackend` protocol. The last registered backend that claims a value serves it, so a plugin can
take over a value a built-in would claim. The API key is read from the environment variable
named by `--api-key-env` when the backend is opened, and goes nowhere but the request header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gecko_cli.contract.env import cache_dir
from gecko_cli.contract.errors import UsageError
from gecko_cli.llm import builtin
from gecko_cli.llm.base import LLMOptions, Opener, Register, Report
from gecko_cli.llm.cache import CachedBackend, ResultCache
from gecko_cli.llm.tokens import TokenMeter

__all__ = ["ENTRY_POINTS", "LLMOptions", "Register", "Registration", "backend_for", "open_backend", "register",
           "registrations"]

ENTRY_POINTS = "gecko_cli.llm_backends"


@dataclass(frozen=True)
class Registration:
    """One backend: its name, which `--llm` values it serves, how to open it."""

    name: str
    claims: Callable[[str], bool]
    open: Opener


_registered: list[Registration] = []
_plugins_loaded = False


def register(name: str, claims: Callable[[str], bool], opener: Opener) -> None:
    """Add a backend (the plugins, gecko's own among them, are loaded first)."""
    _load_plugins()
    _registered.append(Registration(name, claims, opener))


def _load_plugins() -> None:
    """Call every plugin's hook once: gecko's own, then those installed as entry points."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    hooks: list[Callable[[Register], None]] = [builtin.register_backends]
    hooks += [entry.load() for entry in entry_points(group=ENTRY_POINTS)]
    for hook in hooks:
        hook(register)


def entry_points(group: str) -> list[Any]:
    """The installed entry points of `group` (importlib.metadata is imported only when asked)."""
    from importlib.metadata import entry_points as installed

    return list(installed(group=group))


def registrations() -> list[Registration]:
    """Every registered backend, in registration order."""
    _load_plugins()
    return list(_registered)


def backend_for(llm: str) -> Registration:
    """The backend that serves `--llm` (the last registered that claims it).

    >>> backend_for("").name, backend_for("http://127.0.0.1:8000/v1").name
    ('embedded', 'http')
    """
    for registration in reversed(registrations()):
        if registration.claims(llm):
            return registration
    raise UsageError(f"--llm {llm}: no LLM backend serves it (registered: "
                     f"{', '.join(r.name for r in registrations())})")


def open_backend(options: LLMOptions, report: Report | None = None) -> CachedBackend:
    """The backend the options name, behind the result cache (unless --no-cache), with a token meter."""
    cache = ResultCache(cache_dir() / "llm.sqlite" if options.use_cache else None)
    meter = TokenMeter(budget=options.max_tokens_budget)
    inner = backend_for(options.llm or "").open(options, meter, report)
    return CachedBackend(inner, cache)
