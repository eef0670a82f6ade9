"""`gecko generate` and `gecko rerank` against a REAL OpenAI-compatible server on 127.0.0.1:
llama-cpp-python's `python -m llama_cpp.server` serving the same SmolLM2 GGUF as the embedded
backend (installed by `make install`). What the server can and cannot score is checked, not assumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gecko_cli.contract.records import validate_passage
from tests.support.llama_server import smollm2_gguf, start_llama_server

pytestmark = pytest.mark.slow

PASSAGES = [
    {"id": "p1", "title": "Aspirin", "text": "Low-dose aspirin reduced the risk of a first heart attack in a large randomized trial of physicians."},
    {"id": "p2", "title": "Photosynthesis", "text": "Plants convert light energy into chemical energy that is stored in glucose, releasing oxygen."},
    {"id": "p3", "title": "Honey bees", "text": "Honey bees communicate the location of flowers to other bees in the hive with a waggle dance."},
]


@pytest.fixture(scope="module")
def server():
    with start_llama_server(smollm2_gguf()) as base_url:
        yield base_url


def gecko(args: list[str], cache: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "GECKO_CACHE_DIR": str(cache), "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "gecko_cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=600)


def test_generate_through_a_real_server(server, tmp_path):
    stdin = "".join(json.dumps(p) + "\n" for p in PASSAGES)
    rejects = tmp_path / "rejects.jsonl"
    result = gecko(["generate", "--llm", server, "--rejects", str(rejects), "-o", str(tmp_path / "q.jsonl")],
                   tmp_path / "cache", stdin)
    assert result.returncode == 0, result.stderr
    # llama-cpp-python refuses the OpenAI json_schema form (HTTP 500) but honours its own json_object
    # + schema form: the probe finds that out and reports the capability as there.
    assert "JSON schema: yes" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(records) + len(rejected) == len(PASSAGES) and records
    for record in records:
        assert record["id"] == f"{record['seed']['id']}#0" and record["query"].strip()
        validate_passage(record["seed"])
        prov = record["_provenance"][-1]
        assert prov["llm"] == "http" and prov["model"].endswith(".gguf")
    assert "prompt tokens" in result.stderr.splitlines()[-1]


def test_rerank_through_a_real_server_reports_what_it_cannot_score(server, tmp_path):
    queries = "".join(json.dumps({"id": f"q{i}", "task": "Given a question, retrieve passages that answer it",
                                  "query": q, "seed": p}) + "\n"
                      for i, (q, p) in enumerate(zip(["does aspirin prevent heart attacks", "how do bees communicate"],
                                                     [PASSAGES[0], PASSAGES[2]])))
    both = gecko(["rerank", "--llm", server, "--top-k", "2", "--exact"], tmp_path / "cache", queries)
    # llama-cpp-python 0.3.36 echoes prompt log-probs off by one position for this model (no BOS):
    # query likelihood would be wrong, so it is refused with the reason, not computed.
    assert both.returncode == 2, both.stderr
    assert "prompt log-probs (query likelihood): no" in both.stderr and "--scorers rc" in both.stderr
    rc = gecko(["rerank", "--llm", server, "--top-k", "2", "--exact", "--scorers", "rc"], tmp_path / "cache", queries)
    assert rc.returncode == 0, rc.stderr
    assert "top log-probs (relevance): yes" in rc.stderr
    out = [json.loads(line) for line in rc.stdout.splitlines()]
    assert [r["id"] for r in out] == ["q0", "q1"]
    for record in out:
        assert len(record["candidates"]) == 2
        assert all(isinstance(c["rc"], float) and c["rank"] in (1, 2) for c in record["candidates"])
