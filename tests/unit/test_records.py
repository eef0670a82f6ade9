import pytest

from gecko_cli.contract.records import (RecordError, add_provenance, in_shard, mark_positive_is_seed, parse_list,
                                       parse_shard, validate_passage, validate_training)
from gecko_cli.contract.text_format import format_document, format_query


@pytest.mark.parametrize("record, message", [
    ({"text": "t"}, 'missing field "id"'),
    ({"id": "a"}, 'missing field "text"'),
    ({"id": "a", "text": "  "}, 'field "text" is empty'),
    ({"id": "a", "text": 3}, 'field "text" must be a string, got a number'),
    ({"id": True, "text": "t"}, 'field "id" must be a string or a number, got a boolean'),
    ({"id": ["a"], "text": "t"}, 'field "id" must be a string or a number, got an array'),
    ({"id": "a", "text": "t", "title": 5}, 'field "title" must be a string, got a number'),
])
def test_passage_errors(record, message):
    with pytest.raises(RecordError, match=message):
        validate_passage(record)


def test_passage_accepts_beir_id_and_keeps_other_fields():
    assert validate_passage({"_id": 7, "text": "t", "extra": [1]}) == {"id": 7, "text": "t", "extra": [1]}


def test_training_record_errors_name_the_nested_field():
    good = {"id": "q", "query": "x", "positive": {"text": "p"}, "negatives": [{"text": "n"}]}
    assert validate_training(dict(good)) == good
    with pytest.raises(RecordError, match=r'missing field "negatives\[1\].text"'):
        validate_training({**good, "negatives": [{"text": "n"}, {"title": "t"}]})
    with pytest.raises(RecordError, match='field "positive" must be an object, got a string'):
        validate_training({**good, "positive": "p"})


def test_shards_partition_the_ids_and_are_stable():
    ids = [f"doc{i}" for i in range(1000)]
    owners = [[s for s in range(4) if in_shard(i, s, 4)] for i in ids]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o[0] == s for o in owners) for s in range(4)]
    assert min(sizes) > 200  # roughly even
    # Same answer on every run and machine (a salted hash() would move these between runs):
    assert [o[0] for o in owners[:8]] == [1, 1, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("spec", ["4/4", "-1/2", "a/b", "1", "0/0"])
def test_bad_shard_specs(spec):
    with pytest.raises(ValueError):
        parse_shard(spec)


def test_unified_format():
    assert format_query("who?", "question answering") == "task: question answering | query: who?"
    assert format_document("Body", None) == "title: none | text: Body"
    assert format_document("Body", " T ") == "title: T | text: Body"


def test_provenance_appends():
    record = add_provenance(add_provenance({"id": 1}, "generate", model="m"), "rerank", k=0)
    assert [p["stage"] for p in record["_provenance"]] == ["generate", "rerank"]


def test_positive_is_seed_is_one_rule_for_rerank_and_fuse():
    # A seed is a passage, and a passage's id may be spelled `_id` (BEIR; DESIGN §2).
    assert mark_positive_is_seed({"seed": {"_id": 7}, "candidates": [{"id": "7"}]})["positive_is_seed"] is True
    assert mark_positive_is_seed({"seed": {"id": "a"}, "candidates": [{"id": "b"}, {"id": "a"}]})["positive_is_seed"] is False
    assert "positive_is_seed" not in mark_positive_is_seed({"seed": {"text": "no id"}, "candidates": [{"id": "a"}]})
    assert "positive_is_seed" not in mark_positive_is_seed({"candidates": [{"id": "a"}]})


def test_parse_list():
    assert parse_list(" ql , rc ,,") == ["ql", "rc"] and parse_list("") == [] and parse_list(None) == []
    assert parse_list("384,64", int) == [384, 64]
    with pytest.raises(ValueError):
        parse_list("1,x", float)
