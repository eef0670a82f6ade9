"""The backend registry and the protocol's defaults: a backend is one registration away."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from gecko_cli.contract.errors import UsageError
from gecko_cli.llm import registry
from gecko_cli.llm.base import BaseBackend, LLMBackend, LLMOptions
from gecko_cli.llm.cache import CachedBackend, ResultCache
from gecko_cli.llm.http import HttpBackend
from gecko_cli.llm.scoring import ScoringPrompts, score_pairs
from gecko_cli.llm.tokens import TokenMeter


class Echo(BaseBackend):
    """A whole backend in a few lines: scores are lengths; generation repeats the prompt."""

    name = "echo"

    def __init__(self, model_id: str = "echo-1", meter: TokenMeter | None = None) -> None:
        super().__init__(meter)
        self.model_id = model_id

    def generate_json(self, prompts, schema, *, temperature, seed, max_new_tokens, attempt=0, on_result=None):
        return [f'{{"query": "{p[-1]["content"]} {seed + attempt}"}}' for p in prompts]

    def query_likelihood(self, prefixes, continuations, on_result=None):
        values = [-float(len(c)) for c in continuations]
        for i, value in enumerate(values):
            if on_result is not None:
                on_result(i, value)
        return values

    def label_logprobs(self, prompts, labels, on_result=None):
        return [{label: -float(len(p) % 3 + k) for k, label in enumerate(labels)} for p in prompts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def register_echo(register: registry.Register) -> None:
    """An outside package's plugin hook (loaded below through an entry point)."""
    register("echo", lambda llm: llm.startswith("echo:"),
             lambda options, meter, report: Echo(options.llm.removeprefix("echo:"), meter))


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry as loaded, restored after the test."""
    monkeypatch.setattr(registry, "_registered", registry.registrations())


def test_gecko_registers_its_own_backends_like_a_plugin() -> None:
    assert [r.name for r in registry.registrations()][:2] == ["embedded", "http"]
    for value in ("", "embedded", " LOCAL "):
        assert registry.backend_for(value).name == "embedded"
    for value in ("http://127.0.0.1:8000/v1", "https://api.example.com/v1", "localhost:8000"):
        assert registry.backend_for(value).name == "http"


def test_a_local_model_file_or_directory_runs_in_process(tmp_path: Path) -> None:
    gguf, directory = tmp_path / "Model.Q4.gguf", tmp_path / "hf-model"
    gguf.write_bytes(b"GGUF")
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    for value in (str(gguf), str(directory)):
        assert registry.backend_for(value).name == "model-file"
        assert not LLMOptions(llm=value).is_http and not LLMOptions(llm=value).is_embedded
    for value in (str(tmp_path / "missing.gguf"), str(tmp_path)):  # not a model: taken for a URL
        assert registry.backend_for(value).name == "http"
    with pytest.raises(UsageError, match="--llm PATH already names the model"):
        registry.open_backend(LLMOptions(llm=str(gguf), model="m", use_cache=False))


def test_a_malformed_url_or_a_model_for_the_embedded_llm_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--llm localhost:8000: expected http://HOST:PORT/v1 \(or 'embedded'\)$"):
        registry.open_backend(LLMOptions(llm="localhost:8000", model="m", use_cache=False))
    with pytest.raises(UsageError, match="--model names a model on an LLM server"):
        registry.open_backend(LLMOptions(model="m", use_cache=False))


def test_a_registered_backend_is_opened_behind_the_cache_with_the_runs_meter(isolated: None, tmp_path: Path) -> None:
    register_echo(registry.register)
    backend = registry.open_backend(LLMOptions(llm="echo:big", max_tokens_budget=99, use_cache=False))
    assert isinstance(backend, CachedBackend) and isinstance(backend.inner, Echo)
    assert (backend.name, backend.model_id) == ("echo", "big") and backend.meter is backend.inner.meter
    assert backend.meter.budget == 99
    # rerank's scoring needs nothing but the protocol: QL and RC through the default score_shared
    prompts = ScoringPrompts("P: {text}\nQ:{query}", "P: {text}\nQ: {query}\nRelevant?")
    scores = score_pairs(backend, prompts, [("why", {"text": "sky"}), ("how", {"text": "sea"})], ["ql", "rc"])
    assert [s["ql"] for s in scores] == [-4.0, -4.0] and all("rc" in s for s in scores)
    assert registry.backend_for("http://127.0.0.1:8000/v1").name == "http"


def test_the_last_registration_that_claims_a_value_serves_it(isolated: None) -> None:
    registry.register("mine", lambda llm: llm.startswith("http://mine"), lambda options, meter, report: Echo())
    assert registry.backend_for("http://mine:8000/v1").name == "mine"
    assert registry.backend_for("http://other:8000/v1").name == "http"


def test_plugins_installed_as_entry_points_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = EntryPoint("echo", f"{__name__}:register_echo", registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry] if group == registry.ENTRY_POINTS else [])
    monkeypatch.setattr(registry, "_registered", [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    assert [r.name for r in registry.registrations()] == ["embedded", "http", "model-file", "echo"]
    assert registry.backend_for("echo:x").name == "echo"


def test_a_value_no_backend_claims_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", registry.registrations()[:1])
    with pytest.raises(UsageError, match=r"--llm ftp://x: no LLM backend serves it \(registered: embedded\)"):
        registry.backend_for("ftp://x")


def test_every_backend_satisfies_the_protocol(tmp_path: Path) -> None:
    http = HttpBackend("http://127.0.0.1:9/v1", "m")
    for backend in (Echo(), http, CachedBackend(http, ResultCache(None))):
        assert isinstance(backend, LLMBackend)
    assert (Echo().streams_results, http.streams_results) == (False, True)


def test_the_default_score_shared_makes_the_two_calls_and_reports_both_kinds() -> None:
    heard: list[tuple[str, int, Any]] = []
    ql, rc = Echo().score_shared(["P:", "P:"], [" a", " bb"], ["P: a?"], [" Yes"],
                                 on_result=lambda kind, i, value: heard.append((kind, i, value)))
    assert ql == [-2.0, -3.0] and rc == [{" Yes": -2.0}]
    assert heard == [("ql", 0, -2.0), ("ql", 1, -3.0)]  # Echo reports its QL results only
    assert Echo().score_shared([], [], [], [" Yes"]) == ([], [])
