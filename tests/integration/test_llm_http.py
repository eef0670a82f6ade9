"""`gecko generate` / `gecko rerank` through the HTTP backend, against a local OpenAI-compatible
server that misbehaves on purpose (tests/support/fake_openai.py): faults, kill -9, budgets, keys.

Every run is a real `gecko` process talking HTTP to 127.0.0.1; the answers are synthetic, so
these tests are about the client: retries, accounting, resume, secrecy — not about quality.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.fake_openai import Fault, FakeOpenAI, always, fail_share

WORDS = ("river", "enzyme", "glacier", "protein", "orbit", "vaccine", "copper", "neuron", "harvest", "tariff",
         "lichen", "comet", "insulin", "basalt", "sonar", "pollen", "quartz", "mitosis", "monsoon", "alloy")


def passages(n: int) -> list[dict]:
    """Distinct passages (distinct words, so the synthetic queries differ)."""
    return [{"id": f"p{i}", "title": f"{WORDS[i % 20]} {i}",
             "text": f"{WORDS[i % 20].title()} {WORDS[(i * 7 + 3) % 20]} study number {i}: the {WORDS[(i * 3 + 1) % 20]} "
                     f"changes the {WORDS[(i * 11 + 5) % 20]} in {i + 2} ways."} for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gecko(args: list[str], env_extra: dict[str, str] | None = None, cache: Path | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    if cache is not None:
        env["GECKO_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "gecko_cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_faults_every_record_out_or_rejected_once_and_retries_reported(tmp_path):
    kinds = [Fault("429", retry_after=0.1), Fault("429", retry_after_ms=50), "500", Fault("503", retry_after=0),
             "drop", "malformed", "empty", Fault("slow", delay=3.0)]
    plan_faults = fail_share(0.5, kinds, seed=3)

    def plan(path, body, attempt):
        text = json.dumps(body)
        if "number 7:" in text and path.endswith("chat/completions"):
            return Fault("400")  # this record's prompt is refused: it must land in the rejects
        return plan_faults(path, body, attempt)

    source = write_jsonl(tmp_path / "in.jsonl", passages(40))
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    with FakeOpenAI(plan=plan) as server:
        result = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "--timeout", "1",
                        "--concurrency", "8", "-i", str(source), "-o", str(out), "--rejects", str(rejects)],
                       cache=tmp_path / "cache")
        failed_requests = sum(1 for r in server.requests if r.status != 200 and not str(r.path).endswith("models"))
    assert result.returncode == 0, result.stderr
    written = [r["seed"]["id"] for r in read_jsonl(out)]
    rejected = [json.loads(r["raw"])["id"] for r in read_jsonl(rejects)]
    assert sorted(written + rejected) == sorted(f"p{i}" for i in range(40))  # every record, none twice
    assert "p7" in rejected and "HTTP 400" in read_jsonl(rejects)[rejected.index("p7")]["error"]
    assert failed_requests > 10
    summary = result.stderr.strip().splitlines()[-1]
    retries = int(summary.split(" retries")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert retries >= failed_requests - 1  # the 400 is not retried; every other failed request is
    assert "40 in" in summary and "records/s" in summary and "prompt tokens" in summary


def test_a_server_that_stays_down_stops_the_run_with_exit_3(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", passages(3))
    with FakeOpenAI(plan=always(Fault("503", retry_after=0))) as server:
        result = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "--max-retries", "2",
                        "-i", str(source)], cache=tmp_path / "cache")
    assert result.returncode == 3
    assert "HTTP 503" in result.stderr and "gave up after 2 retries" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_quota_exhausted_is_not_retried(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", passages(2))
    with FakeOpenAI(plan=always("quota")) as server:
        result = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "-i", str(source)],
                       cache=tmp_path / "cache")
        assert server.count() <= 2  # the probe's request and nothing more
    assert result.returncode == 3 and "quota" in result.stderr


def test_kill_9_then_resume_writes_every_record_once_and_repeats_no_finished_call(tmp_path):
    import threading

    n, first = 60, 24
    source = write_jsonl(tmp_path / "in.jsonl", passages(n))
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    release = threading.Event()
    # The probe, then `first` generations are answered; later requests wait until released.
    with FakeOpenAI(hold=release, hold_after=1 + first) as server:
        args = ["generate", "--llm", server.base_url, "--model", "fake-model", "--concurrency", "4", "--window", "8",
                "-i", str(source), "-o", str(out), "--rejects", str(tmp_path / "rejects.jsonl"), "--resume"]
        env = {**os.environ, "GECKO_CACHE_DIR": str(cache)}
        proc = subprocess.Popen([sys.executable, "-m", "gecko_cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while _cached_calls(cache) < first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _cached_calls(cache) == first, "the first answers never reached the cache"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = len(read_jsonl(out)) if out.exists() else 0
        completed = set(server.answered())  # answered before the kill (the held ones never were)
        release.set()
        result = gecko(args, cache=cache)
        answered = server.answered()
    assert result.returncode == 0, result.stderr
    ids = [r["seed"]["id"] for r in read_jsonl(out)] + [json.loads(r["raw"])["id"]
                                                        for r in read_jsonl(tmp_path / "rejects.jsonl")]
    assert sorted(ids) == sorted(f"p{i}" for i in range(n)) and len(ids) == len(set(ids))
    assert 0 < before < n and f"{before} done by an earlier run" in result.stderr
    # Only the capability probe (not cached on purpose: it checks the server of *this* run) is
    # sent again; every generation answered before the kill came from the cache afterwards.
    assert len(completed) == first + 1
    assert sorted(answered[h] for h in completed) == [1] * first + [2], "a finished call was sent again"


def _cached_calls(cache: Path) -> int:
    path = cache / "llm.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM llm").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_token_budget_stops_cleanly_under_the_budget(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", passages(30))
    with FakeOpenAI() as server:
        full = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "-i", str(source), "--no-cache"],
                     cache=tmp_path / "c1")
        tokens = _tokens(full.stderr)
        budget = tokens // 3
        cut = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "-i", str(source), "--no-cache",
                     "--max-tokens-budget", str(budget), "--window", "4"], cache=tmp_path / "c2")
    assert cut.returncode == 0, cut.stderr
    assert "stopped early: --max-tokens-budget" in cut.stderr
    assert 0 < len(cut.stdout.splitlines()) < len(full.stdout.splitlines())
    assert _tokens(cut.stderr) <= budget


def _tokens(stderr: str) -> int:
    summary = stderr.strip().splitlines()[-1]
    fields = {part.split(" ", 1)[1]: part.split(" ", 1)[0] for part in summary.split(": ", 1)[1].split(", ")
              if " " in part}
    return int(fields["prompt tokens"].replace(",", "")) + int(fields["completion tokens"].replace(",", ""))


def test_the_api_key_appears_nowhere(tmp_path):
    key = "sk-gecko-test-7f3a9c1e5b"
    source = write_jsonl(tmp_path / "in.jsonl", passages(6) + [{"id": "bad"}])
    cache, out, rejects = tmp_path / "cache", tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    texts = []
    with FakeOpenAI(api_key=key, plan=fail_share(0.5, ["500", "drop"], seed=1)) as server:
        good = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "--api-key-env", "MY_KEY",
                      "-i", str(source), "-o", str(out), "--rejects", str(rejects)],
                     env_extra={"MY_KEY": key}, cache=cache)
        assert good.returncode == 0, good.stderr
        assert len(read_jsonl(out)) == 6
        wrong = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "--api-key-env", "MY_KEY",
                       "-i", str(source), "--no-cache"], env_extra={"MY_KEY": key + "x"}, cache=cache)
        assert wrong.returncode == 3 and "HTTP 401" in wrong.stderr
        missing = gecko(["generate", "--llm", server.base_url, "--api-key-env", "MY_KEY", "-i", str(source),
                         "--rejects", str(tmp_path / "rejects2.jsonl")],
                        env_extra={"MY_KEY": key}, cache=cache)  # --model from GET /models
        assert missing.returncode == 0, missing.stderr
    texts += [good.stdout, good.stderr, wrong.stdout, wrong.stderr, missing.stdout, missing.stderr]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("llm.sqlite") for p in files)
    for text in texts:
        assert key not in text
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_probe_reports_what_the_server_really_does(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", passages(2))
    records = tmp_path / "queries.jsonl"
    with FakeOpenAI(honour_json_schema=False, honour_echo=False) as server:
        gen = gecko(["generate", "--llm", server.base_url, "--model", "fake-model", "-i", str(source), "-o",
                     str(records), "--rejects", str(tmp_path / "r.jsonl")], cache=tmp_path / "cache")
        assert gen.returncode == 0, gen.stderr
        assert "JSON schema: no (JSON answers are still validated and repaired here)" in gen.stderr
        rerank = gecko(["rerank", "--llm", server.base_url, "--model", "fake-model", "--top-k", "2", "--exact",
                        "-i", str(records)], cache=tmp_path / "cache")
        assert rerank.returncode == 2 and "--scorers rc" in rerank.stderr
        assert "prompt log-probs (query likelihood): no" in rerank.stderr
        rc = gecko(["rerank", "--llm", server.base_url, "--model", "fake-model", "--top-k", "2", "--exact",
                    "--scorers", "rc", "-i", str(records)], cache=tmp_path / "cache")
    assert rc.returncode == 0, rc.stderr
    assert "top log-probs (relevance): yes" in rc.stderr
    scored = [json.loads(line) for line in rc.stdout.splitlines()]
    assert scored and all("rc" in c and "ql" not in c for r in scored for c in r["candidates"])


def test_probe_catches_prompt_logprobs_that_are_off_by_one(tmp_path):
    """llama-cpp-python echoes log p(token i+1) as token i's when the model has no BOS token:
    every shape check passes, only comparing with a generated token's log-prob shows it."""
    records = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "task": "t", "query": "cats", "seed": passages(1)[0]}])
    with FakeOpenAI(echo_shift=True) as server:
        result = gecko(["rerank", "--llm", server.base_url, "--model", "fake-model", "-i", str(records)],
                       cache=tmp_path / "cache")
    assert result.returncode == 2 and "misaligned" in result.stderr and "--scorers rc" in result.stderr


