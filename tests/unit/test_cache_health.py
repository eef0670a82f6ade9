"""Damaged caches and indexes are moved aside with one warning line and start afresh; an entry that
does not decode is a miss; a healthy cache is left exactly as it is."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from gecko_cli.contract import sqlite_store
from gecko_cli.contract.errors import PathError
from gecko_cli.contract.quarantine import identity, move_aside
from gecko_cli.llm.cache import ResultCache, _cached
from gecko_cli.search.embed import EmbeddingCache, Encoder, text_key
from gecko_cli.search.index import Manifest, Searcher
from gecko_cli.search.vectors import exact_top_k, normalize

DIM = 4
WARNING = re.compile(r"gecko: warning: (?P<path>\S+) was damaged \((?P<reason>.*)\); "
                     r"moved aside to (?P<moved>\S+), (?P<then>starting an empty cache|rebuilding the index)")


def open_cache(kind: str, path: Path) -> ResultCache | EmbeddingCache:
    return ResultCache(path) if kind == "llm" else EmbeddingCache(path)


def put(kind: str, path: Path, items: dict[str, int]) -> None:
    """Open the cache at `path`, store `items` (an int per key, as each cache stores it), close it."""
    cache = open_cache(kind, path)
    if kind == "llm":
        cache.put_many({k: [v] for k, v in items.items()})
    else:
        cache.put_many([(k.encode(), np.full(DIM, v, np.float32)) for k, v in items.items()])
    cache.store.close()


def get(kind: str, path: Path, keys: list[str]) -> dict[str, int]:
    """What a fresh open of the cache at `path` holds for `keys`, as ints."""
    cache = open_cache(kind, path)
    if kind == "llm":
        found = {k: v[0] for k, v in cache.get_many(keys).items()}
    else:
        found = {k.decode(): int(v[0]) for k, v in cache.get_many([k.encode() for k in keys], DIM).items()}
    cache.store.close()
    return found


def real_cache(kind: str, path: Path, n: int = 300) -> dict[str, int]:
    """A closed cache of `n` entries; returns what it holds."""
    items = {f"key-{i:04d}": i for i in range(n)}
    put(kind, path, items)
    return items


def big_llm_cache(path: Path, n: int = 300) -> list[str]:
    """A closed LLM cache of `n` 1 KB entries (about four to a 4 KB page); returns its keys."""
    cache = ResultCache(path)
    cache.put_many({f"key-{i:04d}": "x" * 1000 for i in range(n)})
    cache.store.close()
    return [f"key-{i:04d}" for i in range(n)]


def warnings(err: str) -> list[re.Match]:
    lines = [line for line in err.splitlines() if line]
    assert all(WARNING.fullmatch(line) for line in lines), lines  # nothing but warning lines
    return [WARNING.fullmatch(line) for line in lines]


@pytest.mark.parametrize("kind", ["llm", "emb"])
def test_a_healthy_cache_is_reopened_as_it_is(kind, tmp_path, capsys):
    path = tmp_path / "cache.sqlite"
    items = real_cache(kind, path)
    before = identity(path), path.read_bytes()
    assert get(kind, path, list(items)) == items
    assert (identity(path), path.read_bytes()) == before
    assert not list(tmp_path.glob("*.corrupt-*")) and capsys.readouterr().err == ""


def garbage(path: Path, table: str) -> str:
    path.write_bytes(b"junk\n")
    Path(f"{path}-wal").write_bytes(b"stale wal")  # a WAL left beside it must not be replayed into the new file
    return "file is not a database"


def first_100_bytes(path: Path, table: str) -> str:
    path.write_bytes(path.read_bytes()[:100])
    return "database disk image is malformed"


def one_page_short(path: Path, table: str) -> str:
    path.write_bytes(path.read_bytes()[:-4096])
    return "database disk image is malformed"


def wrong_schema(path: Path, table: str) -> str:
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {table} (k TEXT, v TEXT)")
    db.close()
    expected = "key, value" if table == "llm" else "key, vec"
    return f"table {table} has columns (k, v), expected ({expected})"


@pytest.mark.parametrize("kind", ["llm", "emb"])
@pytest.mark.parametrize("damage", [garbage, first_100_bytes, one_page_short, wrong_schema])
def test_a_damaged_cache_is_moved_aside_and_replaced_by_an_empty_one(kind, damage, tmp_path, capsys):
    path = tmp_path / "cache.sqlite"
    real_cache(kind, path)
    reason = damage(path, kind)  # the table is named like the kind
    damaged = path.read_bytes()
    assert get(kind, path, ["key-0001"]) == {}
    (warning,) = warnings(capsys.readouterr().err)
    (moved,) = tmp_path.glob("cache.sqlite.corrupt-*[0-9Z]")
    assert warning.groupdict() == {"path": str(path), "reason": reason, "moved": str(moved),
                                   "then": "starting an empty cache"}
    assert moved.read_bytes() == damaged
    live_wal = Path(f"{path}-wal")  # SQLite deletes a WAL it cannot use, or it moves along with the file
    assert not live_wal.exists() or live_wal.read_bytes() != b"stale wal"
    put(kind, path, {"new": 7})  # later runs use the fresh cache, silently
    assert get(kind, path, ["new", "key-0001"]) == {"new": 7}
    assert capsys.readouterr().err == "" and list(tmp_path.glob("cache.sqlite.corrupt-*[0-9Z]")) == [moved]


def damage_page_of(path: Path, key: str) -> None:
    """Overwrite, with junk, the 4 KB page that holds `key` (a leaf in the middle of the b-tree)."""
    data = bytearray(path.read_bytes())
    page = data.index(key.encode()) // 4096
    assert page > 0  # never the header page: this damage is found only by reading that page
    data[page * 4096:(page + 1) * 4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(data))


def test_damage_inside_a_small_cache_is_found_on_open(tmp_path, capsys):
    path = tmp_path / "llm.sqlite"
    big_llm_cache(path)
    damage_page_of(path, "key-0150")
    assert get("llm", path, ["key-0001"]) == {}
    (warning,) = warnings(capsys.readouterr().err)
    assert warning["reason"].startswith(("quick_check: ", "database disk image is malformed"))


def test_damage_inside_a_large_cache_is_found_when_read_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """Above QUICK_CHECK_MAX_BYTES opening checks only the schema and the b-tree's edges; a read
    that meets the damage moves the file aside there and then, and answers "not cached"."""
    monkeypatch.setattr(sqlite_store, "QUICK_CHECK_MAX_BYTES", 0)
    path = tmp_path / "llm.sqlite"
    keys = big_llm_cache(path)
    damage_page_of(path, "key-0150")
    cache = ResultCache(path)
    assert capsys.readouterr().err == ""  # the cheap check on open does not see it
    assert cache.get_many(["key-0001"]) == {"key-0001": "x" * 1000}  # an undamaged page still answers
    assert cache.get_many(keys) == {}
    (warning,) = warnings(capsys.readouterr().err)
    assert warning["reason"] == "database disk image is malformed"
    cache.put_many({"new": 1})
    assert cache.get_many(["new"]) == {"new": 1} and ResultCache(path).get_many(["new"]) == {"new": 1}


def test_an_llm_entry_that_does_not_decode_is_a_miss_and_is_recomputed(tmp_path, capsys):
    path = tmp_path / "llm.sqlite"
    put("llm", path, {"good": 1})
    with sqlite3.connect(path) as db:
        db.executemany("INSERT OR REPLACE INTO llm VALUES (?, ?)", [("bad json", '{"oops'), ("a blob", b"\x00\x01")])
    db.close()
    cache = ResultCache(path)
    asked: list[int] = []

    def compute(indices: list[int]) -> list[str]:
        asked.extend(indices)
        return [f"fresh {i}" for i in indices]

    assert _cached(cache, ["good", "bad json", "a blob"], compute) == [[1], "fresh 1", "fresh 2"]
    assert asked == [1, 2]
    assert cache.get_many(["bad json", "a blob"]) == {"bad json": "fresh 1", "a blob": "fresh 2"}
    assert capsys.readouterr().err == "" and not list(tmp_path.glob("*.corrupt-*"))


class FakeModel:
    """What Encoder needs of a SentenceTransformer: text i -> [i, i, i, i]."""

    max_seq_length = 16

    def __init__(self, texts: list[str]):
        self.texts = texts

    def get_embedding_dimension(self) -> int:
        return DIM

    def encode(self, texts: list[str], **kwargs: object) -> np.ndarray:
        return np.array([[self.texts.index(t)] * DIM for t in texts], np.float32)


def test_a_vector_that_does_not_decode_is_a_miss_and_is_re_encoded(tmp_path):
    texts = ["three floats", "five bytes", "not finite", "text, not bytes", "good"]
    encoder = Encoder("fake", FakeModel(texts), EmbeddingCache(tmp_path / "embeddings.sqlite"), fingerprint="f")
    stored = [np.ones(3, np.float32).tobytes(), b"abcde", np.array([1, np.nan, 1, 1], np.float32).tobytes(),
              "1234567890123456", np.full(DIM, 4, np.float32).tobytes()]
    keys = [text_key("f", "", t, FakeModel.max_seq_length) for t in texts]
    encoder.cache.store.write_many("INSERT INTO emb VALUES (?, ?)", list(zip(keys, stored)))
    expected = np.repeat(np.arange(5, dtype=np.float32)[:, None], DIM, axis=1)
    assert np.array_equal(encoder.encode(texts), expected)
    assert (encoder.encoded, encoder.from_cache) == (4, 1)
    assert np.array_equal(encoder.encode(texts), expected) and encoder.encoded == 4  # the fresh ones replaced them


class InterruptedModel(FakeModel):
    """A FakeModel that records each encode call's texts, and is interrupted (Ctrl-C) at call `stop`."""

    def __init__(self, texts: list[str], stop: int | None = None):
        super().__init__(texts)
        self.calls: list[list[str]] = []
        self.stop = stop

    def encode(self, texts: list[str], **kwargs: object) -> np.ndarray:
        if len(self.calls) + 1 == self.stop:
            raise KeyboardInterrupt
        self.calls.append(list(texts))
        return super().encode(texts, **kwargs)


