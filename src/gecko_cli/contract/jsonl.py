"""Streaming JSONL: numbered lines in, one compact JSON object per line out, rejects.

Reading works on bytes so that invalid UTF-8 and over-long lines are reported with
their line number instead of crashing the decoder, and memory stays bounded.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

from gecko_cli.contract.errors import PathError

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


class LineSink:
    """Whole lines to a stream, each flushed at once: a line is in the output entirely or not at all.

    When a write fails (a full disk) or is interrupted (Ctrl-C, SIGTERM) mid-line, a regular file
    is cut back to its last complete line and a pipe gets the rest of a line it has begun, so the
    output can be read and `--resume` continues from it. An OSError becomes a PathError naming
    the stream (exit 1). `write` is the system call, injectable to test a full disk.
    """

    def __init__(self, stream: IO[str], name: str | None = None,
                 write: Callable[[int, memoryview], int] = os.write):
        self.stream = stream
        self.name = name or str(getattr(stream, "name", "<output>"))
        self.count = 0
        self._write = write
        self._fd = _descriptor(stream)
        self._regular = self._fd is not None and stat.S_ISREG(os.fstat(self._fd).st_mode)

    def put(self, text: str, lines: int = 1) -> None:
        """Write `text` (whole lines) and flush it."""
        try:
            if self._fd is None:  # an in-memory stream (tests, CliRunner): nothing to tear
                self.stream.write(text)
                self.stream.flush()
            else:
                self.stream.flush()  # whatever went through the text layer first stays first
                self._put_bytes(text.encode("utf-8"))
        except BrokenPipeError:
            raise  # the reader went away: cli.py ends quietly
        except OSError as exc:
            raise PathError.from_os_error(exc, self.name) from None
        self.count += lines

    def _put_bytes(self, data: bytes) -> None:
        start = os.lseek(self._fd, 0, os.SEEK_CUR) if self._regular else None
        view, done = memoryview(data), 0
        try:
            while done < len(view):
                done += self._write(self._fd, view[done:])
        except BaseException:
            self._restore(start, view, done)
            raise

    def _restore(self, start: int | None, view: memoryview, done: int) -> None:
        """After a failed or interrupted write: the output ends on a complete line again."""
        try:
            if start is not None:
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
            else:
                while 0 < done < len(view):  # a pipe cannot be cut back: finish the line
                    done += os.write(self._fd, view[done:])
        except OSError:
            pass  # the original error is the one to report; `--resume` cuts a torn line anyway


def _descriptor(stream: IO[str]) -> int | None:
    """The stream's file descriptor, or None for an in-memory stream."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


class JsonlWriter(LineSink):
    """Writes one record per line and flushes it, so a crash keeps what was written."""

    def write(self, record: dict[str, Any]) -> None:
        self.put(dumps(record) + "\n")

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Several records in one write: a crash keeps all of them or none."""
        self.put("".join(dumps(r) + "\n" for r in records), len(records))


class RejectsWriter(LineSink):
    """`--rejects FILE`: one `{"line", "error", "raw"}` object per refused input line."""

    def write(self, line: int | None, error: str, raw: bytes | str | dict[str, Any]) -> None:
        entry: dict[str, Any] = {"line": line, "error": error, "raw": _raw_text(raw)}
        if isinstance(raw, bytes) and len(raw) >= _RAW_KEEP and "limit" in error:
            entry["raw_truncated"] = True
        self.put(dumps(entry) + "\n")


def _raw_text(raw: bytes | str | dict[str, Any]) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, dict):
        return dumps(raw)
    return raw
