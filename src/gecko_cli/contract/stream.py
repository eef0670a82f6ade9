"""The stage contract, implemented once: validated records in, records out, rejects.

`run_stage` feeds a stage's pure core (`Iterable[dict] -> Iterator[dict]`) with the
valid records of a JSONL stream and writes what it yields. A bad line either goes
to the rejects file (the run goes on) or stops the run: the input simply ends
there, the core finishes the records it already has — so every record before the
bad line is written even by cores that batch — and the error is raised after.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from gecko_cli.contract.errors import InputError
from gecko_cli.contract.jsonl import JsonlWriter, LineError, RejectsWriter, parse_object, read_lines
from gecko_cli.contract.records import RecordError, Validator, in_shard, record_id

Core = Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]


@dataclass
class Rejected:
    """Yielded by a core for an input record it could not process (e.g. the LLM failed)."""

    record: dict[str, Any]
    error: str


@dataclass
class CoreStats:
    """What a core reports beside its records; `stopped` says why it ended early (still exit 0).

    A core that can stop before its input ends (the LLM token budget) takes one of these (or a
    subclass with its own counters) and the command copies `stopped` into the summary's Counts.
    """

    stopped: str | None = None


@dataclass
class Counts:
    """What happened to every input line: each one is out, rejected or outside the shard."""

    read: int = 0
    written: int = 0
    rejected: int = 0
    other_shards: int = 0
    resumed: int = 0
    started: float = field(default_factory=time.monotonic)
    extra: dict[str, int] = field(default_factory=dict)
    show_rate: bool = False
    stopped: str | None = None  # why the run ended early (still exit 0), e.g. the token budget

    def summary(self, stage: str) -> str:
        """`gecko fuse: 120 in, 118 out, 2 rejected, 0.4 s`."""
        parts = [f"{self.read} in", f"{self.written} out", f"{self.rejected} rejected"]
        if self.other_shards:
            parts.append(f"{self.other_shards} in other shards")
        if self.resumed:
            parts.append(f"{self.resumed} done by an earlier run (--resume)")
        parts += [f"{v:,} {k}" for k, v in self.extra.items()]
        elapsed = time.monotonic() - self.started
        parts.append(f"{elapsed:.1f} s")
        if self.show_rate:
            parts.append(f"{self.written / max(elapsed, 1e-9):.2f} records/s")
        line = f"gecko {stage}: " + ", ".join(parts)
        return line + (f"; stopped early: {self.stopped}" if self.stopped else "")


@dataclass
class StageInput:
    """One input stream with its display name, validator and contract options."""

    stream: IO[bytes]
    source: str
    validate: Validator
    rejects: RejectsWriter | None = None
    shard: tuple[int, int] | None = None
    counts: Counts = field(default_factory=Counts)
    error: InputError | None = None
    lines: dict[int, int] = field(default_factory=dict)  # id(record) -> line number
    skip_ids: frozenset[str] = frozenset()  # --resume: input ids an earlier run wrote out
    skip_lines: frozenset[int] = frozenset()  # --resume: input lines an earlier run rejected

    def records(self) -> Iterator[dict[str, Any]]:
        """The valid records, in input order; stops quietly at the first bad line."""
        for line in read_lines(self.stream):
            self.counts.read += 1
            if line.number in self.skip_lines:
                self.counts.resumed += 1
                continue
            try:
                record = self.validate(parse_object(line))
            except (LineError, RecordError) as exc:
                if self.rejects is None:
                    self.error = InputError(str(exc), self.source, line.number)
                    return
                self.rejects.write(line.number, str(exc), line.data)
                self.counts.rejected += 1
                continue
            if self.shard and not in_shard(record_id(record), *self.shard):
                self.counts.other_shards += 1
                continue
            if self.skip_ids and record_id(record) in self.skip_ids:
                self.counts.resumed += 1
                continue
            self.lines[id(record)] = line.number
            yield record


def run_stage(core: Core, source: StageInput, out: JsonlWriter,
              on_record: Callable[[], None] | None = None,
              records: Iterable[dict[str, Any]] | None = None, warn: Callable[[str], None] | None = None) -> Counts:
    """Run `core` over the valid records of `source`, writing what it yields.

    `records` replaces `source.records()` when the command had to read them first
    (e.g. to build a corpus from the input itself). With `warn`, a record the core
    could not process (an LLM output that stayed degenerate) is reported through it and
    counted as rejected instead of stopping the run. Raises the InputError of the
    first bad line (after writing every output the core produced from the lines
    before it) when there is no rejects file.
    """
    for item in core(source.records() if records is None else records):
        if isinstance(item, Rejected):
            _reject(source, item, warn)
        elif isinstance(item, list):  # the records of one input, written at once (--resume safety)
            out.write_many(item)
            source.counts.written += len(item)
        else:
            out.write(item)
            source.counts.written += 1
        if on_record:
            on_record()
    if source.error is not None:
        raise source.error
    return source.counts


@dataclass(frozen=True)
class ResumeState:
    """What an earlier run's files account for: input ids written out, input lines rejected."""

    ids: frozenset[str]
    lines: frozenset[int]


def resume_state(output: Path, rejects: Path | None, done_key: Callable[[dict[str, Any]], str]) -> ResumeState:
    """Read what an interrupted run left, cutting a torn last line (kill -9 mid-write) off each file."""
    ids = {done_key(r) for r in complete_records(output)}
    lines = {r["line"] for r in complete_records(rejects) if isinstance(r.get("line"), int)} if rejects else set()
    return ResumeState(frozenset(ids), frozenset(lines))


def complete_records(path: Path | None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file this stage wrote, its torn last line (if any) cut off the file."""
    if path is None or not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    records = []
    for number, raw in enumerate(data[:end].splitlines(), 1):
        if raw.strip():
            try:
                value = json.loads(raw)
            except ValueError:
                raise InputError("not a JSONL file this stage wrote; cannot resume", str(path), number) from None
            if isinstance(value, dict):
                records.append(value)
    return records


def _reject(source: StageInput, item: Rejected, warn: Callable[[str], None] | None = None) -> None:
    line = source.lines.get(id(item.record))
    if source.rejects is None and warn is not None:
        warn(str(InputError(f"skipped: {item.error}", source.source, line)))
        source.counts.rejected += 1
        return
    if source.rejects is None:
        raise InputError(item.error, source.source, line)
    source.rejects.write(line, item.error, item.record)
    source.counts.rejected += 1
