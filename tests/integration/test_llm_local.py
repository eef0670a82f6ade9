"""The embedded LLM for real: shared-prefix scores equal a naive one-pass computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gecko_cli.llm import local
from gecko_cli.llm.base import LLMBackend
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow

PASSAGE = ("Read the passage, then write a query it answers.\n\nPassage: The Eiffel Tower is a wrought-iron "
           "lattice tower in Paris, France. It was completed in 1889 for the World's Fair.\nQuery:")
CONTINUATIONS = [" paris", " eiffel tower height", " when was the eiffel tower built and for which event",
                 " what material is the tower in paris made of"]
LABELS = [" Yes", " No"]


@pytest.fixture(scope="module")
def llm() -> local.LocalBackend:
    """Loaded once per module, into the session's GECKO_CACHE_DIR (GGUF on a cold cache)."""
    backend = local.LocalBackend()
    backend.model  # noqa: B018 (loads)
    return backend


def naive_ql(llm: local.LocalBackend, prefix: str, continuation: str) -> float:
    """Tokenize separately, concatenate ids, one forward pass, full-vocabulary log-softmax."""
    head, tail = llm.encode(prefix), llm.encode(continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(llm.model(torch.tensor([head + tail])).logits[0].float(), dim=-1)
    return sum(logprobs[len(head) + j - 1, token].item() for j, token in enumerate(tail))


def naive_labels(llm: local.LocalBackend, ids: list[int], labels: list[str] = LABELS) -> dict[str, float]:
    with torch.no_grad():
        logprobs = torch.log_softmax(llm.model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    return {label: logprobs[llm.encode(label)[0]].item() for label in labels}


def test_backend_satisfies_the_protocol(llm: local.LocalBackend) -> None:
    assert isinstance(llm, LLMBackend)
    assert llm.name == "local" and "SmolLM2-135M-Instruct" in llm.model_id


def test_shared_prefix_ql_equals_naive(llm: local.LocalBackend) -> None:
    assert len({len(llm.encode(c)) for c in CONTINUATIONS}) == len(CONTINUATIONS)  # different lengths
    shared = llm.query_likelihood([PASSAGE] * len(CONTINUATIONS), CONTINUATIONS)
    naive = [naive_ql(llm, PASSAGE, c) for c in CONTINUATIONS]
    assert shared == pytest.approx(naive, abs=1e-4)
    assert all(s < 0 for s in shared)


def test_query_likelihood_groups_mixed_prefixes_and_keeps_order(llm: local.LocalBackend) -> None:
    # the same instruction, another passage: its prefix cache starts from PASSAGE's
    other = PASSAGE.split("Passage:")[0] + "Passage: Water boils at 100 degrees Celsius at sea level.\nQuery:"
    prefixes = [PASSAGE, other, PASSAGE, other, "Hi"]
    continuations = [" tower", " boiling point of water", CONTINUATIONS[2], " sea", " there"]
    got = llm.query_likelihood(prefixes, continuations)
    assert got == pytest.approx([naive_ql(llm, p, c) for p, c in zip(prefixes, continuations)], abs=1e-4)


def test_label_logprobs_equal_naive(llm: local.LocalBackend) -> None:
    prompts = [f"{PASSAGE}{c}\nDoes the passage answer the query? Answer:" for c in CONTINUATIONS]
    prompts += ["Is the sky blue? Answer:", prompts[0]]  # an unrelated prompt; a duplicate (empty tail)
    got = llm.label_logprobs(prompts, LABELS)
    for row, prompt in zip(got, prompts):
        assert row == pytest.approx(naive_labels(llm, llm.encode(prompt)), abs=1e-4)


def test_score_shared_ql_and_rc_equal_naive_full_prompts(llm: local.LocalBackend, monkeypatch) -> None:
    # the shipped prompts on real SciFact pairs; QL and RC of a passage from one passage cache
    from gecko_cli.llm.scoring import NO, YES, ScoringPrompts

    prompts = ScoringPrompts.default()
    passages = [json.loads(line) for line in (EXAMPLES / "passages.jsonl").read_text().splitlines()[:3]]
    passages = [dict(p, text=p["text"][:500]) for p in passages]  # ~100 tokens each: quick
    queries = ["white matter development in newborns", "what does diffusion tensor imaging measure?", "brain"]
    # the passage that sorts between the other two gets one query: it runs alone, from the last cache
    order = sorted(range(3), key=lambda k: llm.encode(prompts.ql_pair("", passages[k])[0]))
    pairs = [(q, passages[k]) for q in queries for k in (order[0], order[2])] + [(queries[1], passages[order[1]])]
    ql_pairs = [prompts.ql_pair(q, p) for q, p in pairs]
    rc_prompts = [prompts.rc_prompt(q, p) for q, p in pairs]
    labels = list(YES + NO)
    ran: list[list[int]] = []
    forward_from = llm._forward_from
    monkeypatch.setattr(llm, "_forward_from", lambda ids, *a: ran.append(ids) or forward_from(ids, *a))
    heard: list[tuple[str, int]] = []
    calls = llm.meter.calls
    ql, rc = llm.score_shared([p for p, _ in ql_pairs], [c for _, c in ql_pairs], rc_prompts, labels,
                              on_result=lambda kind, i, value: heard.append((kind, i)))
    assert ql == pytest.approx([naive_ql(llm, p, c) for p, c in ql_pairs], abs=1e-4)
    for row, prompt in zip(rc, rc_prompts):
        assert row == pytest.approx(naive_labels(llm, llm.encode(prompt), labels), abs=1e-4)
    assert sorted(heard) == sorted([("ql", i) for i in range(7)] + [("labels", i) for i in range(7)])
    assert llm.meter.calls - calls == 14  # counted as the 14 naive calls it stands for
    # two passage prefixes run once each, the lone pair once, whole: 3 forwards before the tails
    assert len(ran) == 3 and llm.encode(rc_prompts[-1]) in ran
    # every QL sequence rides in its RC prompt's job: 7 jobs for 14 results
    ql_ids = [llm.encode(p) + llm.encode(c) for p, c in ql_pairs]
    jobs, owners = local.merge_ql_into_rc(ql_ids, [len(llm.encode(p)) for p, _ in ql_pairs],
                                           llm.encode_many(rc_prompts))
    assert len(jobs) == 7 and all(None not in owner for owner in owners)


def test_generate_json_returns_text_per_prompt_and_seed(llm: local.LocalBackend) -> None:
    one_shot = [{"role": "user", "content": 'Passage: Python has a global interpreter lock.\nReply with JSON '
                 '{"query": ...}: a search query this passage answers.'},
                {"role": "assistant", "content": '{"query": "why does python have a gil"}'},
                {"role": "user", "content": "Passage: The Eiffel Tower was completed in 1889.\nSame format."}]
    other = [{"role": "user", "content": "Say hello."}]
    batch = llm.generate_json([one_shot, other], {"type": "object"}, temperature=0.7, seed=0, max_new_tokens=16)
    alone = llm.generate_json([one_shot], {"type": "object"}, temperature=0.7, seed=0, max_new_tokens=16)
    assert len(batch) == 2 and all(isinstance(t, str) and t.strip() for t in batch)
    assert alone[0] == batch[0]  # a prompt's sample does not depend on its batch mates


def test_a_seed_per_prompt_samples_as_separate_calls_would(llm: local.LocalBackend) -> None:
    """One call carrying several sample seeds (all K samples of a passage) gives each prompt what a
    call with its seed alone gives it, on the shared-prefix path and the naive one."""
    ask = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    prompts = [ask("Name a fruit and say why you like it."), ask("Name a fruit and say why you like it."),
               ask("Describe the sea in one sentence.")]
    seeds = [1, 2, 3]
    naive = local.LocalBackend(share_prefixes=False)
    naive._model, naive._tokenizer = llm.model, llm.tokenizer
    for backend in (llm, naive):
        together = backend.generate_json(prompts, {"type": "object"}, temperature=0.7, seed=seeds,
                                         max_new_tokens=24, attempt=1)
        alone = [backend.generate_json([p], {"type": "object"}, temperature=0.7, seed=s, max_new_tokens=24,
                                       attempt=1)[0] for p, s in zip(prompts, seeds)]
        assert together == alone
        assert together[0] != together[1]  # the same prompt, two seeds: two samples
        assert together[0] == backend.generate_json(prompts[:1], {"type": "object"}, temperature=0.7, seed=2,
                                                    max_new_tokens=24)[0]  # attempt 1 samples with seed + 1


def _generate_prompts(count: int, per_passage: int) -> list[list[dict[str, str]]]:
    from gecko_cli.llm import generation as rules
    from gecko_cli.llm.scoring import load_prompt

    template = rules.parse_template(load_prompt("generate"))
    types = rules.default_task_types()
    passages = [json.loads(line) for line in (EXAMPLES / "passages.jsonl").read_text().splitlines()[:count]]
    return [rules.render(template, p, t) for p in passages for t in rules.sample_tasks(types, 0, str(p["id"]), per_passage)]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_shared_prefix_generation_equals_the_naive_path(llm: local.LocalBackend, temperature: float) -> None:
    """Prefix sharing and early stop change the cost, not the answer: the same queries as
    `model.generate` on whole prompts (the naive path), greedy and sampled."""
    from gecko_cli.llm import generation as rules

    prompts = _generate_prompts(4, 2)
    naive = local.LocalBackend(share_prefixes=False)
    naive._model, naive._tokenizer = llm.model, llm.tokenizer
    fed = llm.decoder.fed
    shared = llm.generate_json(prompts, rules.SCHEMA, temperature=temperature, seed=3, max_new_tokens=48)
    plain = naive.generate_json(prompts, rules.SCHEMA, temperature=temperature, seed=3, max_new_tokens=48)
    assert [rules.parse_query(s) for s in shared] == [rules.parse_query(s) for s in plain]
    assert all(s.startswith('{"query": "') for s in shared)  # the answer's start is part of the text
    whole = sum(len(ids) for ids in llm.encode_many([llm.tokenizer.apply_chat_template(
        p[:-1], add_generation_prompt=True, tokenize=False) for p in prompts]))
    assert llm.decoder.fed - fed < whole * 0.6  # the shared prefixes ran once


def test_bfloat16_runs_the_same_machinery_and_says_so(llm: local.LocalBackend) -> None:
    """`--llm-dtype bfloat16`: the weights and caches in bf16, the texts still usable queries, the
    scores near float32's (bf16 keeps 8 bits of mantissa), and a model id of its own so its
    answers never share cache entries with float32's."""
    from gecko_cli.llm import generation as rules

    bf16 = local.LocalBackend(dtype="bfloat16")
    assert bf16.model_id == llm.model_id + "@bfloat16" and bf16.model.dtype == torch.bfloat16
    assert local.LocalBackend(dtype="float32").model_id == llm.model_id
    answers = bf16.generate_json(_generate_prompts(2, 2), rules.SCHEMA, temperature=0.7, seed=3, max_new_tokens=48)
    assert len(answers) == 4 and sum(rules.parse_query(a) is not None for a in answers) >= 3
    assert bf16.decoder.fed > 0  # the shared-prefix path ran
    scores = bf16.query_likelihood([PASSAGE] * len(CONTINUATIONS), CONTINUATIONS)
    assert scores == pytest.approx(llm.query_likelihood([PASSAGE] * len(CONTINUATIONS), CONTINUATIONS), abs=1.0)


def test_dequantized_copy_reloads_with_identical_scores(llm: local.LocalBackend, tmp_path: Path) -> None:
    if llm.load_source == "gguf":  # a cold cache: the fixture's load must have published the copy
        assert local._is_valid_copy(local.default_model_dir())
    copy = tmp_path / "smollm2"
    local.save_atomically(llm.model, llm.tokenizer, copy)
    reloaded = local.LocalBackend(copy)
    prefixes = [PASSAGE] * len(CONTINUATIONS)
    got = reloaded.query_likelihood(prefixes, CONTINUATIONS)
    assert reloaded.load_source == "cache"
    assert got == pytest.approx(llm.query_likelihood(prefixes, CONTINUATIONS), abs=1e-6)
    assert reloaded.count_tokens("hello world") == llm.count_tokens("hello world") == 2


def test_a_damaged_copy_is_moved_aside_and_made_again_from_the_gguf(llm: local.LocalBackend, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Garbled weights in the copy under the cache (a crash, a bad copy between machines): one
    warning line, the copy kept aside as `.corrupt-<time>`, and the model as good as before. The
    first copy is what a first load saves (`save_atomically` of the GGUF's model), made from the
    fixture's model, since dequantizing costs most of a minute; the repair pays that once."""
    monkeypatch.setenv("GECKO_CACHE_DIR", str(tmp_path / "cache"))
    copy = local.default_model_dir()
    local.save_atomically(llm.model, llm.tokenizer, copy)
    assert local.LocalBackend().model is not None  # the copy loads as it is
    (copy / "model.safetensors").write_bytes(b"\x00garbage" * 4096)
    capsys.readouterr()

    healed = local.LocalBackend()
    prefixes = [PASSAGE] * len(CONTINUATIONS)
    got = healed.query_likelihood(prefixes, CONTINUATIONS)

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gecko: warning:")]
    (aside,) = [p for p in copy.parent.iterdir() if p.name.startswith(f"{copy.name}.corrupt-")]
    assert len(warnings) == 1 and warnings[0].startswith(f"gecko: warning: {copy} was damaged (")
    assert warnings[0].endswith(f"); moved aside to {aside}, making it again from the GGUF")
    assert (aside / "model.safetensors").read_bytes() == b"\x00garbage" * 4096  # kept for a post-mortem
    assert healed.load_source == "gguf" and local._is_valid_copy(copy)
    assert got == pytest.approx(llm.query_likelihood(prefixes, CONTINUATIONS), abs=1e-6)
    again = local.LocalBackend()
    assert again.query_likelihood(prefixes, CONTINUATIONS) == pytest.approx(got, abs=1e-6)
    assert again.load_source == "cache"  # the copy made again loads
