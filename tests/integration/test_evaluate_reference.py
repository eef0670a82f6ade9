"""`gecko evaluate` against sentence-transformers' own evaluators and trec_eval, on real data.

The retrieval check uses a slice of SciFact test (every judged document of the first
50 test queries plus 200 other abstracts) so the suite stays fast on 2 cores; the full
split was checked the same way by `python -m benchmarks run evaluate` (results in
benchmarks/results/evaluate.json).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from gecko_cli.cli import app
from gecko_cli.eval.data import read_qrels
from gecko_cli.search.embed import default_embedder_path
from tests.conftest import EXAMPLES, jsonl, read_jsonl

pytestmark = pytest.mark.slow
SCIFACT = EXAMPLES / "data" / "scifact"
STSB_TEST = EXAMPLES / "data" / "stsbenchmark" / "test.tsv"


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scifact-slice")
    qrels = read_qrels(SCIFACT / "qrels" / "test.tsv")
    keep_q = sorted(qrels)[:50]
    judged = {d for q in keep_q for d in qrels[q]}
    docs = [json.loads(l) for l in (SCIFACT / "corpus.jsonl").open()]
    others = [d for d in docs if d["_id"] not in judged]
    random.Random(0).shuffle(others)
    chosen = [d for d in docs if d["_id"] in judged] + others[:200]
    (folder / "corpus.jsonl").write_text(jsonl(*chosen))
    shutil.copy(SCIFACT / "queries.jsonl", folder / "queries.jsonl")
    (folder / "qrels").mkdir()
    rows = [f"{q}\t{d}\t{s}" for q in keep_q for d, s in qrels[q].items()]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(default_embedder_path(), device="cpu")


@pytest.fixture(scope="module")
def gecko_scifact(scifact_slice, tmp_path_factory):
    from typer.testing import CliRunner
    run = tmp_path_factory.mktemp("runs") / "run.trec"
    result = CliRunner().invoke(app, ["evaluate", "--dataset", str(scifact_slice), "--run-file", str(run)])
    assert result.exit_code == 0, result.stderr
    return read_jsonl(result.stdout)[0], run


def test_retrieval_equals_sentence_transformers_evaluator(scifact_slice, st_model, gecko_scifact):
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    ours, _ = gecko_scifact
    corpus = {d["_id"]: (d["title"] + " " + d["text"]).strip()
              for d in map(json.loads, (scifact_slice / "corpus.jsonl").open())}
    qrels = read_qrels(scifact_slice / "qrels" / "test.tsv")
    all_queries = {q["_id"]: q["text"] for q in map(json.loads, (scifact_slice / "queries.jsonl").open())}
    evaluator = InformationRetrievalEvaluator(
        {q: all_queries[q] for q in qrels}, corpus, {q: set(r) for q, r in qrels.items()},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[10, 100], map_at_k=[100],
        write_csv=False, name="sf")
    theirs = evaluator(st_model)
    assert ours["n_queries"] == 50
    assert ours["ndcg@10"] == pytest.approx(theirs["sf_cosine_ndcg@10"], abs=1e-3)
    assert ours["mrr@10"] == pytest.approx(theirs["sf_cosine_mrr@10"], abs=1e-3)
    assert ours["recall@100"] == pytest.approx(theirs["sf_cosine_recall@100"], abs=1e-3)
    assert ours["map@100"] == pytest.approx(theirs["sf_cosine_map@100"], abs=1e-3)


def test_run_file_scored_by_trec_eval_gives_the_same_metrics(scifact_slice, gecko_scifact):
    import pytrec_eval  # the [test] extra, installed by make install
    ours, run_path = gecko_scifact
    run: dict[str, dict[str, float]] = {}
    for line in run_path.read_text().splitlines():
        qid, q0, doc, rank, score, tag = line.split()
        assert q0 == "Q0" and tag == "gecko-384"
        run.setdefault(qid, {})[doc] = float(score)
    assert all(len(docs) == 100 for docs in run.values())
    qrels = read_qrels(scifact_slice / "qrels" / "test.tsv")
    measures = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10,100", "recall.100", "map_cut.100"}).evaluate(run)
    mean = lambda key: sum(m[key] for m in measures.values()) / len(measures)
    assert ours["ndcg@10"] == pytest.approx(mean("ndcg_cut_10"), abs=1e-4)
    assert ours["ndcg@100"] == pytest.approx(mean("ndcg_cut_100"), abs=1e-4)
    assert ours["recall@100"] == pytest.approx(mean("recall_100"), abs=1e-4)
    assert ours["map@100"] == pytest.approx(mean("map_cut_100"), abs=1e-4)


def test_sts_benchmark_equals_embedding_similarity_evaluator(runner, st_model, tmp_path):
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
    from gecko_cli.eval.data import load_sts
    result = runner.invoke(app, ["evaluate", "--sts", str(STSB_TEST), "--dims", "384,128"])
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(result.stdout)
    assert [(r["dataset"], r["split"], r["dim"], r["n_pairs"]) for r in rows] == [
        ("stsbenchmark", "test", 384, 1379), ("stsbenchmark", "test", 128, 1379)]
    pairs = load_sts(STSB_TEST)
    theirs = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.scores, write_csv=False,
                                          similarity_fn_names=["cosine"], name="b")(st_model)
    assert rows[0]["spearman"] == pytest.approx(theirs["b_spearman_cosine"], abs=1e-3)
    assert rows[0]["pearson"] == pytest.approx(theirs["b_pearson_cosine"], abs=1e-3)
    # Truncation checked against the evaluator's own truncate_dim on a slice (one more full pass is slow).
    n = 200
    truncated = EmbeddingSimilarityEvaluator(pairs.first[:n], pairs.second[:n], pairs.scores[:n], write_csv=False,
                                             similarity_fn_names=["cosine"], name="b", truncate_dim=128)(st_model)
    slice_file = tmp_path / "slice.tsv"
    slice_file.write_text("\n".join(STSB_TEST.read_text(encoding="utf-8").splitlines()[:n + 1]) + "\n", encoding="utf-8")
    ours = read_jsonl(runner.invoke(app, ["evaluate", "--sts", str(slice_file), "--dims", "128"]).stdout)[0]
    assert ours["n_pairs"] == n
    assert ours["spearman"] == pytest.approx(truncated["b_spearman_cosine"], abs=1e-3)


def test_several_dims_cost_one_encoding_pass_and_the_second_run_is_cached(runner, scifact_slice, tmp_path, monkeypatch):
    monkeypatch.setenv("GECKO_CACHE_DIR", str(tmp_path / "fresh-cache"))
    n_texts = sum(1 for _ in (scifact_slice / "corpus.jsonl").open()) + 50
    first = runner.invoke(app, ["evaluate", "-d", str(scifact_slice), "--dims", "384,256,128,64"])
    assert first.exit_code == 0, first.stderr
    assert f"encoded {n_texts:,} texts, 0 served from the cache" in first.stderr  # not 4 x n_texts
    assert [r["dim"] for r in read_jsonl(first.stdout)] == [384, 256, 128, 64]
    second = runner.invoke(app, ["evaluate", "-d", str(scifact_slice), "--dims", "128"])
    assert f"encoded 0 texts, {n_texts:,} served from the cache" in second.stderr
    assert read_jsonl(second.stdout)[0]["ndcg@10"] == read_jsonl(first.stdout)[2]["ndcg@10"]


def training_record(i: int, query: str, pos: str, neg: str) -> dict:
    return {"id": f"r{i}", "task": "fact checking", "query": query,
            "positive": {"title": "", "text": pos}, "negatives": [{"text": neg}]}


RECORDS = [
    training_record(0, "Aspirin lowers the risk of heart attack.",
                    "Low-dose aspirin reduced myocardial infarction in a randomized trial.",
                    "The Eiffel tower was completed in 1889."),
    training_record(1, "Exercise improves sleep quality.",
                    "Regular physical activity was associated with better sleep in adults.",
                    "Photosynthesis converts light into chemical energy."),
]


def test_training_records_on_stdin(runner):
    result = runner.invoke(app, ["evaluate", "--dims", "384,64"], input=jsonl(*RECORDS))
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(result.stdout)
    assert [(r["dim"], r["n_queries"], r["accuracy@1"], r["mrr"]) for r in rows] == [(384, 2, 1.0, 1.0), (64, 2, 1.0, 1.0)]


def test_training_records_bad_line_and_rejects(runner, tmp_path):
    bad = {"id": "x", "query": "q", "positive": {"title": "t"}}
    result = runner.invoke(app, ["evaluate"], input=jsonl(RECORDS[0], bad, RECORDS[1]))
    assert result.exit_code == 1
    assert 'gecko evaluate: <stdin>:2: missing field "positive.text"' in result.stderr
    rejects = tmp_path / "rej.jsonl"
    result = runner.invoke(app, ["evaluate", "--rejects", str(rejects)], input=jsonl(RECORDS[0], bad, RECORDS[1]))
    assert result.exit_code == 0 and read_jsonl(result.stdout)[0]["n_queries"] == 2
    assert read_jsonl(rejects.read_text())[0]["line"] == 2
    assert "3 in, 2 out, 1 rejected" in result.stderr


def test_missing_dataset_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(app, ["evaluate", "--dataset", str(tmp_path)])
    assert result.exit_code == 2 and "no such file" in result.stderr
