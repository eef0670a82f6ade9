"""One way to open gecko's SQLite caches: wait while another process holds them, start afresh when damaged.

Both caches (`llm.sqlite`, `embeddings.sqlite`) are one table each, shared by every gecko
process on the machine (two `--shard`s of a stage write the same file at once). So:

- Busy is never damage. `database is locked` (SQLITE_BUSY / SQLITE_LOCKED) is retried with
  backoff for up to `wait` seconds (120 by default), also around `PRAGMA journal_mode=WAL` and
  `CREATE TABLE`: while one process is still creating a cache (the file in rollback mode, a
  write in progress), another's `PRAGMA journal_mode=WAL` fails at once, without SQLite's busy
  handler (it would deadlock), so the connection's own timeout is not enough. Only after
  `wait` seconds does the run end, in one line naming the file.
- Damage is not an error: a file that is not a database (SQLITE_NOTADB), a malformed one
  (SQLITE_CORRUPT, also when a read or write meets it later), a failed `PRAGMA quick_check`,
  or a table whose columns are not the ones this version writes is moved aside
  (`quarantine.move_aside`, with its -wal/-shm/-journal when SQLite has not already dropped
  them as unusable) and an empty cache takes its place.
- Any other SQLite failure (cannot open, read-only, disk full) ends in one line naming the
  file, `PATH: reason` in SQLite's words: a `PathError` with exit 1 (the file failed during the
  run), never a traceback. A wrong query stays a traceback: that is a bug.

The check on open, and what it costs (measured here on embeddings caches of 67 MiB and 112 MiB,
25,000 vectors). The schema (`PRAGMA table_info`) costs under 1 ms. `PRAGMA quick_check` reads
every page: 55-125 ms when the file is in the page cache, 520 ms (67 MiB) and 870 ms (112 MiB)
when it is not, growing with the file, and the caches grow without bound (a corpus of a
million passages embeds to gigabytes). So `quick_check` runs only on files up to
`QUICK_CHECK_MAX_BYTES` (64 MiB: about half a second at worst); a larger file gets the schema
check plus a walk to its first and last key (a few pages: 7-13 ms cold, under 1 ms warm, on
112 MiB), and damage deeper in it is caught when a read or write meets it (SQLITE_CORRUPT),
which moves the file aside there and then. A truncated file, even one page short, fails
already at `PRAGMA journal_mode` (SQLite compares the file with its header).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from gecko_cli.contract.errors import GeckoError, PathError
from gecko_cli.contract.quarantine import Damaged, Identity, identity, move_aside, warn

WAIT_SECONDS = 120.0
QUICK_CHECK_MAX_BYTES = 64 * 2**20
COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite's files beside the database, moved with it
_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (primary codes; extended ones share the low byte)
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_REPAIRS = 3  # a fresh file that is "damaged" again means something else is wrong

T = TypeVar("T")


@dataclass(frozen=True)
class Table:
    """The one table a cache holds, exactly as this version of gecko writes it."""

    name: str
    columns: tuple[str, ...]  # the first one is the primary key
    create: str  # CREATE TABLE IF NOT EXISTS ...


def failure_kind(exc: sqlite3.Error) -> str:
    """"busy", "damaged", "other" (a user can cause it) or "bug", from SQLite's error code.

    >>> failure_kind(sqlite3.OperationalError("database is locked"))
    'busy'
    >>> failure_kind(sqlite3.DatabaseError("file is not a database"))
    'damaged'
    >>> failure_kind(sqlite3.OperationalError("attempt to write a readonly database"))
    'other'
    >>> failure_kind(sqlite3.ProgrammingError("Incorrect number of bindings supplied"))
    'bug'
    """
    if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
        return "bug"  # a wrong query or binding: a traceback is the right answer
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11; the message before that
    if code is not None:
        primary = code & 0xFF
        return "busy" if primary in _BUSY else "damaged" if primary in _DAMAGED else "other"
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "busy"
    return "damaged" if "not a database" in text or "malformed" in text else "other"


class SqliteStore:
    """One table in one SQLite file (WAL), safe to share between processes and threads.

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "c.sqlite"
    >>> store = SqliteStore(path, Table("kv", ("k", "v"), "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v)"))
    >>> store.write_many("INSERT OR REPLACE INTO kv VALUES (?, ?)", [("a", 1)])
    >>> store.read("SELECT v FROM kv WHERE k = ?", ["a"])
    [(1,)]
    """

    def __init__(self, path: Path, table: Table, wait: float = WAIT_SECONDS,
                 report: Callable[[str], None] = warn):
        self.path = path
        self.table = table
        self.wait = wait
        self.report = report
        self._lock = threading.RLock()  # one connection, shared by a backend's threads
        self._seen: Identity | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self._open()

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """All rows of one query; a cache found damaged meanwhile is replaced, so the answer is []."""
        return self._run(lambda db: db.execute(sql, params).fetchall())

    def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One transaction: all rows are committed, or (after the wait) none and a GeckoError."""
        def write(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(sql, rows)
        self._run(write)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _run(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """`action` on the connection: busy is waited out, damage replaces the file (then retries)."""
        with self._lock:
            waited = _Backoff(self.wait)
            repaired = False
            while True:
                try:
                    return action(self.db)
                except sqlite3.DatabaseError as exc:
                    if self._triage(exc, waited):
                        continue
                    if repaired:
                        raise self._error(exc, "damaged") from None
                    self.db.close()
                    self._replace(str(exc))
                    self.db = self._open()
                    repaired = True

    def _triage(self, exc: sqlite3.DatabaseError, waited: _Backoff) -> bool:
        """True: the database was busy and we waited, try again; False: it is damaged. Anything else raises:
        a bug as it is, a failure the user can cause as one line."""
        kind = failure_kind(exc)
        if kind == "bug":
            raise exc
        if kind == "busy" and waited.sleep():
            return True
        if kind != "damaged":
            raise self._error(exc, kind) from None
        return False

    def _open(self) -> sqlite3.Connection:
        """A checked connection; a damaged file is moved aside and a fresh one created."""
        waited = _Backoff(self.wait)
        repairs = 0
        while repairs <= _REPAIRS:
            self._seen = identity(self.path)  # the file found damaged, if it is; moved aside only if unchanged
            try:
                db = self._connect_checked()
                self._seen = self._seen or identity(self.path)  # a file this connection just created
                return db
            except Damaged as damage:
                reason = str(damage)
            except sqlite3.DatabaseError as exc:
                if self._triage(exc, waited):
                    continue
                reason = str(exc)
            self._replace(reason)
            repairs += 1
        raise GeckoError(f"cache {self.path} is still damaged after moving it aside {_REPAIRS} times")

    def _connect_checked(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=self.wait, check_same_thread=False)
        try:
            check_columns(db, self.table)  # before anything writes: a foreign file is moved aside untouched
            db.execute("PRAGMA journal_mode=WAL")
            # Each commit survives the process being killed (kill -9); only power loss could drop
            # the last commits, which would at worst repeat a computation.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(self.table.create)
            check_pages(db, self.table, self.path.stat().st_size)
        except BaseException:
            db.close()
            raise
        return db

    def _replace(self, reason: str) -> None:
        move_aside(self.path, self._seen, reason, "starting an empty cache", COMPANIONS, self.report)

    def _error(self, exc: sqlite3.Error, kind: str) -> GeckoError:
        if kind == "busy":
            return GeckoError(f"cache {self.path} stayed locked by another process for {self.wait:g} s ({exc}); "
                              f"try again, or point GECKO_CACHE_DIR elsewhere")
        return PathError(str(self.path), str(exc))


def check_columns(db: sqlite3.Connection, table: Table) -> None:
    """Raise `Damaged` when `table` exists with other columns than this version writes."""
    columns = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table.name})"))
    if columns and columns != table.columns:
        raise Damaged(f"table {table.name} has columns ({', '.join(columns)}), expected ({', '.join(table.columns)})")


def check_pages(db: sqlite3.Connection, table: Table, size: int) -> None:
    """Raise `Damaged` (or SQLite's own SQLITE_CORRUPT) unless the file looks sound.

    Files up to QUICK_CHECK_MAX_BYTES get `PRAGMA quick_check`; larger ones a walk to the first
    and last key (see the module docstring for why).
    """
    if size <= QUICK_CHECK_MAX_BYTES:
        verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            # The first line may be "*** in database main ***"; the finding is the line after.
            finding = [line for line in verdict.splitlines() if line and not line.startswith("***")]
            raise Damaged(f"quick_check: {(finding or [verdict])[0]}")
        return
    key = table.columns[0]
    for order in ("ASC", "DESC"):
        db.execute(f"SELECT {key} FROM {table.name} ORDER BY {key} {order} LIMIT 1").fetchall()


class _Backoff:
    """Sleeps of 50 ms doubling to 2 s, until `limit` seconds have passed since creation."""

    def __init__(self, limit: float):
        self.deadline = time.monotonic() + limit
        self.delay = 0.05

    def sleep(self) -> bool:
        """Sleep and return True, or return False at once when the time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(self.delay, left))
        self.delay = min(self.delay * 2, 2.0)
        return True
