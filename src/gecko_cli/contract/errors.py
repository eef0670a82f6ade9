"""The errors a stage may raise; only cli.py turns them into messages and exit codes."""

from __future__ import annotations

import errno
import os


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


# What a user's files and disks can do to a run; any other OSError without a file name is a bug.
USER_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOSPC,
                         errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP})


class PathError(GeckoError):
    """A path gecko cannot use, in the words of the OS: `PATH: reason (hint)`.

    Exit 2 when a path the command line (or `GECKO_CACHE_DIR`) names is refused before the run,
    like any bad option value; exit 1 when a file fails during the run (a full disk).

    >>> str(PathError("out/q.jsonl", "No space left on device"))
    'out/q.jsonl: No space left on device'
    >>> str(PathError("/dev/null/x", "Not a directory", hint="GECKO_CACHE_DIR"))
    '/dev/null/x: Not a directory (GECKO_CACHE_DIR)'
    """

    def __init__(self, path: str | None, reason: str, *, exit_code: int = 1, hint: str | None = None):
        self.path, self.reason, self.hint = path, reason, hint
        self.exit_code = exit_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.reason if self.path is None else f"{self.path}: {self.reason}"
        return f"{text} ({self.hint})" if self.hint else text

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike[str] | None = None, *, exit_code: int = 1,
                      hint: str | None = None) -> "PathError":
        """The error's own file name wins over `path`, the file gecko was working on.

        >>> str(PathError.from_os_error(OSError(errno.ENOSPC, "No space left on device"), "out.jsonl"))
        'out.jsonl: No space left on device'
        """
        name = exc.filename if exc.filename is not None else path
        reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        return cls(None if name is None else _shown(name), reason, exit_code=exit_code, hint=hint)


def _shown(name: object) -> str:
    """A file name as text (an OSError may carry bytes, a path object, or a descriptor number)."""
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)


def caused_by_user(exc: OSError) -> bool:
    """Whether an OSError is about the user's files or disks (else it is a bug: a traceback).

    >>> caused_by_user(FileNotFoundError(2, "No such file or directory", "x")), caused_by_user(OSError("bug"))
    (True, False)
    """
    return exc.filename is not None or exc.errno in USER_ERRNOS
