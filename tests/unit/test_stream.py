"""The stage contract at the driver level, with a core that batches (like rerank will)."""

import io
import json
from itertools import islice

import pytest

from gecko_cli.contract.errors import InputError
from gecko_cli.contract.jsonl import JsonlWriter, RejectsWriter
from gecko_cli.contract.records import validate_passage
from gecko_cli.contract.stream import Rejected, StageInput, run_stage


def batched_core(records):
    """Holds records in windows of 3 before yielding them."""
    it = iter(records)
    while batch := list(islice(it, 3)):
        for r in batch:
            if r.get("fail"):
                yield Rejected(r, "the model refused")
            else:
                yield {**r, "seen": True}


def source(text: str, rejects=None, shard=None) -> StageInput:
    return StageInput(io.BytesIO(text.encode()), "<stdin>", validate_passage, rejects, shard)


LINES = ['{"id":1,"text":"a"}', '{"id":2,"text":"b"}', '', '{"id":3}', '{"id":4,"text":"d"}']


def test_bad_line_stops_but_everything_before_it_is_written():
    out = io.StringIO()
    with pytest.raises(InputError) as err:
        run_stage(batched_core, source("\n".join(LINES)), JsonlWriter(out))
    assert str(err.value) == '<stdin>:4: missing field "text"'
    assert [json.loads(l)["id"] for l in out.getvalue().splitlines()] == [1, 2]


def test_rejects_account_for_every_line():
    out, rej = io.StringIO(), io.StringIO()
    text = "\n".join(LINES + ['{"id":5,"text":"e","fail":true}', "[1]"])
    counts = run_stage(batched_core, source(text, RejectsWriter(rej)), JsonlWriter(out))
    rejected = [json.loads(l) for l in rej.getvalue().splitlines()]
    assert [(r["line"], r["error"]) for r in rejected] == [
        (4, 'missing field "text"'), (7, "expected a JSON object, got an array"), (6, "the model refused")]
    assert counts.read == 6 and counts.written == 3 and counts.rejected == 3
    assert counts.read == counts.written + counts.rejected


def test_core_failure_without_rejects_names_the_line():
    with pytest.raises(InputError, match="<stdin>:2: the model refused"):
        run_stage(batched_core, source('{"id":1,"text":"a"}\n{"id":2,"text":"b","fail":1}'), JsonlWriter(io.StringIO()))


def test_shards_split_and_join():
    text = "\n".join(f'{{"id":"d{i}","text":"t"}}' for i in range(50))
    seen = []
    for s in range(3):
        out = io.StringIO()
        counts = run_stage(batched_core, source(text, shard=(s, 3)), JsonlWriter(out))
        assert counts.written + counts.other_shards == 50
        seen += [json.loads(l)["id"] for l in out.getvalue().splitlines()]
    assert sorted(seen) == sorted(f"d{i}" for i in range(50))


def test_core_failure_with_warn_is_reported_and_counted():
    warnings = []
    out = io.StringIO()
    counts = run_stage(batched_core, source('{"id":1,"text":"a"}\n{"id":2,"text":"b","fail":1}\n{"id":3,"text":"c"}'),
                       JsonlWriter(out), warn=warnings.append)
    assert warnings == ["<stdin>:2: skipped: the model refused"]
    assert counts.read == 3 and counts.written == 2 and counts.rejected == 1
