"""A real `gecko evaluate` killed mid-encoding keeps the chunks it finished; the re-run encodes the rest.

The embedding cache is committed chunk by chunk (`search.embed.CHUNK_BATCHES` batches at a time,
32 texts at `--batch-size 8`), so SIGTERM during a corpus's encoding loses at most the chunk in
hand, and the finished run ranks exactly as a clean one does.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gecko_cli.search.embed import CHUNK_BATCHES
from tests.conftest import EXAMPLES, jsonl

pytestmark = pytest.mark.slow

GECKO = [sys.executable, "-m", "gecko_cli"]
BATCH = 8
SCIFACT = EXAMPLES / "data" / "scifact"
DOCS, QUERIES = 160, 10


def small_beir(folder: Path) -> int:
    """A BEIR folder: 10 SciFact test queries and 160 abstracts (theirs first), cut to 100 characters
    so that encoding takes seconds, not minutes. Returns how many texts an evaluation encodes."""
    with (SCIFACT / "qrels" / "test.tsv").open() as handle:
        judged = list(csv.DictReader(handle, delimiter="\t"))
    queries = list(dict.fromkeys(row["query-id"] for row in judged))[:QUERIES]
    qrels = [row for row in judged if row["query-id"] in queries]
    wanted = {row["corpus-id"] for row in qrels}
    corpus = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open()]
    docs = [d for d in corpus if d["_id"] in wanted] + [d for d in corpus if d["_id"] not in wanted]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(jsonl(*({**d, "text": d["text"][:100]} for d in docs[:DOCS])))
    (folder / "queries.jsonl").write_text(jsonl(*(q for q in map(json.loads, (SCIFACT / "queries.jsonl").open())
                                                  if q["_id"] in queries)))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in qrels))
    return DOCS + QUERIES


def cached_vectors(db: Path) -> int:
    """Rows committed to an embedding cache another process is writing (0 before it exists)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM emb").fetchone()[0]
    except sqlite3.Error:  # the table not created yet
        return 0
    finally:
        conn.close()


def evaluate(dataset: Path, run_file: Path) -> list[str]:
    return [*GECKO, "evaluate", "--dataset", str(dataset), "--batch-size", str(BATCH), "--run-file", str(run_file)]


def counts(stderr: str) -> tuple[int, int]:
    """(encoded, served from the cache) from evaluate's summary line."""
    found = re.search(r"encoded ([\d,]+) texts, ([\d,]+) served from the cache", stderr)
    assert found, stderr
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def test_sigterm_mid_encoding_keeps_the_finished_chunks_and_the_rerun_matches_a_clean_run(tmp_path: Path) -> None:
    dataset = tmp_path / "scifact-small"
    n_texts = small_beir(dataset)
    cache, clean_cache = tmp_path / "cache", tmp_path / "clean-cache"
    # The clean run goes alongside: it only has to finish, and the test waits less.
    clean = subprocess.Popen(evaluate(dataset, tmp_path / "clean.trec"), text=True,
                             env={**os.environ, "GECKO_CACHE_DIR": str(clean_cache)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        env = {**os.environ, "GECKO_CACHE_DIR": str(cache)}
        args = evaluate(dataset, tmp_path / "resumed.trec")
        killed = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        db = cache / "embeddings.sqlite"
        deadline = time.monotonic() + 180
        while cached_vectors(db) == 0 and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        killed.send_signal(signal.SIGTERM)
        _, err = killed.communicate(timeout=120)
        assert killed.returncode == 130, err
        assert err.splitlines()[-1] == "gecko evaluate: interrupted (SIGTERM)" and "Traceback" not in err
        kept = cached_vectors(db)
        # whole chunks of the corpus (encoded before the queries), not all of it
        assert 0 < kept < DOCS and kept % (CHUNK_BATCHES * BATCH) == 0

        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert counts(rerun.stderr) == (n_texts - kept, kept)
        clean_out, clean_err = clean.communicate(timeout=300)
    finally:
        clean.kill()  # (a no-op once it has ended)
        clean.wait()
    assert clean.returncode == 0, clean_err
    assert counts(clean_err) == (n_texts, 0)
    assert rerun.stdout == clean_out and json.loads(rerun.stdout)["n_queries"] == QUERIES
    assert (tmp_path / "resumed.trec").read_text() == (tmp_path / "clean.trec").read_text()