def test_rerank_over_http_scores_every_pair_with_both_scorers(tmp_path):
    records = write_jsonl(tmp_path / "q.jsonl", [
        {"id": f"q{i}", "task": "Given a claim, find a passage", "query": f"{WORDS[i]} claim", "seed": p}
        for i, p in enumerate(passages(6))])
    with FakeOpenAI(plan=fail_share(0.3, ["500", "drop", Fault("429", retry_after=0)], seed=2)) as server:
        result = gecko(["rerank", "--llm", server.base_url, "--model", "fake-model", "--top-k", "3", "--exact",
                        "-i", str(records)], cache=tmp_path / "cache")
        again = gecko(["rerank", "--llm", server.base_url, "--model", "fake-model", "--top-k", "3", "--exact",
                       "-i", str(records)], cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in out] == [f"q{i}" for i in range(6)]
    assert all(len(r["candidates"]) == 3 and all({"ql", "rc", "rank"} <= set(c) for c in r["candidates"]) for r in out)
    assert "prompt log-probs (query likelihood): yes" in result.stderr
    assert again.stdout == result.stdout and ", 0 LLM calls," in again.stderr  # all from the cache


@pytest.mark.parametrize("stage", ["generate", "rerank"])
def test_llm_options_are_documented(stage):
    result = gecko([stage, "--help"])
    for option in ("--llm", "--model", "--api-key-env", "--concurrency", "--max-retries", "--max-tokens-budget"):
        assert option in result.stdout
