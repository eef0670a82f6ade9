"""Paths a command names, checked before any work: `PATH: reason`, in the words of the OS.

A command declares what each path option is for beside its Typer option,
`Annotated[Optional[Path], typer.Option("--corpus", ...), READ]`, and cli.py checks every one
before the command runs: a mistyped `--corpus` fails at once, not after a model has loaded. The
checks look (stat, access) and never open: `-i <(cmd)` is a pipe that opening would consume.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from gecko_cli.contract.errors import USER_ERRNOS, PathError


@dataclass(frozen=True)
class PathUse:
    """What a path option names, and so what must hold for it before the run.

    `is_dir`: a directory, else a file (or a pipe), None either; `writes`: the command creates
    or replaces it; `makes_parents`: the command creates the missing directories above it;
    `is_name`: a value that does not exist may be a name instead (a shipped prompt, a model on
    the hub, a URL); `path_of`: the path inside the value (`--mix FILE:WEIGHT`).
    """

    is_dir: bool | None = False
    writes: bool = False
    makes_parents: bool = False
    is_name: Callable[[str], bool] | None = None
    path_of: Callable[[str], str] | None = None

    def check(self, value: str | os.PathLike[str]) -> None:
        """Raise the OSError opening `value` this way would raise (naming it as given), if any."""
        name = self.path_of(str(value)) if self.path_of else os.fspath(value)
        try:
            info = os.stat(name)
        except FileNotFoundError:
            if self.is_name is not None and self.is_name(str(value)):
                return
            if not self.writes:
                raise
            self._check_creatable(name)
            return
        self._check_existing(name, info)

    def _check_existing(self, name: str, info: os.stat_result) -> None:
        is_dir = stat.S_ISDIR(info.st_mode)
        if self.is_dir is not None and is_dir != self.is_dir:
            raise _error(errno.ENOTDIR if self.is_dir else errno.EISDIR, name)
        mode = (os.W_OK if self.writes else os.R_OK) | (os.X_OK if is_dir else 0)
        if not _allowed(name, mode):
            raise _denied(name, Path(name) if is_dir else Path(name).parent)

    def _check_creatable(self, name: str) -> None:
        """A path to create: its nearest existing directory must take new entries."""
        parent = Path(name).parent
        while True:
            try:
                info = os.stat(parent)
                break
            except FileNotFoundError:
                if not self.makes_parents or parent == parent.parent:
                    raise _error(errno.ENOENT, name) from None
                parent = parent.parent
        if not stat.S_ISDIR(info.st_mode):
            raise _error(errno.ENOTDIR, name)
        if not _allowed(parent, os.W_OK | os.X_OK):
            raise _denied(name, parent)


def _error(code: int, name: str) -> OSError:
    return OSError(code, os.strerror(code), name)


def _allowed(path: str | Path, mode: int) -> bool:
    # With the effective ids, as open() would decide (a setuid or seteuid process differs).
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _denied(name: str, where: Path) -> OSError:
    """EROFS when `where` is on a read-only file system (access() cannot say which), else EACCES."""
    return _error(errno.EROFS if disk_refusal(where) == errno.EROFS else errno.EACCES, name)


def looks_like_name(value: str) -> bool:
    """Whether a model value that does not exist on disk may be a name (hub id, URL, `default`).

    A value is a path when it is absolute, starts with `.`, names a `.gguf` file, or sits in a
    directory that exists here (`out/model` beside an `out/`); a hub id `org/name` has no such
    directory.

    >>> looks_like_name("default"), looks_like_name("sentence-transformers/all-MiniLM-L6-v2")
    (True, True)
    >>> looks_like_name("http://127.0.0.1:8000/v1"), looks_like_name("/no/such/model")
    (True, False)
    >>> looks_like_name("./model"), looks_like_name("m.gguf")
    (False, False)
    """
    if "://" in value:
        return True
    if os.path.isabs(value) or value.startswith(".") or value.lower().endswith(".gguf"):
        return False
    parent = os.path.dirname(value)
    return not parent or not os.path.isdir(parent)


READ = PathUse()  # a file to read: -i, --corpus, --sts, ...
READ_DIR = PathUse(is_dir=True)  # a folder to read: --dataset
WRITE = PathUse(writes=True)  # a file to write in an existing folder: -o, --rejects
WRITE_MAKING_DIRS = PathUse(writes=True, makes_parents=True)  # --audit, --plot, --run-file
WRITE_DIR = PathUse(is_dir=True, writes=True, makes_parents=True)  # a model to train; GECKO_CACHE_DIR
MODEL_DIR = PathUse(is_dir=True, is_name=looks_like_name)  # an embedder: a folder, or a name
LLM_MODEL = PathUse(is_dir=None, is_name=looks_like_name)  # --llm: a .gguf file, a folder, a URL or a name


def declared(function: Callable[..., Any]) -> dict[str, PathUse]:
    """Parameter name -> PathUse, for the parameters whose annotation declares one, in order."""
    hints = typing.get_type_hints(function, include_extras=True)
    found = {}
    for name, hint in hints.items():
        uses = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, PathUse)]
        if uses:
            found[name] = uses[0]
    return found


def check_all(uses: Mapping[str, PathUse], values: Mapping[str, Any]) -> None:
    """Every declared path among `values` (one value or a list of them); PathError (exit 2) on the first bad one."""
    for name, use in uses.items():
        given = values.get(name)
        for value in given if isinstance(given, (list, tuple)) else [given]:
            if value is not None:
                require(use, value)


def require(use: PathUse, value: str | os.PathLike[str], hint: str | None = None) -> None:
    """`use.check(value)`, its OSError as a PathError: a bad option value (exit 2)."""
    try:
        use.check(value)
    except OSError as exc:
        raise PathError.from_os_error(exc, exit_code=2, hint=hint) from None


@contextmanager
def writing(path: str | os.PathLike[str], library_errors: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Name `path` in an OSError that names no file (a write that meets a full disk).

    With `library_errors`, a library's own exception for a failed write becomes the OSError it
    stands for, naming `path` (see `failed_write`); one that shows no sign of the disk is re-raised
    unchanged: a bug.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None and not isinstance(exc, BrokenPipeError):
            exc.filename = os.fspath(path)
        raise
    except library_errors as exc:
        cause = failed_write(exc, path)
        if cause is None:
            raise
        raise cause from exc


def failed_write(exc: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """The OSError behind a library's failed write of `path`, or None when nothing shows it was the disk.

    tokenizers and safetensors quote the OS ("No space left on device (os error 28)"); torch
    ("unexpected pos 576 vs 534") and hnswlib (it does not check its writes) do not, and then the
    file system holding `path` tells: no room left, or read-only.

    >>> failed_write(Exception("I/O error: No space left on device (os error 28)"), "m").args
    (28, 'No space left on device')
    >>> str(failed_write(RuntimeError("cannot write: Permission denied"), "m"))
    "[Errno 13] Permission denied: 'm'"
    """
    text = str(exc)
    quoted = re.search(r"os error (\d+)", text)
    if quoted:
        code: int | None = int(quoted.group(1))
    else:
        code = next((c for c in sorted(USER_ERRNOS) if os.strerror(c) in text), None) or disk_refusal(path)
    return None if code is None else OSError(code, os.strerror(code), os.fspath(path))


def disk_refusal(path: str | os.PathLike[str]) -> int | None:
    """ENOSPC when the file system holding `path` has no block (or no inode) left, EROFS when it
    is read-only, else None."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        info = os.statvfs(where)
    except (OSError, AttributeError):
        return None
    if info.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if info.f_bavail == 0 or (info.f_files and info.f_favail == 0):
        return errno.ENOSPC
    return None
