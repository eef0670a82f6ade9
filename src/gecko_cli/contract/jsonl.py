"""Streaming JSONL: numbered lines in, one compact JSON object per line out, rejects.

Reading works on bytes so that invalid UTF-8 and over-long lines are reported with
their line number instead of crashing the decoder, and memory stays bounded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, Any, Iterator

BOM = b"\xef\xbb\xbf"
# A passage is never megabytes long; a line that is almost surely is a broken file
# (a missing newline joined two million records), so it is refused, not loaded.
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
_RAW_KEEP = 1024  # how much of an over-long line the rejects file keeps


@dataclass(frozen=True)
class RawLine:
    """One non-blank input line: its 1-based number, bytes, and length."""

    number: int
    data: bytes
    size: int

    @property
    def too_long(self) -> bool:
        return self.size > len(self.data)


class LineError(ValueError):
    """What is wrong with one line (the caller adds the file and line number)."""


def max_line_bytes() -> int:
    """The line-length limit, overridable with GECKO_MAX_LINE_BYTES."""
    return int(os.environ.get("GECKO_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES))


def read_lines(stream: IO[bytes], limit: int | None = None) -> Iterator[RawLine]:
    """Yield the non-blank lines of a binary stream with their numbers.

    A UTF-8 BOM on the first line is dropped. A line longer than `limit` bytes is
    yielded truncated, with its true size, so the reader can reject it.

    >>> import io
    >>> [(l.number, l.data) for l in read_lines(io.BytesIO(b'\\xef\\xbb\\xbf{}\\n\\n[1]\\n'))]
    [(1, b'{}'), (3, b'[1]')]
    """
    limit = limit or max_line_bytes()
    number = 0
    while True:
        chunk = stream.readline(limit + 1)
        if not chunk:
            return
        number += 1
        size = len(chunk)
        if size > limit and not chunk.endswith(b"\n"):
            size += _skip_rest_of_line(stream)
            chunk = chunk[:_RAW_KEEP]
        if number == 1 and chunk.startswith(BOM):
            chunk = chunk[len(BOM):]
            size -= len(BOM)
        data = chunk.rstrip(b"\r\n")
        if data.strip():
            yield RawLine(number, data, size if size > limit else len(data))


def _skip_rest_of_line(stream: IO[bytes]) -> int:
    """Consume the rest of an over-long line; return how many bytes it had."""
    skipped = 0
    while True:
        piece = stream.readline(1 << 20)
        skipped += len(piece)
        if not piece or piece.endswith(b"\n"):
            return skipped


def parse_object(line: RawLine, limit: int | None = None) -> dict[str, Any]:
    """Decode one line into a JSON object or raise LineError saying what is wrong.

    >>> parse_object(RawLine(1, b'{"id": "a"}', 11))
    {'id': 'a'}
    """
    limit = limit or max_line_bytes()
    if line.too_long or line.size > limit:
        raise LineError(f"line is {line.size:,} bytes, over the limit of {limit:,} (GECKO_MAX_LINE_BYTES)")
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise LineError(f"expected a JSON object, got {_json_type(value)}")
    return value


def _refuse_constant(name: str) -> None:
    raise LineError(f"not valid JSON: {name} is not allowed")


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 as is, no NaN (a NaN score is a bug, not data).

    >>> dumps({"id": "é", "x": [1, 2]})
    '{"id":"é","x":[1,2]}'
    """
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class JsonlWriter:
    """Writes one record per line and flushes it, so a crash keeps what was written."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.stream.write(dumps(record) + "\n")
        self.stream.flush()
        self.count += 1

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Several records in one write: a crash keeps all of them or none (but a torn last line)."""
        self.stream.write("".join(dumps(r) + "\n" for r in records))
        self.stream.flush()
        self.count += len(records)


class RejectsWriter:
    """`--rejects FILE`: one `{"line", "error", "raw"}` object per refused input line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.count = 0

    def write(self, line: int | None, error: str, raw: bytes | str | dict[str, Any]) -> None:
        entry: dict[str, Any] = {"line": line, "error": error, "raw": _raw_text(raw)}
        if isinstance(raw, bytes) and len(raw) >= _RAW_KEEP and "limit" in error:
            entry["raw_truncated"] = True
        self.stream.write(dumps(entry) + "\n")
        self.stream.flush()
        self.count += 1


def _raw_text(raw: bytes | str | dict[str, Any]) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, dict):
        return dumps(raw)
    return raw
