"""Pure parts of the embedded backend: prefix grouping, per-row sampling, atomic saving; the prompt
store of generation over a tiny random Llama (real KV caches, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from gecko_cli.llm.base import BaseBackend, Failure
from gecko_cli.llm.cache import CachedBackend, ResultCache
from gecko_cli.llm.local import model
from gecko_cli.llm.local.decode import PrefixDecoder, distinct_tokens
from gecko_cli.llm.local.kv import cache_kwarg
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


class _Tokenizer:
    eos_token_id = 0


def _tiny_decoder(**kwargs: int) -> PrefixDecoder:
    """A PrefixDecoder over a randomly initialised two-layer Llama: real KV caches, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    return PrefixDecoder(LlamaForCausalLM(config).eval(), _Tokenizer(), **kwargs)


def _window(passages: int, per_passage: int, first: int = 0) -> list[list[int]]:
    """Prompts shaped like `gecko generate`'s: shared instructions, a passage, a task line per sample."""
    return [[1] * 60 + [100 + p] + [(p * 7 + j) % 90 + 2 for j in range(200)] + [200 + n] * 20
            for p in range(first, first + passages) for n in range(per_passage)]


def test_prefill_from_stored_segments_equals_a_whole_forward() -> None:
    decoder = _tiny_decoder(store_tokens=10_000)
    prompts = [[5, 6, 7, 8], [5, 6, 7, 9, 9], [5, 6, 3], [5, 6, 7, 9, 9, 4], [5, 6, 7, 9, 9, 4]]
    for ids in prompts:
        kv, logits = decoder.prefill(ids)
        cache = DynamicCache(config=decoder.model.config)
        with torch.inference_mode():
            whole = decoder.model(input_ids=torch.tensor([ids]), use_cache=True,
                                  **{cache_kwarg(type(decoder.model)): cache})
        assert torch.allclose(logits, whole.logits[0, -1], atol=1e-5)
        for (k, v), layer in zip(kv, cache.layers):
            assert torch.allclose(k, layer.keys, atol=1e-5) and torch.allclose(v, layer.values, atol=1e-5)
    assert decoder.fed == 4 + 2 + 1 + 1 + 1  # only what no stored prompt held (at least one token each)
    assert decoder.store.size() == distinct_tokens(prompts) == 8  # every shared position held once


def test_a_store_sized_by_hold_keeps_a_whole_window_for_its_retry() -> None:
    decoder = _tiny_decoder(batch=64)
    prompts = _window(16, 8, first=16)
    for ids in _window(16, 8):  # the window before
        decoder.prefill(ids)
    decoder.hold(prompts)
    for ids in prompts:
        decoder.prefill(ids)
    fed = decoder.fed
    for ids in prompts:  # the retry: every prompt is still stored whole
        decoder.prefill(ids)
    assert decoder.fed - fed == len(prompts)  # one token each (its logits), not its passage
    assert decoder.store.size() <= decoder.store.max_tokens <= 64 * len(prompts[0])  # bounded by one batch
    # full copies of every prompt would not fit in the default store; the shared passages do
    assert sum(map(len, prompts)) > 16384 > distinct_tokens(prompts)


def test_hold_never_shrinks_the_store_and_stops_at_one_batch() -> None:
    decoder = PrefixDecoder(None, _Tokenizer(), batch=4, store_tokens=100)
    decoder.hold([[1] * 30, [2] * 30])
    assert decoder.store.max_tokens == 100  # 60 distinct + 30 < the floor
    decoder.hold([list(range(k * 50, k * 50 + 50)) for k in range(10)])
    assert decoder.store.max_tokens == 4 * 50  # 550 needed, one batch of 4 x 50 at most
    decoder.hold([[1, 2]])
    assert decoder.store.max_tokens == 200


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


@pytest.mark.parametrize("keep", [[0, 2, 3, 4], [1, 3], [4], [0, 1, 2, 3], [2, 4]])
def test_a_finished_row_leaves_the_batch_in_place_with_the_same_cache_as_a_gather(keep: list[int]) -> None:
    from gecko_cli.llm.local.batch import GrowingLayer, fill_holes

    keys, values = torch.randn(5, 3, 7, 4), torch.randn(5, 3, 7, 4)
    layer = GrowingLayer()
    layer.reserve(keys.clone(), values.clone(), extra=3)
    layer.update(torch.randn(5, 3, 1, 4), torch.randn(5, 3, 1, 4))  # a decoding step before the finish
    full_keys, full_values = layer.keys.clone(), layer.values.clone()
    order = fill_holes(5, keep)
    assert sorted(order) == keep
    layer.keep_rows(order)
    assert torch.equal(layer.keys, full_keys[order]) and torch.equal(layer.values, full_values[order])
    step = torch.randn(len(keep), 3, 1, 4)
    layer.update(step, step)  # the next step still writes in place after the rows that stay
    assert torch.equal(layer.keys[:, :, -1:], step) and layer.keys.shape == (len(keep), 3, 9, 4)


