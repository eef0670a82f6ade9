import math
import random

import pytest

from gecko_cli.eval.metrics import map_at, mrr_at, ndcg_at, pair_ranking_metrics, recall_at, retrieval_metrics


def test_ndcg_on_a_toy_ranking_by_hand():
    qrels = {"a": 2, "b": 1, "z": 0}
    ranking = ["x", "a", "z", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(qrels, ranking, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at(qrels, ranking, 1) == 0.0
    assert recall_at(qrels, ranking, 2) == 0.5
    assert mrr_at(qrels, ranking, 10) == 0.5
    assert mrr_at(qrels, ranking, 1) == 0.0
    assert map_at(qrels, ranking, 10) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_queries_without_relevant_documents_are_not_averaged():
    out = retrieval_metrics({"q1": {"a": 1}, "q2": {"b": 0}}, {"q1": ["a"], "q2": ["b"]})
    assert out["ndcg@10"] == 1.0


def test_pair_ranking_counts_ties_against_the_positive():
    import numpy as np
    out = pair_ranking_metrics(np.array([0.5]), [np.array([0.5, 0.1])])
    assert out == {"accuracy@1": 0.0, "mrr": 0.5}


def test_equal_to_trec_eval_on_random_graded_runs():
    import pytrec_eval  # the [test] extra, installed by make install
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(300)]
    qrels = {f"q{q}": {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 8))} for q in range(40)}
    run = {q: {d: rng.random() for d in rng.sample(docs, 120)} for q in qrels}
    for q in list(run)[:10]:  # make sure some relevant documents are retrieved
        for d in qrels[q]:
            run[q][d] = 1.0 + rng.random()
    rankings = {q: sorted(s, key=lambda d: -s[d]) for q, s in run.items()}
    ours = retrieval_metrics(qrels, rankings)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,100", "recall.10,100", "map_cut.100"})
    theirs = evaluator.evaluate(run)
    mean = lambda key: sum(v[key] for v in theirs.values()) / len(theirs)
    for k in (1, 3, 5, 10, 100):
        assert ours[f"ndcg@{k}"] == pytest.approx(mean(f"ndcg_cut_{k}"), abs=1e-9)
    assert ours["recall@10"] == pytest.approx(mean("recall_10"), abs=1e-9)
    assert ours["recall@100"] == pytest.approx(mean("recall_100"), abs=1e-9)
    assert ours["map@100"] == pytest.approx(mean("map_cut_100"), abs=1e-9)
    cut = {q: {d: s[d] for d in rankings[q][:10]} for q, s in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    assert ours["mrr@10"] == pytest.approx(sum(v["recip_rank"] for v in rr.values()) / len(rr), abs=1e-9)
