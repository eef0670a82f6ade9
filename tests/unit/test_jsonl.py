import io

import pytest

from gecko_cli.contract.jsonl import JsonlWriter, LineError, RawLine, RejectsWriter, dumps, parse_object, read_lines


def lines(data: bytes, limit: int | None = None) -> list[RawLine]:
    return list(read_lines(io.BytesIO(data), limit))


def test_blank_lines_skipped_numbers_kept():
    got = lines(b'{"a":1}\n\n   \n{"b":2}\r\n')
    assert [(l.number, l.data) for l in got] == [(1, b'{"a":1}'), (4, b'{"b":2}')]


def test_bom_on_first_line_is_dropped():
    assert parse_object(lines(b'\xef\xbb\xbf{"id":"x"}\n')[0]) == {"id": "x"}


def test_last_line_without_newline():
    assert [l.data for l in lines(b'{}\n{"x":1}')] == [b"{}", b'{"x":1}']


@pytest.mark.parametrize("raw, message", [
    (b'{"id": ', "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got an array"),
    (b'"text"', "expected a JSON object, got a string"),
    (b"42", "expected a JSON object, got a number"),
    (b"null", "expected a JSON object, got null"),
    (b'{"score": NaN}', "NaN is not allowed"),
    (b'{"id": "\xff\xfe"}', "invalid UTF-8 at byte 8"),
])
def test_bad_lines(raw, message):
    with pytest.raises(LineError, match=message):
        parse_object(lines(raw + b"\n")[0])


def test_over_long_line_is_refused_without_loading_it_and_next_line_survives():
    big = b'{"text": "' + b"x" * 5000 + b'"}\n'
    got = lines(big + b'{"id": 1}\n', limit=1000)
    assert got[0].too_long and got[0].size == len(big)
    assert len(got[0].data) <= 1024
    with pytest.raises(LineError, match="over the limit of 1,000"):
        parse_object(got[0], limit=1000)
    assert parse_object(got[1], limit=1000) == {"id": 1}


def test_dumps_is_compact_utf8_and_refuses_nan():
    assert dumps({"t": "café", "n": [1.5]}) == '{"t":"café","n":[1.5]}'
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_writers_flush_each_line():
    out = io.StringIO()
    JsonlWriter(out).write({"id": "a"})
    assert out.getvalue() == '{"id":"a"}\n'
    rej = io.StringIO()
    RejectsWriter(rej).write(3, "bad", b"\xffoops")
    assert rej.getvalue() == '{"line":3,"error":"bad","raw":"\ufffdoops"}\n'
