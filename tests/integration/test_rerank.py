"""`gecko rerank` and `gecko fuse | mine-negatives` on the real embedded LLM (SmolLM2-135M)."""

from __future__ import annotations

import pytest

from gecko_cli.cli import app
from gecko_cli.llm.base import BaseBackend
from tests.conftest import jsonl, read_jsonl

pytestmark = pytest.mark.slow

PASSAGES = [
    {"id": "p1", "title": "Aspirin", "text": "Low-dose aspirin reduced the risk of a first heart attack in a large randomized trial of physicians."},
    {"id": "p2", "title": "Photosynthesis", "text": "Plants convert light energy into chemical energy stored in glucose."},
    {"id": "p3", "title": "Python", "text": "The global interpreter lock allows only one thread to run Python bytecode at a time."},
]
RECORDS = [
    {"id": "p1#0", "seed": PASSAGES[0], "task": "question answering", "query": "does aspirin prevent heart attacks",
     "candidates": [dict(p) for p in PASSAGES], "keep": "me"},
    {"id": "p3#0", "seed": PASSAGES[2], "task": "question answering", "query": "why can python threads not run in parallel",
     "candidates": [dict(p) for p in PASSAGES]},
]


@pytest.fixture(scope="module")
def reranked(tmp_path_factory):
    from typer.testing import CliRunner
    result = CliRunner().invoke(app, ["rerank", "--scorers", "ql,rc"], input=jsonl(*RECORDS))
    assert result.exit_code == 0, result.stderr
    return result


def test_candidates_scored_fused_and_sorted(reranked):
    out = read_jsonl(reranked.stdout)
    assert [r["id"] for r in out] == ["p1#0", "p3#0"] and out[0]["keep"] == "me"
    for record in out:
        cands = record["candidates"]
        assert [c["rank"] for c in cands] == [1, 2, 3]
        assert all({"ql", "rc", "rank_ql", "rank_rc", "rrf"} <= set(c) for c in cands)
        assert all(c["ql"] < 0 for c in cands)
        # query likelihood finds the passage each query was written for
        best_ql = min(cands, key=lambda c: c["rank_ql"])
        assert best_ql["id"] == record["seed"]["id"]
        assert isinstance(record["positive_is_seed"], bool)
        assert record["positive_is_seed"] == (cands[0]["id"] == record["seed"]["id"])
        assert record["_provenance"][-1]["stage"] == "rerank"


def test_second_run_is_served_from_the_cache(runner, reranked):
    assert "12 scored pairs computed, " in reranked.stderr and ", 0 from the cache" in reranked.stderr
    again = runner.invoke(app, ["rerank", "--scorers", "ql,rc"], input=jsonl(*RECORDS))
    assert "0 scored pairs computed, " in again.stderr and ", 12 from the cache" in again.stderr
    assert read_jsonl(again.stdout)[0]["candidates"] == read_jsonl(reranked.stdout)[0]["candidates"]


