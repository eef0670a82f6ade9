"""Pure parts of the embedded backend: prefix grouping, per-row sampling, atomic saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gecko_cli.llm import local
from gecko_cli.llm.local import GumbelSampler, plan_groups, row_generator


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
    local.save_atomically(_FakeModel(fail=False), _FakeTokenizer(), target)
    assert {p.name for p in target.iterdir()} == {"model.safetensors", "tokenizer.json", local.MANIFEST}
    assert local._is_valid_copy(target)
    assert [p.name for p in target.parent.iterdir()] == ["smollm2"]  # no temp dir left behind


def test_save_atomically_crash_leaves_no_copy(tmp_path: Path) -> None:
    target = tmp_path / "models" / "smollm2"
    with pytest.raises(OSError, match="disk full"):
        local.save_atomically(_FakeModel(fail=True), _FakeTokenizer(), target)
    assert list(target.parent.iterdir()) == []


def test_default_model_dir_follows_gecko_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GECKO_CACHE_DIR", str(tmp_path))
    assert local.default_model_dir() == tmp_path / "models" / "smollm2-135m-instruct"