def test_an_interrupted_encoding_keeps_its_finished_chunks_and_the_rerun_encodes_the_rest(tmp_path):
    """Chunks of CHUNK_BATCHES (4) batches of 2: 20 texts of 20 lengths are chunks of 8, 8 and 4."""
    texts = [f"text {'x' * ((7 * i) % 20)} {i}" for i in range(20)]
    expected = np.repeat(np.arange(20, dtype=np.float32)[:, None], DIM, axis=1)
    clean = InterruptedModel(texts)
    assert np.array_equal(Encoder("fake", clean, EmbeddingCache(None), 2, fingerprint="f").encode(texts), expected)
    assert [len(c) for c in clean.calls] == [8, 8, 4]

    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    interrupted = Encoder("fake", InterruptedModel(texts, stop=2), cache, 2, fingerprint="f")
    with pytest.raises(KeyboardInterrupt):
        interrupted.encode(texts)
    assert interrupted.encoded == 8 and len(cache.store.read("SELECT key FROM emb", [])) == 8  # chunk 1, committed

    rerun = InterruptedModel(texts)
    again = Encoder("fake", rerun, cache, 2, fingerprint="f")
    assert np.array_equal(again.encode(texts), expected)
    assert (again.encoded, again.from_cache) == (12, 8)
    assert rerun.calls == clean.calls[1:]  # the rest, in the very chunks (so batches) of a clean run