def test_resume_continues_an_interrupted_run(runner, reranked, tmp_path):
    """A run stopped after its first record (and mid-way through writing the second) is completed."""
    full = reranked.stdout.splitlines(keepends=True)
    out, src = tmp_path / "fret.jsonl", tmp_path / "queries.jsonl"
    src.write_text(jsonl(*RECORDS))
    out.write_text(full[0] + full[1][:40])  # a torn last line, as a killed process leaves it
    result = runner.invoke(app, ["rerank", "--scorers", "ql,rc", "-i", str(src), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.stderr
    assert "1 done by an earlier run (--resume)" in result.stderr
    assert read_jsonl(out.read_text()) == read_jsonl(reranked.stdout)


def test_refuse_then_mine(runner, reranked):
    refused = runner.invoke(app, ["fuse", "--scores", "ql", "--k", "60"], input=reranked.stdout)
    mined = runner.invoke(app, ["mine-negatives"], input=refused.stdout)
    out = read_jsonl(mined.stdout)
    assert [r["positive"]["id"] for r in out] == ["p1", "p3"]  # QL alone relabels nothing here
    assert all(len(r["negatives"]) == 1 and r["negatives"][0]["id"] != r["positive"]["id"] for r in out)


def test_fuse_with_the_retriever_score(runner, reranked, tmp_path):
    scored = [{**r, "candidates": [{**c, "retriever_score": s} for c, s in zip(r["candidates"], (0.1, 0.5, 0.9))]}
              for r in RECORDS]
    bare = {**RECORDS[0], "id": "bare"}  # candidates without retriever_score: rejected with the reason
    rejects = tmp_path / "rejects.jsonl"
    result = runner.invoke(app, ["rerank", "--scorers", "ql,rc", "--fuse", "ql,retriever_score", "--rejects", str(rejects)],
                           input=jsonl(*scored, bare))
    assert result.exit_code == 0, result.stderr
    out = read_jsonl(result.stdout)
    assert [r["id"] for r in out] == ["p1#0", "p3#0"]
    for record in out:
        for c in record["candidates"]:
            assert c["rrf"] == pytest.approx(1 / c["rank_ql"] + 1 / c["rank_retriever_score"])
            assert "rank_rc" not in c and "rc" in c  # scored, not fused
        assert record["_provenance"][-1]["fused"] == ["ql", "retriever_score"]
    [rejected] = read_jsonl(rejects.read_text())
    assert rejected["line"] == 3 and "no 'retriever_score' to fuse" in rejected["error"]
    wrong = runner.invoke(app, ["rerank", "--scorers", "ql", "--fuse", "rc"], input=jsonl(*RECORDS))
    assert wrong.exit_code == 2 and "--fuse takes fields among ql, retriever_score" in wrong.stderr


def test_embedded_default_is_ql_fused_with_the_retriever(runner, reranked):
    """No flags on the embedded LLM: QL only (its RC is worse than chance), fused with the
    retriever's score where the candidates carry one; served from the fixture's cached QL."""
    scored = [{**r, "candidates": [{**c, "retriever_score": s} for c, s in zip(r["candidates"], (0.1, 0.5, 0.9))]}
              for r in RECORDS]
    result = runner.invoke(app, ["rerank"], input=jsonl(scored[0], RECORDS[1]))
    assert result.exit_code == 0, result.stderr
    assert "scoring ql; rank = RRF (k=0) of retriever_score + ql (the embedded LLM's default" in result.stderr
    assert "0 scored pairs computed" in result.stderr
    with_score, without = read_jsonl(result.stdout)
    assert with_score["_provenance"][-1]["fused"] == ["retriever_score", "ql"]
    assert without["_provenance"][-1]["fused"] == ["ql"]
    assert all("rc" not in c and "rank_rc" not in c for r in (with_score, without) for c in r["candidates"])
    for c in with_score["candidates"]:
        assert c["rrf"] == pytest.approx(1 / c["rank_ql"] + 1 / c["rank_retriever_score"])


def test_bad_candidate_line(runner):
    bad = {"id": "x", "query": "q", "candidates": [{"id": "a"}]}
    result = runner.invoke(app, ["rerank"], input=jsonl(bad))
    assert result.exit_code == 1 and 'gecko rerank: <stdin>:1: missing field "candidates[0].text"' in result.stderr


class _TwoCalls(BaseBackend):
    """The protocol only (no `score_shared`): how HTTP backends and fakes are scored."""

    def __init__(self, inner):
        self.inner, self.name, self.model_id = inner, inner.name, inner.model_id

    def query_likelihood(self, prefixes, continuations):
        return self.inner.query_likelihood(prefixes, continuations)

    def label_logprobs(self, prompts, labels):
        return self.inner.label_logprobs(prompts, labels)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)


def test_shared_scoring_keeps_scores_order_and_ranks():
    # QL and RC from one passage cache across a window vs naive full prompts, two calls per window
    import copy

    from gecko_cli.llm.local import LocalBackend
    from gecko_cli.llm.scoring import ScoringPrompts
    from gecko_cli.stages.rerank import rerank

    records = copy.deepcopy(RECORDS) + [dict(copy.deepcopy(RECORDS[0]), id="p2#0", seed=PASSAGES[1],
                                             query="how do plants make sugar from light")]
    shared_backend = LocalBackend()
    naive_backend = LocalBackend(share_prefixes=False)
    naive_backend._model, naive_backend._tokenizer = shared_backend.model, shared_backend.tokenizer
    prompts = ScoringPrompts.default()
    shared = list(rerank(copy.deepcopy(records), shared_backend, prompts, window=2))
    naive = list(rerank(copy.deepcopy(records), _TwoCalls(naive_backend), prompts, window=1))
    assert [r["id"] for r in shared] == [r["id"] for r in naive] == ["p1#0", "p3#0", "p2#0"]
    for a, b in zip(shared, naive):
        assert [c["id"] for c in a["candidates"]] == [c["id"] for c in b["candidates"]]
        for x, y in zip(a["candidates"], b["candidates"]):
            assert (x["rank"], x["rank_ql"], x["rank_rc"]) == (y["rank"], y["rank_ql"], y["rank_rc"])
            assert x["ql"] == pytest.approx(y["ql"], abs=1e-4) and x["rc"] == pytest.approx(y["rc"], abs=1e-4)
        assert a["positive_is_seed"] == b["positive_is_seed"]
