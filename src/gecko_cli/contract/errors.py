"""The errors a stage may raise; only cli.py turns them into messages and exit codes."""

from __future__ import annotations


class GeckoError(Exception):
    """Base class: an expected failure with a message for the user, no traceback."""

    exit_code = 1


class InputError(GeckoError):
    """A bad input record or file (exit 1).

    >>> str(InputError("missing field \\"query\\"", source="<stdin>", line=17))
    '<stdin>:17: missing field "query"'
    """

    exit_code = 1

    def __init__(self, message: str, source: str | None = None, line: int | None = None):
        self.message = message
        self.source = source
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.source is None:
            return self.message
        if self.line is None:
            return f"{self.source}: {self.message}"
        return f"{self.source}:{self.line}: {self.message}"


class UsageError(GeckoError):
    """Options that do not make sense together (exit 2)."""

    exit_code = 2


class BackendError(GeckoError):
    """An LLM server or model that stayed unavailable after retries (exit 3)."""

    exit_code = 3