def test_a_cache_that_cannot_be_opened_ends_in_one_line_and_is_not_moved(tmp_path):
    path = tmp_path / "llm.sqlite"
    path.mkdir()  # not damage: the user's file system says no
    with pytest.raises(PathError, match=r"^/.*/llm\.sqlite: unable to open database file$") as failure:
        ResultCache(path)
    assert failure.value.exit_code == 1
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_a_full_cache_ends_in_one_line_and_keeps_what_it_had(tmp_path):
    """SQLite's own limit (max_page_count) stands in for a full disk: a real SQLITE_FULL."""
    path = tmp_path / "llm.sqlite"
    put("llm", path, {"kept": 1})
    cache = ResultCache(path)
    cache.store.db.execute(f"PRAGMA max_page_count={path.stat().st_size // 4096 + 1}")
    with pytest.raises(PathError, match=r"^/.*/llm\.sqlite: database or disk is full$"):
        cache.put_many({f"k{i}": "x" * 1000 for i in range(100)})
    assert cache.get_many(["kept", "k1"]) == {"kept": [1]} and not list(tmp_path.glob("*.corrupt-*"))


def test_move_aside_leaves_alone_a_file_another_process_has_already_replaced(tmp_path):
    path = tmp_path / "llm.sqlite"
    path.write_bytes(b"junk")
    seen = identity(path)
    path.rename(tmp_path / "llm.sqlite.corrupt-by-the-other-process")
    path.write_bytes(b"fresh")  # what the other process created after moving the junk aside
    reports: list[str] = []
    assert move_aside(path, seen, "junk", "starting an empty cache", report=reports.append) is None
    assert path.read_bytes() == b"fresh" and reports == []
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == ["llm.sqlite.corrupt-by-the-other-process"]


def truncated_index(folder: Path) -> str:
    (folder / "index.bin").write_bytes((folder / "index.bin").read_bytes()[:100])
    return "index.bin: Index seems to be corrupted or unsupported"


def garbage_index(folder: Path) -> str:
    (folder / "index.bin").write_bytes(b"junk\n" * 1000)
    return "index.bin: Index seems to be corrupted or unsupported"


def missing_index(folder: Path) -> str:
    (folder / "index.bin").unlink()
    return "index.bin: Cannot open file"


def garbage_manifest(folder: Path) -> str:
    (folder / "manifest.json").write_text("{")
    return "manifest.json is not JSON"


@pytest.mark.parametrize("damage", [truncated_index, garbage_index, missing_index, garbage_manifest])
def test_a_damaged_index_is_moved_aside_and_rebuilt(damage, tmp_path, capsys):
    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    manifest = Manifest(embedder="e", dim=8, corpus_hash="h", count=50)
    root = tmp_path / "indexes"
    assert Searcher(vectors, manifest, root).built
    folder = root / manifest.key()
    reason = damage(folder)
    searcher = Searcher(vectors, manifest, root)
    (warning,) = warnings(capsys.readouterr().err)
    (moved,) = root.glob("*.corrupt-*")
    assert warning.groupdict() == {"path": str(folder), "reason": reason, "moved": str(moved),
                                   "then": "rebuilding the index"}
    assert searcher.built and (folder / "manifest.json").is_file()
    queries = vectors[:5]
    assert np.array_equal(searcher.search(queries, 3)[0], exact_top_k(normalize(queries), normalize(vectors), 3)[0])
    again = Searcher(vectors, manifest, root)
    assert not again.built and capsys.readouterr().err == ""
    assert json.loads((folder / "manifest.json").read_text()) == asdict(manifest)
