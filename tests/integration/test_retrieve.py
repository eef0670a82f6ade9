"""`gecko retrieve` with the real embedder and hnswlib, on real SciFact abstracts."""

from __future__ import annotations

import gc
import json
import re

import numpy as np
import pytest

from gecko_cli.cli import app
from gecko_cli.search.index import Manifest, Searcher
from tests.cli.test_failures import tiny_disk
from tests.conftest import EXAMPLES, jsonl, read_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fret_queries() -> list[dict]:
    """40 SciFact abstracts as seeds, with their titles as the 'generated' query."""
    docs = [json.loads(l) for l, _ in zip((EXAMPLES / "data" / "scifact" / "corpus.jsonl").open(), range(40))]
    return [{"id": f"{d['_id']}#0", "seed": {"id": d["_id"], "title": d["title"], "text": d["text"]},
             "task": "search result", "query": d["title"], "extra": 1} for d in docs]


def test_retrieve_from_the_inputs_own_seeds(runner, fret_queries):
    result = runner.invoke(app, ["retrieve", "--top-k", "5"], input=jsonl(*fret_queries))
    assert result.exit_code == 0, result.stderr
    out = read_jsonl(result.stdout)
    assert [r["id"] for r in out] == [q["id"] for q in fret_queries]
    for r in out:
        assert 5 <= len(r["candidates"]) <= 6 and r["extra"] == 1
        assert r["seed"]["id"] in [c["id"] for c in r["candidates"]]  # the seed is always a candidate
        scores = [c["retriever_score"] for c in r["candidates"][:5]]
        assert scores == sorted(scores, reverse=True)
        assert set(r["candidates"][0]) == {"id", "title", "text", "retriever_score"}
    # titles find their own abstract first almost always
    assert sum(r["candidates"][0]["id"] == r["seed"]["id"] for r in out) >= 36
    assert out[0]["_provenance"][-1]["stage"] == "retrieve"


def test_default_query_format_is_plain_for_the_built_in_embedder(runner, fret_queries):
    """all-MiniLM-L6-v2 never saw `task: ... | query: ...`; with no flag queries go in as plain text."""
    from sentence_transformers import SentenceTransformer

    from gecko_cli.search.embed import resolve_embedder

    (out,) = read_jsonl(runner.invoke(app, ["retrieve", "--top-k", "3", "--exact"], input=jsonl(fret_queries[0])).stdout)
    assert out["_provenance"][-1]["query_template"] == "{text}"
    model = SentenceTransformer(resolve_embedder(None), device="cpu")
    seed = fret_queries[0]["seed"]
    q, d = model.encode([fret_queries[0]["query"], f"{seed['title']} {seed['text']}"], normalize_embeddings=True)
    score = next(c["retriever_score"] for c in out["candidates"] if c["id"] == seed["id"])
    assert score == pytest.approx(float(q @ d), abs=1e-4)


def test_hnsw_equals_exact_here_and_the_index_is_reused(runner, fret_queries, tmp_path, monkeypatch):
    monkeypatch.setenv("GECKO_CACHE_DIR", str(tmp_path / "own-cache"))  # other tests build indexes too
    args = ["retrieve", "--top-k", "10", "--no-seed"]
    approx = read_jsonl(runner.invoke(app, args, input=jsonl(*fret_queries)).stdout)
    exact = read_jsonl(runner.invoke(app, args + ["--exact"], input=jsonl(*fret_queries)).stdout)
    again = read_jsonl(runner.invoke(app, args, input=jsonl(*fret_queries)).stdout)
    assert [[c["id"] for c in r["candidates"]] for r in approx] == [[c["id"] for c in r["candidates"]] for r in exact]
    assert again == approx
    indexes = list((tmp_path / "own-cache" / "indexes").iterdir())
    assert len(indexes) == 1 and (indexes[0] / "manifest.json").is_file()


def test_seed_outside_the_corpus_is_still_a_candidate(runner, fret_queries, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(jsonl(*[q["seed"] for q in fret_queries[1:]]))
    result = runner.invoke(app, ["retrieve", "-k", "3", "--corpus", str(corpus)], input=jsonl(fret_queries[0]))
    cands = read_jsonl(result.stdout)[0]["candidates"]
    assert len(cands) == 4 and cands[-1]["id"] == fret_queries[0]["seed"]["id"]
    assert -1.0 <= cands[-1]["retriever_score"] <= 1.0


def test_bad_record_line_number(runner, fret_queries):
    result = runner.invoke(app, ["retrieve"], input=jsonl(fret_queries[0], {"id": "x", "task": "t"}))
    assert result.exit_code == 1 and 'gecko retrieve: <stdin>:2: missing field "query"' in result.stderr
    assert len(read_jsonl(result.stdout)) == 1


def test_manifest_change_rebuilds(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    manifest = Manifest("m", 16, "h1", 200)
    assert Searcher(vectors, manifest, tmp_path).built is True
    assert Searcher(vectors, manifest, tmp_path).built is False  # loaded from disk
    assert Searcher(vectors, Manifest("m", 16, "h2", 200), tmp_path).built is True


def test_a_garbled_embedding_cache_is_moved_aside_and_changes_no_answer(runner, fret_queries, tmp_path, monkeypatch):
    args, queries = ["retrieve", "--top-k", "5"], jsonl(*fret_queries[:10])
    monkeypatch.setenv("GECKO_CACHE_DIR", str(tmp_path / "clean"))  # fresh too: batches change the last digits
    clean = runner.invoke(app, args, input=queries)
    gc.collect()  # in-process runs: the first run's cache connection (and its WAL) goes now
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "embeddings.sqlite").write_bytes(b"a crash or a bad copy left this here\n" * 200)
    monkeypatch.setenv("GECKO_CACHE_DIR", str(garbled))
    healed = runner.invoke(app, args, input=queries)
    assert healed.exit_code == 0 and clean.exit_code == 0, healed.stderr
    warnings = [line for line in healed.stderr.splitlines() if line.startswith("gecko: warning: ")]
    assert len(warnings) == 1 and f"{garbled / 'embeddings.sqlite'} was damaged" in warnings[0], healed.stderr
    assert len(list(garbled.glob("embeddings.sqlite.corrupt-*"))) == 1 and "Traceback" not in healed.stderr
    assert healed.stdout == clean.stdout


def test_an_index_that_does_not_fit_on_the_disk_is_one_line_and_exit_1(runner, fret_queries, tmp_path, monkeypatch):
    """The cache's indexes/ folder is an 8 KiB file system; the index of 10 passages needs ~17 KiB."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GECKO_CACHE_DIR", str(cache))
    with tiny_disk(cache / "indexes", "8k") as indexes:
        result = runner.invoke(app, ["retrieve", "--top-k", "5"], input=jsonl(*fret_queries[:10]))
        left = list(indexes.iterdir())
    assert result.exit_code == 1 and result.stdout == ""
    assert re.fullmatch(rf"gecko retrieve: {re.escape(str(indexes))}/\w+: No space left on device\n", result.stderr), \
        result.stderr
    assert left == []  # no half-written index keeps the space
