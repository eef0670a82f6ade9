"""The pure parts of `gecko generate`: parsing, degenerate outputs, task sampling (llm/generation), dedupe;
and its look-ahead thread, which must make the calls and write the records of the plain loop."""

from __future__ import annotations

import json
import threading
import zlib
from collections import Counter
from contextlib import nullcontext

import pytest

from gecko_cli.contract.errors import BackendError
from gecko_cli.llm import generation as rules
from gecko_cli.llm.tokens import BudgetExhausted
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


# --- the look-ahead thread (`--llm URL`): window k+1's calls while window k is written ---------------


class ScriptedBackend:
    """Answers by (prompt, seed + attempt): some samples unusable (fixed or not on the retry), some
    duplicates, some calls refused. Records every call and its thread; fails if two calls overlap;
    raises `fail_with` at call number `fail_at`; `started[i]` is set when call i begins and call
    `hold_at` waits for `release` before answering."""

    name, model_id = "fake", "fake-model"
    per_prompt_seeds = True

    def __init__(self, fail_at: int | None = None, fail_with: Exception | None = None, hold_at: int | None = None,
                 unusable: bool = True) -> None:
        self.fail_at, self.fail_with, self.hold_at, self.unusable = fail_at, fail_with, hold_at, unusable
        self.calls: list[tuple[list[str], list[int], int]] = []
        self.threads: set[int] = set()
        self.started = [threading.Event() for _ in range(64)]
        self.release = threading.Event()
        self._active = 0
        self._lock = threading.Lock()

    def generate_json(self, prompts, schema, *, temperature, seed, max_new_tokens, attempt=0):
        with self._lock:
            self._active += 1
            overlapping = self._active > 1
        try:
            assert not overlapping, "two LLM calls at once"
            number = len(self.calls)
            self.calls.append(([p[-1]["content"].rsplit(": ", 1)[-1] for p in prompts], list(seed), attempt))
            self.threads.add(threading.get_ident())
            self.started[number].set()
            if number == self.hold_at:
                self.release.wait()
            if number == self.fail_at:
                raise self.fail_with
            return [self.answer(p[-1]["content"], s, attempt) for p, s in zip(prompts, seed)]
        finally:
            with self._lock:
                self._active -= 1

    def answer(self, prompt: str, seed: int, attempt: int):
        from gecko_cli.llm.base import Failure

        if "refused" in prompt:
            return Failure("HTTP 400: prompt too long")
        if "hopeless" in prompt:
            return "{\"query\": 7}"  # unusable on the retry too
        text = prompt.rsplit(": ", 1)[-1]
        kind = zlib.crc32(f"{text}|{seed + attempt}".encode()) % 6
        if self.unusable and kind == 0:
            return ""  # empty: unusable, retried
        if self.unusable and kind == 1:
            return "{broken"
        if kind == 2:
            return json.dumps({"query": "the same query"})  # duplicates across passages and windows
        return json.dumps({"query": f"what about {text} {seed + attempt}"})


def numbered(n: int) -> list[dict]:
    return [{"id": f"p{i}", "text": f"passage number {i}" + {5: " refused", 3: " hopeless"}.get(i % 7, ""), "k": i}
            for i in range(n)]


def run_both(make_backend, passages, **kw):
    """`generate` without and with a `Lookahead`: (items, error, stats, backend) of each.
    `passages`: a list, or a function that makes a fresh iterable for each run."""
    runs = []
    for ahead in (False, True):
        backend, stats, out, error = make_backend(), g.GenerateStats(), [], None
        source = passages() if callable(passages) else passages
        with g.Lookahead() if ahead else nullcontext() as la:
            try:
                for item in g.generate(source, backend, TEMPLATE, TYPES, stats=stats, ahead=la, **kw):
                    out.extend(item if isinstance(item, list) else [item])
            except Exception as exc:  # noqa: BLE001 - compared below
                error = exc
        runs.append((out, error, stats, backend))
    return runs


def assert_same(plain, ahead):
    (out, error, stats, backend), (out2, error2, stats2, backend2) = plain, ahead
    assert out2 == out
    assert repr(error2) == repr(error)
    assert backend2.calls == backend.calls  # the same calls, same order, same seeds and attempts
    assert (stats2.retried, stats2.duplicates, stats2.seen, stats2.stopped) == \
        (stats.retried, stats.duplicates, stats.seen, stats.stopped)


