"""Pure parts of the embedded backend: prefix grouping, per-row sampling, atomic saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gecko_cli.llm.base import BaseBackend, Failure
from gecko_cli.llm.cache import CachedBackend, ResultCache
from gecko_cli.llm.local import model
from gecko_cli.llm.local.plan import merge_ql_into_rc, plan_groups
from gecko_cli.llm.local.sampling import GumbelSampler, row_generator


def test_plan_groups_docstring_example() -> None:
    assert plan_groups([[1, 2, 3, 4], [1, 2, 3, 5], [9]], [3, 3, 1]) == [(3, [0, 1]), (1, [2])]


def test_plan_groups_splits_by_passage_not_by_shared_instruction() -> None:
    # 100 instruction tokens, then a 200-token passage (A or B), then a 10-token query
    instruction = list(range(100))
    passages = {"A": list(range(1000, 1200)), "B": list(range(2000, 2200))}
    seqs, caps, names = [], [], []
    for name in ("B", "A", "B", "A", "A", "B"):  # interleaved, as records arrive
        q = len(names)
        seqs.append(instruction + passages[name] + list(range(5000 + 10 * q, 5010 + 10 * q)))
        caps.append(300)
        names.append(name)
    groups = plan_groups(seqs, caps)
    assert sorted((shared, sorted(names[i] for i in members)) for shared, members in groups) == [
        (300, ["A", "A", "A"]), (300, ["B", "B", "B"])]


def test_plan_groups_never_shares_past_the_cap() -> None:
    # the continuations agree on their first tokens, but those must be scored, not cached
    groups = plan_groups([[7] * 40 + [1, 2, 3], [7] * 40 + [1, 2, 4]], [40, 40])
    assert groups == [(40, [0, 1])]


def test_plan_groups_leaves_unrelated_sequences_alone() -> None:
    groups = plan_groups([[1, 2], [3, 4], [5, 6]], [1, 1, 1])
    assert sorted(m for _, members in groups for m in members) == [0, 1, 2]
    assert all(len(members) == 1 for _, members in groups)


def test_plan_groups_identical_prompts_share_everything() -> None:
    assert plan_groups([[4, 5, 6]] * 3, [3] * 3) == [(3, [0, 1, 2])]


def testmerge_ql_into_rc_reads_each_query_from_its_rc_prompt() -> None:
    head = [1, 2, 3]  # instruction + passage
    ql = [head + [10, 11], head + [20], head + [10, 11]]  # two queries; the first one twice
    rc = [head + [20, 99, 98], head + [10, 11, 99, 98], [5, 6]]
    jobs, owners = merge_ql_into_rc(ql, [3, 3, 3], rc)
    by_owner = dict(zip(owners, jobs))
    # a duplicate QL sequence rides in the RC job once; the other copy is scored on its own
    assert owners == [(0, None), (2, 1), (1, 0), (None, 2)]
    merged = by_owner[(1, 0)]
    assert merged.ids == rc[0] and merged.ql == (3, 4) and merged.read and merged.calls == [4, 6]
    assert by_owner[(None, 2)].ql is None and by_owner[(None, 2)].cap == 2
    assert all(job.cap == 3 for job in jobs if job.ql)


def testmerge_ql_into_rc_keeps_a_query_that_the_rc_prompt_tokenizes_differently() -> None:
    jobs, owners = merge_ql_into_rc([[1, 2, 7]], [2], [[1, 2, 8, 9]])  # "?" + "\n" merged into one token
    assert owners == [(0, None), (None, 0)] and [j.ids for j in jobs] == [[1, 2, 7], [1, 2, 8, 9]]


class _SharedFake(BaseBackend):
    """An inner backend with its own `score_shared`, recording what it was asked."""

    name, model_id = "fake", "fake-1"

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[list[str], list[str]]] = []

    def score_shared(self, prefixes, continuations, prompts, labels, on_result=None):
        self.asked.append((list(continuations), list(prompts)))
        ql = [Failure("too long") if c == " bad" else -float(len(c)) for c in continuations]
        rc = [{label: -float(len(p) + k) for k, label in enumerate(labels)} for p in prompts]
        for i, value in enumerate(ql):
            if on_result is not None:
                on_result("ql", i, value)
        return ql, rc

    def query_likelihood(self, prefixes, continuations, on_result=None):
        return self.score_shared(prefixes, continuations, [], [])[0]

    def label_logprobs(self, prompts, labels, on_result=None):
        return self.score_shared([], [], prompts, labels)[1]

    def count_tokens(self, text):
        return len(text.split())


def test_cached_score_shared_uses_the_two_calls_keys(tmp_path: Path) -> None:
    fake = _SharedFake()
    cached = CachedBackend(fake, ResultCache(tmp_path / "llm.sqlite"))
    labels = [" Yes", " No"]
    ql, rc = cached.score_shared(["P:", "P:", "P:"], [" a", " bb", " a"], ["P: a?", "P: bb?"], labels)
    assert ql == [-2.0, -3.0, -2.0] and rc[1] == {" Yes": -6.0, " No": -7.0}
    assert fake.asked == [([" a", " bb"], ["P: a?", "P: bb?"])]  # duplicates computed once
    assert (cached.cache.misses, cached.cache.hits) == (4, 0)
    # the two-call path finds every result under its own keys: nothing is recomputed
    assert cached.query_likelihood(["P:"], [" bb"]) == [-3.0]
    assert cached.label_logprobs(["P: a?"], labels) == [rc[0]]
    ql2, rc2 = cached.score_shared(["P:", "P:"], [" a", " ccc"], ["P: a?"], labels)
    assert fake.asked[-1] == ([" ccc"], []) and ql2 == [-2.0, -4.0] and rc2 == [rc[0]]


def test_cached_score_shared_never_stores_a_failure(tmp_path: Path) -> None:
    cached = CachedBackend(_SharedFake(), ResultCache(tmp_path / "llm.sqlite"))
    assert cached.score_shared(["P:"], [" bad"], [], [])[0] == [Failure("too long")]
    assert cached.score_shared(["P:"], [" bad"], [], [])[0] == [Failure("too long")]
    assert cached.cache.hits == 0


class _TwoCallsFake(BaseBackend):
    """The two scoring calls only (like the HTTP backend): `score_shared` is BaseBackend's default."""

    name, model_id = "two", "two-1"

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def query_likelihood(self, prefixes, continuations, on_result=None):
        self.asked.append("ql")
        return [-float(len(c)) for c in continuations]

    def label_logprobs(self, prompts, labels, on_result=None):
        self.asked.append("labels")
        return [{label: -1.0 for label in labels} for _ in prompts]


