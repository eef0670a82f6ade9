import pytest

from gecko_cli.stages.mine_negatives import Audit, mine, parse_strategy
from gecko_cli.contract.stream import Rejected


def record(n: int = 25, seed_rank: int = 3) -> dict:
    """A ranked record: candidate i is at fused rank i; the seed sits at `seed_rank`."""
    cands = [{"id": f"d{i}", "title": "", "text": f"passage {i}", "rank": i, "retriever_score": 1 - i / 100,
              "ql": -float(i), "rc": 5.0 - i, "rank_ql": i, "rank_rc": i} for i in range(1, n + 1)]
    return {"id": "q#0", "task": "fact checking", "query": "q", "seed": {"id": f"d{seed_rank}", "text": f"passage {seed_rank}"},
            "candidates": list(reversed(cands)), "keep": {"me": 1}}


def one(rec, **kw):
    return next(mine([rec], **kw))


def test_rank20_default_is_the_candidate_at_fused_rank_20():
    out = one(record())
    assert out["positive"]["id"] == "d1" and [n["id"] for n in out["negatives"]] == ["d20"]
    assert out["positive_is_seed"] is False and out["keep"] == {"me": 1} and "candidates" not in out


def test_positive_and_negatives_keep_their_scores_for_distillation():
    out = one(record(), positive_from="seed", strategy="random", num_negatives=2)
    assert out["positive"] == {"id": "d3", "title": "", "text": "passage 3", "retriever_score": 0.97,
                               "ql": -3.0, "rc": 2.0, "rank": 3}
    for negative in out["negatives"]:
        i = int(negative["id"][1:])
        assert (negative["ql"], negative["rank"], negative["rc"]) == (-float(i), i, 5.0 - i)
        assert "rank_ql" not in negative  # per-scorer ranks stay behind


def test_rank20_with_fewer_candidates_takes_the_lowest_ranked():
    assert [n["id"] for n in one(record(n=8))["negatives"]] == ["d8"]
    assert [n["id"] for n in one(record(n=8), num_negatives=3)["negatives"]] == ["d8", "d7", "d6"]


def test_positive_seed():
    out = one(record(), positive_from="seed")
    assert out["positive"]["id"] == "d3" and out["positive_is_seed"] is True


def test_random_is_below_the_positive_seeded_and_stable():
    a = one(record(), strategy="random", num_negatives=3, seed=7)
    b = one(record(), strategy="random", num_negatives=3, seed=7)
    assert a["negatives"] == b["negatives"] and len(a["negatives"]) == 3
    assert all(int(n["id"][1:]) > 1 for n in a["negatives"])
    # The fused positive is the top candidate, so everything is below it; the seed at rank 3 is not:
    below_seed = one(record(seed_rank=3), positive_from="seed", strategy="random", num_negatives=30, seed=7)
    assert sorted(int(n["id"][1:]) for n in below_seed["negatives"]) == list(range(4, 26))  # d4..d25, all of them


def test_percpos_drops_candidates_too_close_to_the_positive():
    rec = record(n=5)
    for c in rec["candidates"]:
        c["retriever_score"] = {"d1": 1.0, "d2": 0.99, "d3": 0.96, "d4": 0.94, "d5": 0.5}[c["id"]]
    assert [n["id"] for n in one(rec, strategy="percpos:0.95")["negatives"]] == ["d4"]


def test_none_keeps_records_without_negatives():
    assert one(record(), strategy="none")["negatives"] == []


def test_duplicate_of_the_positive_is_never_a_negative():
    rec = record(n=20)
    for c in rec["candidates"]:
        if c["id"] == "d20":
            c["text"] = "  PASSAGE   1 "
    assert [n["id"] for n in one(rec)["negatives"]] == ["d19"]


def test_no_valid_negative_is_rejected_with_the_reason():
    rec = record(n=1)
    out = one(rec)
    assert isinstance(out, Rejected) and "no valid negative" in out.error


def test_audit_counts_relabels_and_seed_ranks():
    audit = Audit()
    list(mine([record(seed_rank=1), record(seed_rank=3)], audit=audit))
    report = audit.report()
    assert report["positive_not_seed"] == 1 and report["positive_not_seed_share"] == 0.5
    assert report["seed_fused_rank"] == {"1": 1, "3": 1}
    assert report["seed_missed_by_search"] is None  # these records carry no retrieve provenance
    searched = [{**record(n=4), "_provenance": [{"stage": "retrieve", "top_k": k}]} for k in (3, 4)]
    audit = Audit()
    list(mine(searched, audit=audit))
    assert audit.report()["seed_missed_by_search"] == 1  # 4 candidates after a top-3 search: the seed was added
    assert report["ql_rc_kendall_tau_mean"] == pytest.approx(1.0)
    assert report["ql_retriever_kendall_tau_mean"] == pytest.approx(1.0)


def test_audit_tau_on_raw_scores_fused_or_not():
    rec = record(n=4)
    for c in rec["candidates"]:
        c["rc"] = -c["rc"]  # RC ranks the candidates backwards; it need not have been fused
        del c["rank_rc"]
    del rec["candidates"][0]["retriever_score"]  # a score missing on one candidate: no tau for it
    audit = Audit()
    list(mine([rec], audit=audit))
    report = audit.report()
    assert report["ql_rc_kendall_tau_mean"] == pytest.approx(-1.0)
    assert report["ql_retriever_kendall_tau_mean"] is None


@pytest.mark.parametrize("bad", ["rank:0", "rank:x", "percpos:2", "top", "random:3"])
def test_bad_strategies(bad):
    with pytest.raises(ValueError):
        parse_strategy(bad)
