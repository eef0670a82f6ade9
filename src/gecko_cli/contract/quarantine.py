"""Moving a damaged cache file aside, once, even when several processes find the damage together.

A cache is only ever a copy of work that can be redone, so a damaged one is not an error:
it is renamed to `<name>.corrupt-<UTC time>` (kept for a post-mortem, never deleted) and the
caller starts afresh, after one warning line on stderr.

Two shards that open the same damaged file both see the damage. Without care the second
would rename the fresh file the first has just created; so the rename happens under an
exclusive lock on `<name>.repair-lock` and only if the path still holds the very file
(device, inode) that was found damaged.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

Identity = tuple[int, int]


class Damaged(Exception):
    """A cache file that opens but is not what this version writes (the reason is the message)."""


def identity(path: Path) -> Identity | None:
    """(device, inode) of what `path` names now, None when nothing is there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def warn(line: str) -> None:
    """A warning on stderr: records keep stdout to themselves."""
    print(f"gecko: warning: {line}", file=sys.stderr, flush=True)


def move_aside(path: Path, seen: Identity | None, reason: str, then: str,
               companions: Sequence[str] = (), report: Callable[[str], None] = warn) -> Path | None:
    """Rename the damaged `path` (and `path + suffix` for each companion) and report it in one line.

    Returns the new path, or None when `path` no longer holds the file seen damaged (another
    process moved it first): the caller then simply opens `path` again.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "c.db").write_text("junk")
    4
    >>> moved = move_aside(d / "c.db", identity(d / "c.db"), "junk", "starting afresh", report=lambda s: None)
    >>> moved.name.startswith("c.db.corrupt-"), (d / "c.db").exists()
    (True, False)
    """
    with _exclusive(path.with_name(path.name + ".repair-lock")):
        if seen is None or identity(path) != seen:
            return None
        target = _aside_name(path)
        # Companions first: once `path` is gone another process may create a fresh cache there,
        # with a fresh -wal that must not be taken for the old one.
        for suffix in companions:
            try:
                os.replace(f"{path}{suffix}", f"{target}{suffix}")
            except FileNotFoundError:
                pass
        os.replace(path, target)
    report(f"{path} was damaged ({reason}); moved aside to {target}, {then}")
    return target


def _aside_name(path: Path) -> Path:
    """`<name>.corrupt-<UTC time>`, with `-2`, `-3`... when that second is taken already."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return target


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if needed; left in place, as lock files must be)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
