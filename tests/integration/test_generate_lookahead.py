"""`gecko generate --llm URL` with its look-ahead thread writes exactly what the plain loop writes.

Over HTTP the next window's LLM calls run on a `Lookahead` thread while the current window's
records are written (stages/generate.py). Each case here runs the real command twice against a
fresh fake OpenAI server (tests/support/fake_openai.py): as shipped, and with `Lookahead`
replaced by the plain loop; stdout, rejects, exit code, stderr (but for the probe line and the
timing), the cache's entries and the requests the server received must be the same.

The passages are built so that the fake server's answers ("what is w1 w2 w3", three words of the
prompt) exercise every path: a passage made of all orderings of its three key words is copied by
every answer (regenerated, then rejected), one with half of them is copied by some (regenerated,
sometimes fixed), passages repeat (cache hits across windows, duplicate queries), one prompt is
refused (HTTP 400), and a share of requests fail once (429, 500, dropped connection).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gecko_cli import cli
from gecko_cli.stages import generate as generate_stage
from tests.integration.test_llm_http import WORDS, read_jsonl
from tests.support.fake_openai import FakeOpenAI, Fault, fail_share

N = 40
REFUSED = "refusedmarker"  # the server answers this passage's prompts with HTTP 400
DOWN = "downmarker"  # in the server-down case, the server answers this passage's prompts with 503 for good
FLAKY = fail_share(0.3, [Fault("429", retry_after=0), "500", "drop"], seed=3)
TASK_TYPES = [{"name": "find", "task": "Find it.", "query": "a query"}]  # "find" is the one key word it adds


def passages(n: int = N) -> list[dict]:
    """Passages whose fake answers are sometimes, always or never copies (see the module docstring)."""
    out: list[dict] = []
    for i in range(n):
        a, b = WORDS[i % 20], WORDS[(i * 7 + 3) % 20]
        orders = [" ".join(words) for words in itertools.permutations((a, b, "find"))]
        if i % 4 == 0:
            text = " ".join(f"what is {o}." for o in orders)
        elif i % 4 == 1:
            text = " ".join(f"what is {o}." for o in orders[::2])
        elif i % 4 == 3 and i >= 5:
            text = out[i - 5]["text"]  # the prompt of a passage one window earlier
        else:
            text = f"{a.title()} {b} study number {i}: the {WORDS[(i * 3 + 1) % 20]} changes in {i + 2} ways."
        out.append({"id": f"p{i}", "text": text + (f" {REFUSED}" if i == 10 else "") + (f" {DOWN}" if i == 21 else "")})
    return out


def plan(down: bool):
    def answer(path: str, body: dict, attempt: int) -> Fault | str | None:
        text = json.dumps(body)
        if REFUSED in text:
            return Fault("400")
        if down and DOWN in text:
            return Fault("503", retry_after=0)
        return FLAKY(path, body, attempt)
    return answer


@dataclass
class Run:
    code: int
    stdout: str
    stderr: list[str]
    rejects: bytes
    output: bytes
    cache: list[tuple[str, str]]
    requests: Counter


def gecko(tmp: Path, args: list[str], lines: list[str], plain: bool, monkeypatch, down: bool = False,
          rejects: bool = True) -> Run:
    """One `gecko generate` in this process against a fresh fake server; `plain`: without the look-ahead."""
    source = tmp / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    types = tmp / "types.json"
    types.write_text(json.dumps(TASK_TYPES), encoding="utf-8")
    cache, output, rejected = tmp / "cache", tmp / "out.jsonl", tmp / "rejects.jsonl"
    monkeypatch.setenv("GECKO_CACHE_DIR", str(cache))
    with monkeypatch.context() as patch, FakeOpenAI(plan=plan(down)) as server:
        if plain:
            patch.setattr(generate_stage, "Lookahead", nullcontext)
        result = CliRunner().invoke(cli.app, ["generate", "--llm", server.base_url, "--model", "fake-model",
                                              "--task-types", str(types), "--per-passage", "2", "--window", "4",
                                              "--concurrency", "3", "--max-retries", "1", "-i", str(source),
                                              *(["--rejects", str(rejected)] if rejects else []), *args])
        requests = Counter((r.path, r.body_hash, r.status) for r in server.requests)
        url = server.base_url
    with sqlite3.connect(cache / "llm.sqlite") as db:
        entries = sorted(db.execute("SELECT key, value FROM llm"))
    stderr = [re.sub(r", [\d.]+ s, [\d.]+ records/s", "", line).replace(str(tmp), "DIR").replace(url, "URL")
              for line in result.stderr.splitlines() if not line.startswith(f"gecko generate: LLM server {url}, ")]
    return Run(result.exit_code, result.stdout, stderr, rejected.read_bytes() if rejected.exists() else b"",
               output.read_bytes() if output.exists() else b"", entries, requests)


def both(tmp_path: Path, monkeypatch, run) -> tuple[Run, Run]:
    """`run(directory, plain)` as shipped and without the look-ahead, each in a directory of its own."""
    runs = []
    for plain in (False, True):
        directory = tmp_path / ("plain" if plain else "ahead")
        directory.mkdir()
        runs.append(run(directory, plain))
    return runs[0], runs[1]


def lines(records: list[dict]) -> list[str]:
    return [json.dumps(r) for r in records]


def test_the_same_records_rejects_cache_and_requests_as_the_plain_loop(tmp_path, monkeypatch):
    ahead, plain = both(tmp_path, monkeypatch, lambda d, p: gecko(d, [], lines(passages()), p, monkeypatch))
    assert ahead == plain
    assert ahead.code == 0, ahead.stderr
    records = read_jsonl_text(ahead.stdout)
    reasons = [json.loads(line)["error"] for line in ahead.rejects.splitlines()]
    summary = ahead.stderr[-1]
    # the cases did happen: regenerated and fixed, rejected after a retry, refused, duplicates, cache hits
    assert any(r["_provenance"][-1]["attempt"] == 1 for r in records)
    assert any("after a retry" in r for r in reasons) and any("HTTP 400" in r for r in reasons)
    assert any(r.startswith("duplicate query") for r in reasons)
    assert not re.search(r" 0 regenerated| 0 from the cache| 0 retries", summary), summary
    ids = {r["seed"]["id"] for r in records} | {json.loads(json.loads(line)["raw"])["id"]
                                                for line in ahead.rejects.splitlines()}
    assert ids == {f"p{i}" for i in range(N)}  # every input accounted for


def read_jsonl_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_token_budget_stops_both_at_the_same_record_and_resume_finishes_the_same(tmp_path, monkeypatch):
    def run(directory: Path, plain: bool) -> tuple[Run, Run]:
        cut = gecko(directory, ["-o", str(directory / "out.jsonl"), "--max-tokens-budget", "2500"],
                    lines(passages()), plain, monkeypatch)
        return cut, gecko(directory, ["-o", str(directory / "out.jsonl"), "--resume"], lines(passages()), plain,
                          monkeypatch)

    (cut, resumed), (plain_cut, plain_resumed) = both(tmp_path, monkeypatch, run)
    # The look-ahead had read the next window when the budget ran out: only "N in" may differ.
    read, plain_read = (int(r.stderr[-1].split(": ")[1].split(" in, ")[0]) for r in (cut, plain_cut))
    assert plain_read <= read <= plain_read + 4
    cut.stderr[-1] = cut.stderr[-1].replace(f" {read} in, ", f" {plain_read} in, ")
    assert cut == plain_cut
    assert cut.code == 0 and "stopped early: --max-tokens-budget" in cut.stderr[-1]
    assert 0 < len(cut.output.splitlines()) and cut.cache == plain_cut.cache
    assert resumed == plain_resumed and resumed.code == 0
    assert "done by an earlier run (--resume)" in resumed.stderr[-1]
    ids = sorted({r["seed"]["id"] for r in read_jsonl_text(resumed.output.decode())})  # K records per passage
    ids += [json.loads(json.loads(line)["raw"])["id"] for line in resumed.rejects.splitlines()]
    assert sorted(ids) == sorted(f"p{i}" for i in range(N))  # every passage once


def test_a_bad_input_line_stops_both_after_the_same_records(tmp_path, monkeypatch):
    text = lines(passages())
    text[13] = '{"id": "p13", "text": '  # line 14: not JSON
    ahead, plain = both(tmp_path, monkeypatch, lambda d, p: gecko(d, [], text, p, monkeypatch, rejects=False))
    assert ahead == plain
    assert ahead.code == 1 and ahead.stderr[-1].startswith("gecko generate: ") and ":14: " in ahead.stderr[-1]
    written = {r["seed"]["id"] for r in read_jsonl_text(ahead.stdout)}
    assert written and written <= {f"p{i}" for i in range(13)}


def test_with_rejects_a_bad_input_line_is_rejected_and_the_run_goes_on_the_same(tmp_path, monkeypatch):
    text = lines(passages())
    text[13] = '{"id": "p13", "text": '  # line 14: not JSON
    ahead, plain = both(tmp_path, monkeypatch, lambda d, p: gecko(d, [], text, p, monkeypatch))
    # A bad line is rejected as it is read, and the look-ahead reads a window early: its place
    # among the LLM's rejects may differ; the lines themselves do not.
    assert sorted(ahead.rejects.splitlines()) == sorted(plain.rejects.splitlines())
    ahead.rejects = plain.rejects
    assert ahead == plain
    assert ahead.code == 0 and b'"line":14,' in ahead.rejects


def test_a_server_that_goes_down_mid_run_stops_both_after_the_same_records(tmp_path, monkeypatch):
    ahead, plain = both(tmp_path, monkeypatch, lambda d, p: gecko(d, [], lines(passages()), p, monkeypatch, down=True))
    assert ahead == plain
    assert ahead.code == 3 and "HTTP 503" in ahead.stderr[-1] and "Traceback" not in "\n".join(ahead.stderr)
    written = {r["seed"]["id"] for r in read_jsonl_text(ahead.stdout)}
    assert written and written <= {f"p{i}" for i in range(20)}  # the windows before p21's (p20-p23)


def test_a_real_process_whose_server_goes_down_mid_run_leaves_one_line_and_the_windows_before(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines(passages())), encoding="utf-8")
    types = tmp_path / "types.json"
    types.write_text(json.dumps(TASK_TYPES), encoding="utf-8")
    with FakeOpenAI(plan=plan(down=True), latency=0.05) as server:
        result = subprocess.run([sys.executable, "-m", "gecko_cli", "generate", "--llm", server.base_url, "--model",
                                 "fake-model", "--task-types", str(types), "--window", "4", "--concurrency", "3",
                                 "--max-retries", "1", "-i", str(source)], capture_output=True, text=True,
                                env={**os.environ, "GECKO_CACHE_DIR": str(tmp_path / "cache")}, timeout=120)
    stderr = [line for line in result.stderr.splitlines() if "skipped:" not in line
              and not line.startswith(f"gecko generate: LLM server {server.base_url}, ")]
    assert result.returncode == 3 and len(stderr) == 1 and "HTTP 503" in stderr[0], result.stderr
    assert "Traceback" not in result.stderr and "Task exception" not in result.stderr
    assert {r["seed"]["id"] for r in read_jsonl_text(result.stdout)} <= {f"p{i}" for i in range(20)}
    assert {r["seed"]["id"] for r in read_jsonl_text(result.stdout)} >= {"p2", "p18"}  # normal passages before
