import pytest

from gecko_cli.contract.records import (RecordError, add_provenance, format_document, format_query, in_shard,
                               parse_shard, validate_passage, validate_training)


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
    assert in_shard("doc0", owners[0][0], 4)  # same answer on every call and every run


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
