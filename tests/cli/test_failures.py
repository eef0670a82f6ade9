"""Failures a user can cause with paths, full disks and signals end in one line and an exit code.

The table walks every stage × every path option the CLI declares (read off the Typer app, so a
new option is in it by construction) through the ways a path goes wrong; a real tmpfs fills up
under `gecko generate`, an index's save and a `--save-steps` checkpoint, a model's save meets a
full disk reported the way each library reports it, and a real `gecko fuse` gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from safetensors import SafetensorError

from gecko_cli.cli import app, guarded
from gecko_cli.contract.errors import PathError
from gecko_cli.contract.jsonl import JsonlWriter
from gecko_cli.contract.paths import PathUse, declared, writing
from gecko_cli.contract.records import record_id
from gecko_cli.contract.stream import resume_state
from gecko_cli.train.config import TrainConfig
from gecko_cli.train.save import checkpoint_written, save_model
from tests.conftest import jsonl

GECKO = [sys.executable, "-m", "gecko_cli"]
IS_ROOT = os.geteuid() == 0
NOBODY = 65534

# --- the table, read off the CLI ---------------------------------------------------------------


@dataclass(frozen=True)
class PathOption:
    stage: str
    flag: str  # the long flag, e.g. --corpus
    use: PathUse


def path_options() -> list[PathOption]:
    """Every (stage, option) whose declaration says it names a path, in the CLI's order."""
    commands = typer.main.get_command(app).commands
    found = []
    for info in app.registered_commands:
        uses = declared(inspect.unwrap(info.callback))
        for param in commands[info.name].params:
            if param.name in uses:
                found.append(PathOption(info.name, _long_flag(param), uses[param.name]))
    return found


def _long_flag(param: Any) -> str:
    return next(o for o in param.opts if o.startswith("--"))


OPTIONS = path_options()
# Path options typed as str (they may be names too) cannot be found by their type; these must be declared.
KNOWN = {"--input", "--output", "--rejects", "--corpus", "--dataset", "--sts", "--model", "--embedder",
         "--run-file", "--plot", "--audit", "--audit-plot", "--prompt", "--ql-prompt", "--rc-prompt",
         "--task-types", "--mix", "--eval", "--init", "--llm"}


def test_the_table_covers_every_path_option_of_every_stage() -> None:
    flags = {o.flag for o in OPTIONS}
    assert KNOWN <= flags, f"not declared as paths: {sorted(KNOWN - flags)}"
    assert {o.stage for o in OPTIONS} == {i.name for i in app.registered_commands}
    declared_pairs = {(o.stage, o.flag) for o in OPTIONS}
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            described = param.type_descriptor
            if Path in (described.annotation, *typing.get_args(described.annotation)):  # typed Path
                assert (name, _long_flag(param)) in declared_pairs, f"gecko {name} {_long_flag(param)}"
                assert not described.parameter_info.readable, f"gecko {name} {_long_flag(param)}: readable=False"
    # --model of generate/rerank names a model on a server, not a path
    assert ("evaluate", "--model") in declared_pairs and ("rerank", "--model") not in declared_pairs
    assert len(TABLE) > 100 and {c.name for _, c in TABLE} == {c.name for c in CASES}


@dataclass(frozen=True)
class Case:
    """One way a path goes wrong: `make(dir)` -> the value to pass, and the reason the OS gives."""

    name: str
    applies: Callable[[PathUse], bool]
    make: Callable[[Path], str]
    reason: str
    denied: bool = False  # needs a user the file system refuses (root is never refused)


def _file(base: Path, mode: int | None = None) -> str:
    path = base / "file.jsonl"
    path.write_text("{}\n")
    if mode is not None:
        path.chmod(mode)
    return str(path)


def _dir(base: Path, mode: int) -> Path:
    path = base / "locked"
    path.mkdir()
    path.chmod(mode)
    return path


