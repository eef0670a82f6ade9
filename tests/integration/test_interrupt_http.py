"""Ctrl-C and SIGTERM while HTTP requests are in flight: one line, exit 130, and `--resume` finishes.

A real `gecko generate` process talks to the fake OpenAI-compatible server on 127.0.0.1, whose
every answer is delayed, so a batch is always in flight when the signal arrives. The requests
still running are cancelled and awaited before the pools close: asyncio must not print "Task
exception was never retrieved" (a request failing on a closed client) after the run's one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_llm_http import gecko, passages, read_jsonl, write_jsonl
from tests.support.fake_openai import FakeOpenAI

N = 24
INFO = "gecko generate: LLM server "  # the capability probe's line, printed by every HTTP run


@pytest.mark.parametrize("signum, line", [
    pytest.param(signal.SIGINT, "gecko generate: interrupted", id="SIGINT"),
    pytest.param(signal.SIGTERM, "gecko generate: interrupted (SIGTERM)", id="SIGTERM")])
def test_a_signal_during_requests_leaves_one_line_and_resume_finishes(tmp_path, signum, line):
    source = write_jsonl(tmp_path / "in.jsonl", passages(N))
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    args = ["generate", "--llm", "URL", "--model", "fake-model", "--concurrency", "2", "--window", "8",
            "-i", str(source), "-o", str(out), "--rejects", str(rejects), "--resume"]
    with FakeOpenAI(latency=0.5) as server:  # 6 s of requests: the signal lands mid-run on a loaded machine too
        args[2] = server.base_url
        env = {**os.environ, "GECKO_CACHE_DIR": str(tmp_path / "cache")}
        proc = _start_in_the_foreground([sys.executable, "-m", "gecko_cli", *args], env=env)
        _wait_for_a_line(out, proc)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        before = len(read_jsonl(out))
        resumed = gecko(args, cache=tmp_path / "cache")

    assert proc.returncode == 130, stderr
    assert [text for text in stderr.splitlines() if not text.startswith(INFO)] == [line], stderr
    assert "Traceback" not in stderr and "Task exception" not in stderr
    assert 0 < before < N and out.read_bytes().endswith(b"\n")
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["seed"]["id"] for r in read_jsonl(out)]
    ids += [json.loads(r["raw"])["id"] for r in read_jsonl(rejects)] if rejects.exists() else []
    assert sorted(ids) == sorted(f"p{i}" for i in range(N))  # every passage, none twice


def _start_in_the_foreground(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start the command as a shell starts one in the foreground: SIGINT not ignored.

    A shell without job control starts `cmd &` with SIGINT ignored, and a child inherits that
    (so `make test &` in a script would make gecko rightly ignore our Ctrl-C); exec resets a
    handled signal to its default, so handling it here for the moment of the spawn is enough.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _wait_for_a_line(path: Path, proc: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not (path.exists() and b"\n" in path.read_bytes()):
        assert proc.poll() is None and time.monotonic() < deadline, "no result was written"
        time.sleep(0.02)
