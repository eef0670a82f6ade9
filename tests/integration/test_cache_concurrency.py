"""The caches shared by real processes, as two `--shard`s of a stage on one GECKO_CACHE_DIR share them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gecko_cli.llm.cache import ResultCache
from gecko_cli.search.embed import EmbeddingCache

WORKERS = 4
COMMITS = 150

# A worker: import, say it is ready, wait for "go" (so all open the new file at once), then make
# COMMITS small commits, reading its own and a neighbour's keys after each; print what it committed.
WORKER = """
import json, sys, time
from pathlib import Path
import numpy as np
from gecko_cli.llm.cache import ResultCache
from gecko_cli.search.embed import EmbeddingCache

kind, path, me, commits, go = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
Path(f"{go}.ready-{me}").touch()
while not go.exists():
    time.sleep(0.005)
if kind == "llm":
    cache = ResultCache(path)
    put = lambda key, i: cache.put_many({key: [me, i]})
    get = lambda keys: set(cache.get_many(keys))
else:
    cache = EmbeddingCache(path)
    put = lambda key, i: cache.put_many([(key.encode(), np.array([me, i, 0.5], np.float32))])
    get = lambda keys: {k.decode() for k in cache.get_many([k.encode() for k in keys], 3)}
done = []
for i in range(commits):
    key = f"{me}-{i}"
    put(key, i)
    done.append(key)
    assert key in get([key, f"{(me + 1) % 4}-{i}"]), key  # its own commit is visible at once
print(json.dumps(done))
"""


def run_workers(kind: str, path: Path, tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """WORKERS processes released together on one cache file; their finished runs."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, kind, str(path), str(me), str(COMMITS), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in range(WORKERS)]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("go.ready-*"))) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    return [finish(p) for p in procs]


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("kind", ["llm", "emb"])
def test_processes_writing_one_new_cache_at_once_all_succeed_and_lose_nothing(kind, tmp_path):
    path = tmp_path / "cache" / f"{kind}.sqlite"
    runs = run_workers(kind, path, tmp_path)
    for run in runs:
        assert run.returncode == 0 and run.stderr == "", run.stderr  # no traceback, no warning
    committed = [key for run in runs for key in json.loads(run.stdout)]
    assert len(committed) == WORKERS * COMMITS
    if kind == "llm":
        found = ResultCache(path).get_many(committed)
        assert found == {f"{me}-{i}": [me, i] for me in range(WORKERS) for i in range(COMMITS)}
    else:
        found = EmbeddingCache(path).get_many([k.encode() for k in committed], 3)
        assert len(found) == len(committed)
        assert all(v.tolist() == [*map(float, k.decode().split("-")), 0.5] for k, v in found.items())
    assert not list(path.parent.glob("*.corrupt-*"))


def test_processes_opening_one_damaged_cache_at_once_move_it_aside_once(tmp_path):
    path = tmp_path / "cache" / "llm.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"junk\n")
    runs = run_workers("llm", path, tmp_path)
    assert [run.returncode for run in runs] == [0] * WORKERS, [run.stderr for run in runs]
    (moved,) = path.parent.glob("llm.sqlite.corrupt-*")
    assert moved.read_bytes() == b"junk\n"
    stderr = "".join(run.stderr for run in runs)
    assert stderr == (f"gecko: warning: {path} was damaged (file is not a database); moved aside to {moved}, "
                      f"starting an empty cache\n")  # one process moved it; the others opened the fresh one
    committed = [key for run in runs for key in json.loads(run.stdout)]
    assert len(ResultCache(path).get_many(committed)) == WORKERS * COMMITS


# Holds a lock on the file for `seconds` (after printing "held"): BEGIN <how> and one row written.
HOLDER = """
import sqlite3, sys, time
path, journal, how, seconds = sys.argv[1:]
db = sqlite3.connect(path, isolation_level=None)
db.execute(f"PRAGMA journal_mode={journal}")
db.execute("CREATE TABLE IF NOT EXISTS llm (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
db.execute(f"BEGIN {how}")
db.execute("INSERT INTO llm VALUES ('holder', '1')")
print("held", flush=True)
time.sleep(float(seconds))
db.execute("COMMIT")
"""


def hold(path: Path, journal: str, how: str, seconds: float) -> subprocess.Popen:
    """A process holding `path` locked (BEGIN `how`, in `journal` mode) for `seconds` from now."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), journal, how, str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("journal, how", [("delete", "EXCLUSIVE"), ("delete", "IMMEDIATE"), ("wal", "EXCLUSIVE")])
def test_a_cache_held_by_another_process_is_waited_for_not_moved(journal, how, tmp_path, capfd):
    """A file still in rollback mode (a cache being created) while another process writes it:
    EXCLUSIVE makes even reading wait; IMMEDIATE (a write in progress) makes `PRAGMA
    journal_mode=WAL` fail at once, without SQLite's busy handler. In a WAL cache opening does
    not wait, the first write does."""
    path = tmp_path / "llm.sqlite"
    holder = hold(path, journal, how, 2)
    start = time.monotonic()
    cache = ResultCache(path)
    cache.put_many({"mine": 2})
    waited = time.monotonic() - start
    assert holder.wait(timeout=30) == 0
    assert 1.0 < waited < 30
    assert cache.get_many(["holder", "mine"]) == {"holder": 1, "mine": 2}
    assert not list(tmp_path.glob("*.corrupt-*")) and "warning" not in capfd.readouterr().err


def test_a_lock_held_past_the_wait_ends_in_one_line_and_moves_nothing(tmp_path):
    path = tmp_path / "llm.sqlite"
    holder = hold(path, "delete", "EXCLUSIVE", 3)
    from gecko_cli.contract.errors import GeckoError
    from gecko_cli.contract.sqlite_store import SqliteStore
    from gecko_cli.llm.cache import LLM_TABLE

    with pytest.raises(GeckoError) as error:
        SqliteStore(path, LLM_TABLE, wait=0.5)
    assert str(error.value).startswith(f"cache {path} stayed locked by another process for 0.5 s (database is locked)")
    assert "\n" not in str(error.value)
    assert holder.wait(timeout=30) == 0
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert sqlite3.connect(path).execute("SELECT value FROM llm").fetchall() == [("1",)]
