"""Listwise KL: the student's distribution over a query's candidates follows the teacher's.

Tamber et al. 2025 (arXiv 2502.19712) saw contrastive fine-tuning on synthetic queries degrade
strong embedders (BGE, GTE, E5) and fixed it with listwise KL distillation from a reranker plus a
small (0.1 x) contrastive term. Here the candidates of query i are its positive and its hard
negatives, c_i0 = p_i, c_i1..c_ik = n_i1..n_ik, and the teacher is the LLM's score of each::

    P_i = softmax(t_i / T)          (teacher, temperature T)
    Q_i = softmax(s(q_i, c_i) / τ)  (student, cosine over τ)
    loss = mean_i KL(P_i || Q_i) = mean_i Σ_j P_ij (log P_ij - log Q_ij)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TAMBER_CITATION = """
@misc{tamber2025conventional,
    title={Conventional Contrastive Learning Often Falls Short: Improving Dense Retrieval with Cross-Encoder Listwise Distillation and Synthetic Data},
    author={Tamber, Manveer Singh and Kazi, Suleman and Sourabh, Vivek and Lin, Jimmy},
    year={2025},
    eprint={2502.19712},
    archivePrefix={arXiv},
    url={https://arxiv.org/abs/2502.19712},
}
"""


def listwise_kl(q: Tensor, p: Tensor, n: Tensor, teacher: Tensor, temperature: float = 0.05,
                teacher_temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) over each query's [positive, negatives], averaged over queries.

    Args:
        q, p: queries and positives, [B, d]; n: hard negatives, [B, k, d].
        teacher: [B, 1 + k] teacher scores, positive first.
        temperature: τ for the student's cosines; teacher_temperature: T for the teacher's scores.

    >>> q = torch.tensor([[1.0, 0.0]]); p = torch.tensor([[1.0, 0.0]]); n = torch.tensor([[[0.0, 1.0]]])
    >>> round(listwise_kl(q, p, n, torch.tensor([[1.0, 0.0]]), temperature=1.0).item(), 6)  # same distribution
    0.0
    """
    if temperature <= 0 or teacher_temperature <= 0:
        raise ValueError(f"temperatures must be positive, got {temperature} and {teacher_temperature}")
    candidates = torch.cat([p[:, None, :], n], dim=1)
    student = torch.einsum("bd,bcd->bc", F.normalize(q, dim=-1), F.normalize(candidates, dim=-1)) / temperature
    target = F.log_softmax(teacher / teacher_temperature, dim=-1)
    return F.kl_div(F.log_softmax(student, dim=-1), target, log_target=True, reduction="batchmean")