class _LineTokenizer:
    """Token t reads as a newline when t % 7 == 0, else as "a": an answer ends at its first line
    break (`answer_complete`), so rows of a random model finish after different numbers of steps."""

    eos_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join("\n" if t % 7 == 0 else "a" for t in ids)


def _answers(decoder: PrefixDecoder, prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Greedy answers (token ids) of every prompt, and the order in which they were reported."""
    from gecko_cli.llm.local.decode import Row

    rows: dict[int, Row] = {}

    def make(i: int, kv: list, logits: torch.Tensor) -> Row:
        rows[i] = Row(prompts[i], kv, logits, None)
        return rows[i]

    reported: list[int] = []
    decoder.generate(prompts, make, 0.0, 12, lambda i, text: reported.append(i))
    return [rows[i].out for i in range(len(prompts))], reported


def test_rows_joining_a_running_batch_answer_as_they_would_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuous batching: 9 prompts through a batch of 3, a finished row's place taken by the
    next prompt — some longer than the cache is wide, and more steps than the reserved columns —
    give each prompt the greedy answer it gets decoded alone."""
    from gecko_cli.llm.local import batch as batch_module

    relayouts: list[int] = []
    relayout = batch_module.DecodeBatch._relayout
    monkeypatch.setattr(batch_module.DecodeBatch, "_relayout",
                        lambda self, width: (relayouts.append(width), relayout(self, width))[1])
    monkeypatch.setattr(batch_module, "ROOM", 4)  # relayouts every few steps

    prompts = [[5, 6] + [(p * 13 + j) % 200 + 1 for j in range(4 + 3 * p)] for p in range(9)]
    alone = _tiny_decoder(batch=1)
    alone.tokenizer = _LineTokenizer()
    expected = [_answers(alone, [ids])[0][0] for ids in prompts]
    together = _tiny_decoder(batch=3)
    together.tokenizer = _LineTokenizer()
    answers, reported = _answers(together, prompts)
    assert answers == expected
    assert len(relayouts) > 2  # for wider newcomers and for columns run out
    assert sorted(reported) == list(range(9)) and reported != list(range(9))  # rows finished out of order
    assert len({len(a) for a in expected}) > 2  # the rows really did finish at different steps


def test_a_joining_row_is_right_aligned_and_the_common_padding_dropped() -> None:
    from gecko_cli.llm.local.batch import DecodeBatch

    def kv(n: int, fill: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.full((1, 1, n, 2), fill), torch.full((1, 1, n, 2), -fill))]

    batch = DecodeBatch(capacity=3, room=2)
    batch.join([kv(3, 1.0), kv(5, 2.0)])
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    layer = batch.cache.layers[0]
    assert layer.keys[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1] and layer.values[1, 0, :, 0].tolist() == [-2] * 5
    batch.leave([0])  # the long row finishes: two columns are padding for every row left
    batch.join([kv(6, 3.0)])  # wider than the cache: laid out again, the common padding dropped first
    assert batch.relayouts == 1 and batch.width == 6
    assert batch.mask.tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert batch.cache.layers[0].keys[:, 0, :, 0].tolist() == [[0, 0, 0, 1, 1, 1], [3] * 6]
    assert batch.position.tolist() == [3, 6]


def test_short_tails_prefilled_together_equal_whole_forwards() -> None:
    """`prefill_many`: a passage runs alone, its siblings' task lines and a retry (a prompt stored
    whole) run in one padded forward; every cache and logit equals a forward of the whole prompt,
    and each sibling is stored, so its retry runs one token."""
    decoder = _tiny_decoder(store_tokens=10_000)
    passage = [1] * 30 + list(range(2, 80))
    prompts = [passage + [90, 91, 92], passage + [93, 94], passage + [95, 96, 97, 98, 99], [7, 8, 9]]
    decoder.prefill(prompts[3])  # stored whole before: in the batch below it is a retry
    fed = decoder.fed
    results = decoder.prefill_many(prompts)
    assert decoder.fed - fed == len(prompts[0]) + 2 + 5 + 1
    for ids, (kv, logits) in zip(prompts, results):
        cache = DynamicCache(config=decoder.model.config)
        with torch.inference_mode():
            whole = decoder.model(input_ids=torch.tensor([ids]), use_cache=True, **{cache_kwarg(type(decoder.model)): cache})
        assert torch.allclose(logits, whole.logits[0, -1], atol=1e-5)
        for (k, v), layer in zip(kv, cache.layers):
            assert k.shape == layer.keys.shape
            assert torch.allclose(k, layer.keys, atol=1e-5) and torch.allclose(v, layer.values, atol=1e-5)
    fed = decoder.fed
    decoder.prefill_many(prompts[1:3])
    assert decoder.fed - fed == 2  # both stored whole: one token each


def test_the_same_prompt_twice_in_one_prefill_is_stored_once() -> None:
    decoder = _tiny_decoder(store_tokens=10_000)
    passage = [1] * 30 + list(range(2, 80))
    decoder.prefill(passage + [90])
    size = decoder.store.size()
    decoder.prefill_many([passage + [91, 92], passage + [91, 92], passage + [93]])
    assert decoder.store.size() == size + 2 + 1
