"""Shared fixtures: an isolated cache per test session, paths to real data, a CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_DATA = ROOT.parent / "shared" / "data"  # CI has shared/ beside its clone

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def gecko_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir for the whole session: tests share encodings, never the user's cache."""
    path = tmp_path_factory.mktemp("gecko-cache")
    os.environ["GECKO_CACHE_DIR"] = str(path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def jsonl(*records: object) -> str:
    """Records as JSONL text (strings are written as raw lines)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
