"""The FRet pipeline as a user runs it: real subprocesses joined by real pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gecko_cli.contract.records import validate_training
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow


def test_generate_rerank_mine_negatives_pipe(tmp_path):
    passages = "".join((EXAMPLES / "passages.jsonl").read_text().splitlines(keepends=True)[:4])
    gecko = f"{sys.executable} -m gecko_cli"
    command = f"{gecko} generate | {gecko} rerank --top-k 3 | {gecko} mine-negatives --audit {tmp_path / 'audit.json'}"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], input=passages.encode(), capture_output=True,
                          env={**os.environ}, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert 1 <= len(records) <= 4
    for record in records:
        validate_training(dict(record))
        assert len(record["negatives"]) == 1 and record["negatives"][0]["id"] != record["positive"]["id"]
        assert [p["stage"] for p in record["_provenance"]] == ["generate", "retrieve", "rerank", "mine-negatives"]
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["records"] == len(records)
    stderr = proc.stderr.decode()
    assert "gecko generate:" in stderr and "gecko rerank:" in stderr and "gecko mine-negatives:" in stderr