def test_lookahead_makes_the_same_calls_in_the_same_order_and_writes_the_same_records():
    plain, ahead = run_both(ScriptedBackend, numbered(23), per_passage=2, window=3, seed=5)
    assert_same(plain, ahead)
    out, _, stats, backend = plain
    attempts = [r["_provenance"][-1]["attempt"] for r in out if isinstance(r, dict)]
    reasons = [r.error for r in out if isinstance(r, Rejected)]
    assert 1 in attempts and stats.retried and stats.duplicates  # regenerated, fixed and deduplicated ...
    assert any("after a retry" in r for r in reasons) and any("HTTP 400" in r for r in reasons)  # ... or not
    assert backend.threads == {threading.get_ident()}  # without it, every call on the caller's thread
    assert len(ahead[3].threads) == 1 and threading.get_ident() not in ahead[3].threads  # with it, one other


def count_calls(**kw) -> int:
    return len(run_both(ScriptedBackend, numbered(11), **kw)[0][3].calls)


@pytest.mark.parametrize("error", [BudgetExhausted("the next call needs up to 50 tokens"), BackendError("server down")],
                         ids=["budget", "server"])
def test_a_call_that_raises_stops_both_runs_at_the_same_place(error):
    """Every call in turn raises (a first window, a retry, a last window): the records before it,
    the calls made, the error or the budget stop are the same with the look-ahead as without."""
    calls = count_calls(window=2, seed=1)
    assert calls >= 8
    for fail_at in range(calls):
        plain, ahead = run_both(lambda: ScriptedBackend(fail_at=fail_at, fail_with=error), numbered(11),
                                window=2, seed=1)
        assert_same(plain, ahead)
        assert len(plain[3].calls) == fail_at + 1  # nothing was asked after the failing call
        if isinstance(error, BudgetExhausted):
            assert plain[1] is None and plain[2].stopped.startswith("--max-tokens-budget")
        else:
            assert plain[1] is error


@pytest.mark.parametrize("good", [0, 4, 5, 9])
def test_input_that_fails_still_gets_the_windows_before_it(good):
    def passages():
        yield from numbered(good)
        raise ValueError("the input broke")

    plain, ahead = run_both(ScriptedBackend, passages, window=4)
    assert_same(plain, ahead)
    assert isinstance(plain[1], ValueError)
    ids = {r["id"].split("#")[0] if isinstance(r, dict) else r.record["id"] for r in plain[0]}
    assert ids == {f"p{i}" for i in range(good // 4 * 4)}  # every whole window read before the failure


def test_lookahead_calls_for_the_next_window_while_the_caller_holds_this_one_and_reads_no_further():
    window, pulled = 3, []

    def passages():
        for p in numbered(4 * window):
            pulled.append(p["id"])
            yield p

    backend = ScriptedBackend(unusable=False)
    with g.Lookahead() as ahead:
        items = g.generate(passages(), backend, TEMPLATE, TYPES, window=window, temperature=0.0, ahead=ahead)
        first = next(items)
        assert backend.started[1].wait(60)  # window 1 is being generated while window 0 is being written
        assert len(pulled) == 2 * window  # and window 2 has not been read: one window ahead at most
        rest = list(items)
    assert len(pulled) == 4 * window and len(backend.calls) == 4
    assert first[0]["id"] == "p0#0" and len([first, *rest]) == 4 * window  # one item per passage


def test_a_caller_that_stops_early_gets_no_further_call_sent():
    backend = ScriptedBackend(hold_at=1)  # window 1's first call waits until released
    passages = [{"id": f"p{i}", "text": f"passage {i}"} for i in range(6)]
    backend.answer = lambda prompt, seed, attempt: "" if "passage 2" in prompt or "passage 3" in prompt \
        else json.dumps({"query": prompt[-9:]})  # window 1 needs a retry, window 0 does not
    with g.Lookahead() as ahead:
        items = g.generate(passages, backend, TEMPLATE, TYPES, window=2, ahead=ahead)
        next(items)
        assert backend.started[1].wait(60)
        items.close()
        assert ahead.stopped
        backend.release.set()
    assert [(len(prompts), attempt) for prompts, _, attempt in backend.calls] == [(2, 0), (2, 0)]  # no retry, no window 2
    assert not any(t.name == "gecko-generate-ahead" for t in threading.enumerate())