CASES = [
    Case("missing", lambda u: not u.makes_parents, lambda d: str(d / "nowhere" / "x.jsonl"),
         "No such file or directory"),
    Case("a directory", lambda u: u.is_dir is False, lambda d: str(d), "Is a directory"),
    Case("a file", lambda u: u.is_dir is True, lambda d: _file(d), "Not a directory"),
    Case("under /dev/null", lambda u: True, lambda d: "/dev/null/x/out.jsonl", "Not a directory"),
    Case("unreadable", lambda u: not u.writes and u.is_dir is not True, lambda d: _file(d, 0o000),
         "Permission denied", denied=True),
    Case("unreadable folder", lambda u: not u.writes and u.is_dir is True, lambda d: str(_dir(d, 0o000)),
         "Permission denied", denied=True),
    Case("unwritable", lambda u: u.writes, lambda d: str(_dir(d, 0o555) / "out"), "Permission denied",
         denied=True),
]
TABLE = [(o, c) for o in OPTIONS for c in CASES if c.applies(o.use)]


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder anyone may enter and write (as /tmp), so a test may act as an unprivileged user."""
    path = Path(tempfile.mkdtemp(prefix="gecko-failures-"))
    path.chmod(0o777)
    yield path
    for sub in path.rglob("*"):
        with contextlib.suppress(OSError):
            sub.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """Run as a user that permissions refuse: as is, or (as root, whom nothing refuses) as nobody."""
    if not IS_ROOT:
        yield
        return
    os.setegid(NOBODY)  # root may always switch (CAP_SETUID)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def required_args(stage: str, flag: str, base: Path) -> list[str]:
    """What a command needs besides the option under test (training needs --output)."""
    return ["--output", str(base / "model")] if stage in ("pretrain", "finetune") and flag != "--output" else []


@pytest.mark.parametrize("option, case", TABLE, ids=[f"{o.stage} {o.flag} {c.name}" for o, c in TABLE])
def test_a_bad_path_is_one_line_and_exit_2_before_any_work(option: PathOption, case: Case, base: Path) -> None:
    value = case.make(base)
    args = [option.stage, *required_args(option.stage, option.flag, base), option.flag, value]
    with refused() if case.denied else contextlib.nullcontext():
        result = CliRunner().invoke(app, args, input="")
    assert result.stderr == f"gecko {option.stage}: {value}: {case.reason}\n", result.stderr
    assert result.exit_code == 2 and result.stdout == ""


CACHE_CASES = [c for c in CASES if c.name in ("a file", "under /dev/null", "unwritable")]
CACHE_STAGES = [name for name, command in typer.main.get_command(app).commands.items()
                if any(p.name == "no_cache" for p in command.params)]


@pytest.mark.parametrize("stage", CACHE_STAGES)
@pytest.mark.parametrize("case", CACHE_CASES, ids=[c.name for c in CACHE_CASES])
def test_an_unusable_cache_dir_is_named_with_its_variable(stage: str, case: Case, base: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(CACHE_STAGES) == {"generate", "retrieve", "rerank", "evaluate"}
    value = case.make(base)
    monkeypatch.setenv("GECKO_CACHE_DIR", value)
    with refused() if case.denied else contextlib.nullcontext():
        result = CliRunner().invoke(app, [stage], input="")
    assert result.stderr == f"gecko {stage}: {value}: {case.reason} (GECKO_CACHE_DIR)\n"
    assert result.exit_code == 2


def test_no_cache_does_not_look_at_the_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_CACHE_DIR", "/dev/null/x")
    result = CliRunner().invoke(app, ["retrieve", "--no-cache"], input="")  # stops at its own check, no model
    assert result.stderr.startswith("gecko retrieve: no corpus: ") and result.exit_code == 2


# --- the reproductions, through the real `gecko` -------------------------------------


def test_the_reported_tracebacks_are_one_line_each(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(jsonl({"id": "q1", "query": "what", "seed": {"id": "a", "text": "hello"}}))
    (tmp_path / "some_dir").mkdir()
    runs = [
        ({}, ["retrieve", "--corpus", "nope.jsonl"], "gecko retrieve: nope.jsonl: No such file or directory"),
        ({}, ["retrieve", "--corpus", "some_dir/"], "gecko retrieve: some_dir: Is a directory"),
        ({"GECKO_CACHE_DIR": "/dev/null/x"}, ["retrieve", "--corpus", "q.jsonl"],
         "gecko retrieve: /dev/null/x: Not a directory (GECKO_CACHE_DIR)"),
        ({}, ["fuse", "-o", "/dev/null/x/out.jsonl"], "gecko fuse: /dev/null/x/out.jsonl: Not a directory"),
    ]
    for env, args, line in runs:
        with queries.open("rb") as stdin:
            done = subprocess.run(GECKO + args, stdin=stdin, capture_output=True, text=True, cwd=tmp_path,
                                  env={**os.environ, **env}, timeout=60)
        assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", ""), args


def test_a_file_that_fails_during_the_run_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # The folder passes the check before the run; its corpus.jsonl is a folder, met when read.
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (tmp_path / name).mkdir(parents=True)
    result = CliRunner().invoke(app, ["evaluate", "--dataset", str(tmp_path)])
    assert result.stderr == f"gecko evaluate: {tmp_path / 'corpus.jsonl'}: Is a directory\n"
    assert result.exit_code == 1


# --- a full disk -----------------------------------------------------------------------------


def disk_with_room(room: int) -> Callable[[int, memoryview], int]:
    """An os.write that stores `room` more bytes, then fails as a full disk does (mid-line too)."""
    left = [room]

    def write(fd: int, data: memoryview) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, data[:left[0]])
        left[0] -= written
        return written

    return write


def test_a_full_disk_leaves_the_output_on_its_last_complete_line_and_resume_continues(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    records = [{"id": f"r{i}", "text": "x" * 20} for i in range(10)]
    with path.open("w", encoding="utf-8") as stream:
        writer = JsonlWriter(stream, write=disk_with_room(100))  # two records and a half
        with pytest.raises(PathError) as failure:
            for record in records:
                writer.write(record)
    assert str(failure.value) == f"{path}: No space left on device" and failure.value.exit_code == 1
    text = path.read_text()
    assert text.endswith("\n") and [json.loads(line)["id"] for line in text.splitlines()] == ["r0", "r1"]
    done = resume_state(path, None, record_id)  # what `--resume` skips once there is room again
    with path.open("a", encoding="utf-8") as stream:
        writer = JsonlWriter(stream)
        for record in records:
            if record["id"] not in done.ids:
                writer.write(record)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [r["id"] for r in records]


def test_a_group_of_records_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        writer = JsonlWriter(stream, write=disk_with_room(30))
        writer.write({"id": "a"})
        with pytest.raises(PathError):
            writer.write_many([{"id": "b"}, {"id": "c"}, {"id": "d"}])  # b and c would fit
    assert path.read_text() == '{"id":"a"}\n'


def test_an_interrupt_mid_line_on_a_pipe_finishes_the_line() -> None:
    read_end, write_end = os.pipe()
    calls = [0]

    def interrupted(fd: int, data: memoryview) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first bytes of the line went out
        return os.write(fd, data[:5])

    with os.fdopen(write_end, "w") as stream, pytest.raises(KeyboardInterrupt):
        JsonlWriter(stream, write=interrupted).write({"id": "abcdefgh"})
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b'{"id":"abcdefgh"}\n'


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the test. It needs root (make test runs as root on this
    project's machines and CI); elsewhere the test fails and says so rather than pass unchecked."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"a real full disk needs a tmpfs mount (root): {mounted.stderr.strip()}"
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk_stops_generate_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    from tests.support.fake_openai import FakeOpenAI

    passages = [{"id": f"p{i}", "title": f"t{i}", "text": f"Passage {i} says {i} things about topic {i % 7}."}
                for i in range(20)]
    source = tmp_path / "in.jsonl"
    source.write_text(jsonl(*passages))
    with tiny_disk(tmp_path / "disk", "64k") as disk, FakeOpenAI() as server:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 60 * 1024)  # 4 KiB of room: a few records, not 20
        out = disk / "out.jsonl"
        args = [*GECKO, "generate", "--llm", server.base_url, "--model", "fake-model", "-i", str(source),
                "-o", str(out), "--resume"]
        full = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert full.returncode == 1 and full.stderr.splitlines()[-1] == \
            f"gecko generate: {out}: No space left on device", full.stderr
        assert "Traceback" not in full.stderr
        text = out.read_text()
        assert text.endswith("\n") and 0 < len(text.splitlines()) < 20
        before = len(text.splitlines())
        filler.unlink()  # room again
        resumed = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert f"{before} done by an earlier run" in resumed.stderr
        ids = [json.loads(line)["seed"]["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(p["id"] for p in passages)  # every passage, none twice


# --- a full disk while saving a model or an index -------------------------------------------


class FailingModel:
    """A SentenceTransformer whose save meets a full disk, reported the way a library reports it."""

    def __init__(self, error: Callable[[], BaseException]):
        self.error = error

    def save(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        raise self.error()


SAVE_FAILURES = [
    pytest.param(lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                 id="safetensors"),
    pytest.param(lambda: Exception("No space left on device (os error 28)"), id="tokenizers"),
    pytest.param(lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), id="python"),
]


@pytest.mark.parametrize("error", SAVE_FAILURES)
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_model_save_on_a_full_disk_is_one_line_and_exit_1(stage: str, error: Callable[[], BaseException],
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "model"
    config = TrainConfig(stage=stage, init="base", output=str(output))
    with pytest.raises(typer.Exit) as done:
        guarded(stage, lambda: save_model(FailingModel(error), config, 1))()
    assert (done.value.exit_code, capsys.readouterr().err) == (1, f"gecko {stage}: {output}: No space left on device\n")


@pytest.mark.parametrize("error", SAVE_FAILURES)
def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_leaves_the_earlier_checkpoints(
        error: Callable[[], BaseException], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    earlier, failing = tmp_path / "model" / "checkpoint-1", tmp_path / "model" / "checkpoint-2"
    earlier.mkdir(parents=True)
    (earlier / "model.safetensors").write_bytes(b"weights")

    def save_checkpoint() -> None:  # as the trainer's `_save_checkpoint` fails, part-way through
        with checkpoint_written(failing):
            failing.mkdir()
            (failing / "config.json").write_text("{}")
            raise error()

    with pytest.raises(typer.Exit) as done:
        guarded("finetune", save_checkpoint)()
    assert (done.value.exit_code, capsys.readouterr().err) == \
        (1, f"gecko finetune: {failing}: No space left on device\n")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["checkpoint-1"]  # --resume starts from it
    assert (earlier / "model.safetensors").read_bytes() == b"weights"


def test_an_interrupted_checkpoint_save_leaves_no_partial_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-3"
    with pytest.raises(KeyboardInterrupt), checkpoint_written(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("SIGTERM")
    assert not folder.exists()


@pytest.mark.slow
def test_a_real_checkpoint_on_a_full_disk_is_one_line_and_removed(tmp_path: Path) -> None:
    """A real `gecko finetune --save-steps 1` on a 32 MiB tmpfs: the first checkpoint's weights
    (90 MB) do not fit; safetensors says so its own way."""
    from tests.integration.test_finetune import training_records

    records = tmp_path / "train.jsonl"
    records.write_text(jsonl(*training_records()))
    with tiny_disk(tmp_path / "disk", "32m") as disk:
        output = disk / "model"
        result = CliRunner().invoke(app, ["finetune", "--output", str(output), "--max-steps", "1", "--save-steps", "1",
                                          "--batch-size", "4", "--warmup-ratio", "0", "-i", str(records)])
        assert result.exit_code == 1
        assert result.stderr.splitlines()[-1] == f"gecko finetune: {output / 'checkpoint-1'}: No space left on device"
        assert "Traceback" not in result.stderr
        assert list(output.iterdir()) == []  # the partial checkpoint is gone, and its space free


def fill(disk: Path) -> None:
    """Write to `disk` until it is full."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_library_error_is_the_disk_only_when_the_disk_says_so(tmp_path: Path) -> None:
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # no reason
    with tiny_disk(tmp_path / "disk", "16k") as disk:
        fill(disk)
        with pytest.raises(OSError) as failure, writing(disk / "model", (RuntimeError,)):
            raise torch_says
        assert (failure.value.errno, failure.value.filename) == (errno.ENOSPC, str(disk / "model"))
        (disk / "filler").unlink()
        with pytest.raises(RuntimeError) as failure, writing(disk / "model", (RuntimeError,)):
            raise torch_says  # room on the disk: a bug, left as it is
        assert failure.value is torch_says


