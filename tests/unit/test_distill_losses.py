"""The distillation losses against hand arithmetic (issue 14: the LLM's scores as the teacher)."""

from __future__ import annotations

import math

import pytest
import torch

from gecko_cli.train.losses.listwise_kl import listwise_kl
from gecko_cli.train.losses.margin_mse import margin_mse

# Two queries, one hard negative each; cosines by hand (norms differ on purpose):
#   s(q1,p1) = 1, s(q1,n1) = 0;   s(q2,p2) = 3/5, s(q2,n2) = 4/5
Q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[1.0, 0.0], [4.0, 3.0]])
N = torch.tensor([[[0.0, 5.0]], [[3.0, 4.0]]])


def test_margin_mse_matches_hand_arithmetic() -> None:
    tau = 0.5  # student margins: (1 - 0) / 0.5 = 2 and (3/5 - 4/5) / 0.5 = -0.4
    teacher_pos, teacher_neg = torch.tensor([-10.0, -12.0]), torch.tensor([[-13.0], [-11.0]])  # margins 3, -1
    expected = ((2 - 3) ** 2 + (-0.4 - (-1)) ** 2) / 2
    assert margin_mse(Q, P, N, teacher_pos, teacher_neg, temperature=tau).item() == pytest.approx(expected)


def test_margin_mse_ignores_a_shift_of_the_teacher_scores() -> None:
    args = (torch.tensor([-10.0, -12.0]), torch.tensor([[-13.0], [-11.0]]))
    shifted = (args[0] + 7, args[1] + 7)
    assert margin_mse(Q, P, N, *args).item() == pytest.approx(margin_mse(Q, P, N, *shifted).item())


def test_listwise_kl_matches_hand_arithmetic() -> None:
    tau, big_t = 0.5, 2.0
    teacher = torch.tensor([[0.0, -2.0], [1.0, 1.0]])  # /T: [0, -1] and [0.5, 0.5]

    def softmax(xs: list[float]) -> list[float]:
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log(x / y) for x, y in zip(a, b))

    p1, p2 = softmax([0.0, -1.0]), softmax([0.5, 0.5])
    s1, s2 = softmax([1 / tau, 0 / tau]), softmax([0.6 / tau, 0.8 / tau])
    expected = (kl(p1, s1) + kl(p2, s2)) / 2
    got = listwise_kl(Q, P, N, teacher, temperature=tau, teacher_temperature=big_t).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_listwise_kl_is_zero_only_when_the_student_agrees() -> None:
    agree = torch.tensor([[1 / 0.5, 0.0], [0.6 / 0.5, 0.8 / 0.5]])  # the student's own logits
    assert listwise_kl(Q, P, N, agree, temperature=0.5).item() == pytest.approx(0.0, abs=1e-6)
    assert listwise_kl(Q, P, N, -agree, temperature=0.5).item() > 0.1


def test_gradients_reach_the_student() -> None:
    q = Q.clone().requires_grad_()
    teacher = torch.tensor([[0.0, -2.0], [1.0, 1.0]])
    (listwise_kl(q, P, N, teacher) + margin_mse(q, P, N, teacher[:, 0], teacher[:, 1:])).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.parametrize("fn, args", [(margin_mse, (torch.zeros(2), torch.zeros(2, 1))),
                                      (listwise_kl, (torch.zeros(2, 2),))])
def test_a_non_positive_temperature_is_refused(fn, args) -> None:
    with pytest.raises(ValueError):
        fn(Q, P, N, *args, temperature=0.0)
