"""The pure parts of `gecko generate`: parsing, degenerate outputs, task sampling (llm/generation), dedupe."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from gecko_cli.llm import generation as rules
from gecko_cli.stages import generate as g
from gecko_cli.contract.stream import Rejected

TYPES = [rules.TaskType(f"t{i}", f"task {i}", f"query kind {i}") for i in range(4)]
TEMPLATE = rules.parse_template("### system\nBe brief.\n### user\nWrite {query_kind}.\nPassage: {text}\n"
                            "### assistant\nis the example query here\n### user\nTask: {task}\nWrite {query_kind}.\n"
                            "Passage: {title}. {text}")
PASSAGE = {"id": "d1", "title": "Aspirin", "text": "In a randomized trial of physicians, taking aspirin every "
                                                    "other day reduced the risk of a first heart attack."}


@pytest.mark.parametrize("raw, query", [
    ('{"query": "why is the sky blue"}', "why is the sky blue"),
    ('  {"query": " sky colour "} trailing words', "sky colour"),
    ("why is the sky blue\nBecause of scattering.", "why is the sky blue"),
    ('\n\nQuery: "sky colour"', "sky colour"),
    ("", ""),
    ('{"query": "unfinished', None),
    ('{"q": "x"}', None),
    ('{"query": 3}', None),
])
def test_parse_query(raw, query):
    assert rules.parse_query(raw) == query


def test_copy_share_counts_word_5grams():
    assert rules.copy_share("the sky is blue today", "We know: the SKY is blue, today.") == 1.0
    assert rules.copy_share("is the sky blue", "the sky is blue") == 0.0  # under 5 words: no 5-grams
    # 6 words -> 2 five-grams, one of them in the passage
    assert rules.copy_share("the sky is blue today friend", "the sky is blue today") == 0.5


@pytest.mark.parametrize("query, reason", [
    ("does aspirin prevent heart attacks", None),
    (None, "not a JSON object"),
    ("  ", "empty query"),
    ("word " * 65, "too long (65 words > 64)"),
    ("taking aspirin every other day reduced the risk of a first heart attack", "copies the passage"),
    ("Is the example  query HERE?", "repeats the prompt's example"),
    ("bc1 editing " + "edit " * 20, "repeats itself"),
    ("phantom limb sensations " * 4, "repeats itself"),
    ("what is the the role of the gene in the cell", None),
    ("Here is a claim that the text supports:", "talks about the prompt"),
    ("can you provide a snippet of the passage", "talks about the prompt"),
    ("I'd be happy to help!", "talks about the prompt"),
])
def test_degenerate(query, reason):
    found = rules.degenerate(query, PASSAGE, rules.example_queries(TEMPLATE))
    assert (found is None) if reason is None else (reason in found)


def test_near_copy_of_an_example_is_an_echo():
    shots = frozenset({"so is the example query here ok"})
    assert "example" in rules.degenerate("is the example query here ok", PASSAGE, shots)


def test_task_sampling_is_deterministic_per_passage_and_uniform():
    assert rules.sample_tasks(TYPES, 0, "d1", 3) == rules.sample_tasks(TYPES, 0, "d1", 3)
    assert rules.sample_tasks(TYPES, 0, "d1", 1) == rules.sample_tasks(TYPES, 0, "d1", 3)[:1]
    counts = Counter(rules.sample_tasks(TYPES, 7, f"p{i}", 1)[0].name for i in range(4000))
    assert set(counts) == {t.name for t in TYPES} and all(900 < c < 1100 for c in counts.values())
    assert sum(rules.sample_tasks(TYPES, 0, f"p{i}", 1) != rules.sample_tasks(TYPES, 1, f"p{i}", 1) for i in range(100)) > 50


def test_sample_seeds_differ_and_keep_the_run_seed_first():
    assert rules.sample_seed(5, 0) == 5
    seeds = {rules.sample_seed(0, n) for n in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**31 for s in seeds)


def test_parse_template_and_render():
    assert [m["role"] for m in TEMPLATE] == ["system", "user", "assistant", "user"]
    prompt = rules.render(TEMPLATE, {"id": "x", "text": "Body."}, TYPES[1])
    assert prompt[:-1] == TEMPLATE[:-1]
    assert prompt[-1]["content"] == "Task: task 1\nWrite query kind 1.\nPassage: Body."
    with pytest.raises(ValueError):
        rules.parse_template("### system\nhi\n### assistant\nthere")
    with pytest.raises(ValueError):
        rules.parse_template("### user\nhi\n### assistant\nthere\n### assistant\nagain")


def test_a_template_may_end_with_the_start_of_the_answer():
    template = rules.parse_template('### user\nPassage: {text}\n### assistant\n{"query": "ok"}\n'
                                    '### user\nPassage: {text}\nWrite {query_kind}.\n### assistant\n{"query": "')
    prompt = rules.render(template, {"id": "x", "text": "Body."}, TYPES[1])
    assert prompt[-2:] == [{"role": "user", "content": "Passage: Body.\nWrite query kind 1."},
                           {"role": "assistant", "content": '{"query": "'}]
    assert rules.example_queries(template) == frozenset({"ok"})  # the answer's start is no example


@pytest.mark.parametrize("items", [[], {"name": "x"}, [{"name": "x"}], [{"name": "", "task": "t"}]])
def test_bad_task_types(items):
    with pytest.raises(ValueError):
        rules.parse_task_types(items)


def test_normalise():
    assert g.normalize_text("  Why  IS the\tSky ") == "why is the sky"


class FakeBackend:
    """Answers from a script keyed by (passage text fragment, attempt); records every call."""

    name, model_id = "fake", "fake-model"
    per_prompt_seeds = True

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def generate_json(self, prompts, schema, *, temperature, seed, max_new_tokens, attempt=0):
        self.calls.append((len(prompts), seed, attempt))
        return [self.answer(p[-1]["content"], attempt) for p in prompts]


def run(passages, answer, **kw):
    stats = g.GenerateStats()
    backend = FakeBackend(answer)
    out = []
    for item in g.generate(passages, backend, TEMPLATE, TYPES, stats=stats, **kw):
        out.extend(item if isinstance(item, list) else [item])  # a passage's records come as one list
    return out, stats, backend


def test_retry_then_reject_and_dedupe_in_input_order():
    passages = [{"id": i, "text": f"passage {i}", "extra": i} for i in range(5)]

    def answer(prompt, attempt):
        if "passage 1" in prompt:
            return "" if attempt == 0 else json.dumps({"query": "fixed on retry"})
        if "passage 2" in prompt:
            return "{broken"
        if "passage 4" in prompt:
            return "Same   Query"
        return "same query" if "passage 3" in prompt else "query zero"

    out, stats, backend = run(passages, answer, window=2)
    assert [r["id"] if isinstance(r, dict) else "rejected" for r in out] == ["0#0", "1#0", "rejected", "3#0", "rejected"]
    assert out[4].record is passages[4] and out[4].error.startswith("duplicate query")  # every input accounted for
    assert out[1]["query"] == "fixed on retry" and out[1]["_provenance"][-1]["attempt"] == 1
    assert isinstance(out[2], Rejected) and "after a retry" in out[2].error and out[2].record is passages[2]
    assert out[2].error.endswith("(after a retry)")  # no query came out, so none is quoted
    assert stats.duplicates == 1 and stats.retried == 2
    assert out[0]["extra"] == 0 and out[0]["seed"] == {"id": 0, "text": "passage 0"}
    assert out[0]["task"] in {t.task for t in TYPES}
    prov = out[0]["_provenance"][-1]
    assert prov["stage"] == "generate" and prov["model"] == "fake-model" and prov["seed"] == 0
    assert [c[0] for c in backend.calls] == [2, 1, 2, 1, 1]  # windows of 2: batch, retries; last window


def test_per_passage_samples_use_distinct_seeds_and_no_retry_when_greedy():
    out, stats, backend = run([{"id": "a", "text": "t"}], lambda p, a: "", per_passage=3, temperature=0.0)
    assert len(out) == 1 and isinstance(out[0], Rejected) and stats.retried == 0
    assert backend.calls == [(3, [rules.sample_seed(0, n) for n in range(3)], 0)]
    assert len(set(backend.calls[0][1])) == 3
    out, _, _ = run([{"id": "a", "text": "t"}], lambda p, a: "q", per_passage=2, temperature=0.7)
    assert [r["id"] for r in out] == ["a#0"]  # a#1 has the same query: dropped as a duplicate


def test_estimate_tokens_counts_every_prompt():
    words = lambda s: len(s.split())  # noqa: E731
    one = list(g.estimate_tokens([PASSAGE], TEMPLATE, TYPES, words))
    two = list(g.estimate_tokens([PASSAGE], TEMPLATE, TYPES, words, per_passage=2))
    assert len(one) == 1 and one[0] > 20 and two[0] > one[0]


def test_a_failed_call_is_rejected_without_a_second_sample():
    from gecko_cli.llm.base import Failure

    out, stats, backend = run([{"id": "a", "text": "alpha text"}, {"id": "b", "text": "beta text"}],
                              lambda p, a: Failure("HTTP 400: prompt too long") if "alpha text" in p
                              else json.dumps({"query": "fine query"}))
    assert isinstance(out[0], Rejected) and out[0].error == "LLM call failed: HTTP 400: prompt too long"
    assert out[1]["id"] == "b#0" and stats.retried == 0


def test_token_budget_ends_the_run_after_the_last_whole_window():
    from gecko_cli.llm.tokens import BudgetExhausted

    class Budget(FakeBackend):
        def generate_json(self, prompts, schema, **kw):
            if len(self.calls) >= 1:
                raise BudgetExhausted("the next call needs up to 50 tokens; 90 of the 100-token budget used")
            return super().generate_json(prompts, schema, **kw)

    stats = g.GenerateStats()
    passages = [{"id": i, "text": f"passage {i}"} for i in range(4)]
    out = list(g.generate(passages, Budget(lambda p, a: json.dumps({"query": p[-12:]})), TEMPLATE, TYPES,
                          stats=stats, window=2))
    assert [r["id"] for item in out for r in item] == ["0#0", "1#0"]
    assert stats.stopped.startswith("--max-tokens-budget: the next call needs up to 50 tokens")


def test_a_rejected_query_is_quoted_in_the_reason():
    text = "taking aspirin every other day reduced the risk of a first heart attack in healthy women"
    out, _, _ = run([{"id": "a", "text": text}], lambda p, a: json.dumps({"query": text}))
    assert isinstance(out[0], Rejected)
    assert out[0].error == f"query copies the passage (over 50% of its word 5-grams) (after a retry): {text!r}"


class SeededBackend:
    """Answers depend on (prompt, seed + attempt): a query is usable unless its sample is "bad"."""

    name, model_id = "fake", "fake-model"

    def __init__(self, per_prompt_seeds: bool) -> None:
        self.per_prompt_seeds = per_prompt_seeds
        self.calls: list[tuple[list[int], int]] = []

    def generate_json(self, prompts, schema, *, temperature, seed, max_new_tokens, attempt=0):
        seeds = list(seed) if self.per_prompt_seeds else [seed] * len(prompts)
        self.calls.append((seeds, attempt))
        return [json.dumps({"query": "" if (s + len(p[-1]["content"])) % 3 == 0 and attempt == 0
                            else f"query {s + attempt} {p[-1]['content'][-9:]}"}) for p, s in zip(prompts, seeds)]


def test_one_call_per_attempt_carries_every_sample_with_its_own_seed_and_records_are_unchanged():
    passages = [{"id": f"p{i}", "text": f"passage number {i}"} for i in range(5)]

    def records(backend):
        return [r for item in g.generate(passages, backend, TEMPLATE, TYPES, per_passage=3, seed=11, window=4)
                for r in (item if isinstance(item, list) else [item])]

    together, apart = SeededBackend(per_prompt_seeds=True), SeededBackend(per_prompt_seeds=False)
    out = records(together)
    assert out == records(apart)  # the same records, in the same order, as one call per sample index
    assert [r["id"] for r in out] == [f"p{i}#{n}" for i in range(5) for n in range(3)]
    assert {r["_provenance"][-1]["attempt"] for r in out} == {0, 1}  # some were regenerated
    expected = [rules.sample_seed(11, n) for _ in range(4) for n in range(3)]
    assert [a for _, a in together.calls] == [0, 1, 0, 1] and together.calls[0][0] == expected
    assert together.calls[2][0] == expected[:3]  # the second window: one passage
    retried = [r["_provenance"][-1]["sample_seed"] for r in out[:12] if r["_provenance"][-1]["attempt"] == 1]
    assert together.calls[1][0] == retried  # the retry carries each degenerate sample's own seed
    assert all(r["_provenance"][-1]["sample_seed"] == rules.sample_seed(11, int(r["id"][-1])) for r in out)
    assert len(apart.calls) > len(together.calls)  # the one-seed backend needs a call per sample index