def test_an_index_save_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """hnswlib does not check its writes: on a full disk it leaves a short file and no error."""
    import numpy as np

    from gecko_cli.search.index import Manifest, Searcher

    vectors = np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32)  # an index of ~60 KiB
    manifest = Manifest(embedder="e", dim=32, corpus_hash="h", count=200)
    with tiny_disk(tmp_path / "disk", "16k") as disk:
        with pytest.raises(typer.Exit) as done:
            guarded("retrieve", lambda: Searcher(vectors, manifest, disk))()
        assert (done.value.exit_code, capsys.readouterr().err) == \
            (1, f"gecko retrieve: {disk / manifest.key()}: No space left on device\n")
        assert list(disk.iterdir()) == []  # no half-written temp dir keeps the space


# --- signals ---------------------------------------------------------------------------------


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*GECKO, "fuse", "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    record = {"id": "q", "candidates": [{"id": "a", "ql": -1.0, "rc": 0.5}, {"id": "b", "ql": -2.0, "rc": 0.9}]}
    for i in range(3):
        proc.stdin.write(jsonl({**record, "id": f"q{i}"}).encode())
    proc.stdin.flush()  # and kept open: gecko is waiting for more when the signal comes
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert proc.stderr.read().decode() == "gecko fuse: interrupted (SIGTERM)\n"
    proc.stdin.close()
    lines = out.read_text().splitlines(keepends=True)
    assert [json.loads(line)["id"] for line in lines] == ["q0", "q1", "q2"] and lines[-1].endswith("\n")