def test_cached_score_shared_falls_back_to_two_calls(tmp_path: Path) -> None:
    inner = _TwoCallsFake()
    cached = CachedBackend(inner, ResultCache(tmp_path / "llm.sqlite"))
    assert cached.score_shared(["P:"], [" a"], ["P: a?"], [" Yes"]) == ([-2.0], [{" Yes": -1.0}])
    assert inner.asked == ["ql", "labels"]
    assert cached.score_shared(["P:"], [" a"], ["P: a?"], [" Yes"]) == ([-2.0], [{" Yes": -1.0}])
    assert inner.asked == ["ql", "labels"]  # cached


def test_row_generator_depends_on_seed_and_prompt_only() -> None:
    draw = lambda seed, prompt: torch.rand(4, generator=row_generator(seed, prompt))  # noqa: E731
    assert torch.equal(draw(0, "a"), draw(0, "a"))
    assert not torch.equal(draw(0, "a"), draw(1, "a"))
    assert not torch.equal(draw(0, "a"), draw(0, "b"))


def test_gumbel_sampler_rows_do_not_depend_on_batch_mates() -> None:
    scores = torch.randn(2, 50, generator=torch.Generator().manual_seed(3))
    together = GumbelSampler(0.7, [row_generator(0, "a"), row_generator(0, "b")])(None, scores)
    alone = GumbelSampler(0.7, [row_generator(0, "a")])(None, scores[:1])
    assert torch.equal(together[0], alone[0])


def test_gumbel_sampler_samples_the_softmax() -> None:
    # Gumbel-max: argmax(logits/T + G) is distributed as softmax(logits/T)
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    sampler = GumbelSampler(1.0, [torch.Generator().manual_seed(0)])
    counts = torch.bincount(torch.stack([sampler(None, logits).argmax() for _ in range(4000)]), minlength=3)
    assert torch.allclose(counts / 4000, torch.softmax(logits[0], -1), atol=0.03)


class _FakeModel:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def save_pretrained(self, directory: Path) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        if self.fail:
            raise OSError("disk full")


class _FakeTokenizer:
    def save_pretrained(self, directory: Path) -> None:
        (Path(directory) / "tokenizer.json").write_text("{}")


def test_save_atomically_publishes_a_complete_copy(tmp_path: Path) -> None:
    target = tmp_path / "models" / "smollm2"
    model.save_atomically(_FakeModel(fail=False), _FakeTokenizer(), target)
    assert {p.name for p in target.iterdir()} == {"model.safetensors", "tokenizer.json", model.MANIFEST}
    assert model._is_valid_copy(target)
    assert [p.name for p in target.parent.iterdir()] == ["smollm2"]  # no temp dir left behind


def test_save_atomically_crash_leaves_no_copy(tmp_path: Path) -> None:
    target = tmp_path / "models" / "smollm2"
    with pytest.raises(OSError, match="disk full"):
        model.save_atomically(_FakeModel(fail=True), _FakeTokenizer(), target)
    assert list(target.parent.iterdir()) == []


def test_default_model_dir_follows_gecko_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GECKO_CACHE_DIR", str(tmp_path))
    assert model.default_model_dir() == tmp_path / "models" / "smollm2-135m-instruct"
