"""Distillation from the LLM's scores, added to Gecko's contrastive loss (`--distill`).

Gecko trains on one binary label per query: the positive the LLM picked. GPL (arXiv 2112.07577)
showed that on the same synthetic queries a student learns much more from the teacher's *scores*
than from its binary labels, and Tamber et al. 2025 (arXiv 2502.19712) that the contrastive term
then helps as a small regulariser. So the loss of a batch is::

    L = contrastive_weight · L_gecko (eq. 3)  +  weight · L_distill

with L_distill one of `margin_mse` (GPL) or `listwise_kl` (Tamber et al.) over each query's
positive and hard negatives, against the teacher scores of the row's `label`
([t_positive, t_negative_1, ..., t_negative_k], written by `gecko finetune` from the score field
that `mine-negatives` kept on each passage).
"""

from __future__ import annotations

from torch import Tensor

from gecko_cli.train.config import Distillation
from gecko_cli.train.losses.listwise_kl import listwise_kl
from gecko_cli.train.losses.margin_mse import margin_mse


def distill_loss(q: Tensor, p: Tensor, n: Tensor | None, labels: Tensor | None, spec: Distillation,
                 temperature: float) -> Tensor:
    """The distillation term (unweighted) for queries q [B, d], positives p [B, d], negatives n [B, k, d].

    `labels` are the teacher scores [B, 1 + k], positive first; `temperature` is the student's τ.
    """
    if n is None or labels is None:
        raise ValueError("distillation needs hard negatives and teacher scores (the rows' label column)")
    labels = labels.to(dtype=q.dtype, device=q.device)
    if labels.ndim != 2 or labels.shape != (q.shape[0], 1 + n.shape[1]):
        raise ValueError(f"teacher scores must be [B, 1 + k] = [{q.shape[0]}, {1 + n.shape[1]}], "
                         f"got {tuple(labels.shape)}")
    if spec.kind == "margin-mse":
        # The teacher's margins on the student's scale: QL sums differ by tens of nats, a student
        # margin cos/τ by a few units (τ = 0.05), so T divides the teacher as in listwise KL.
        scaled = labels / spec.teacher_temperature
        return margin_mse(q, p, n, scaled[:, 0], scaled[:, 1:], temperature)
    return listwise_kl(q, p, n, labels, temperature, spec.teacher_temperature)
