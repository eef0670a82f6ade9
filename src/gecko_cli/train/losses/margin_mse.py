"""MarginMSE: the student learns the teacher's score *margins* between a positive and a negative.

GPL (Wang et al. 2022, arXiv 2112.07577) distils a cross-encoder into a dense retriever this way,
after Hofstätter et al. 2020 (arXiv 2010.02666); on SciFact it is what made GPL's synthetic
queries pay off (its Table 9). Here the teacher is the LLM's reranking score (`gecko rerank`'s QL,
or a fused score) kept by `mine-negatives`. The student score is a scaled cosine, cos / τ, so that
its margins live on the scale of log-probabilities rather than within [-2, 2].

For query i with positive p_i, hard negatives n_i1..n_ik and teacher scores t_i+, t_i1..t_ik::

    loss = mean_{i,m} ( (s(q_i, p_i) - s(q_i, n_im)) / τ  -  (t_i+ - t_im) )^2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GPL_CITATION = """
@inproceedings{wang2022gpl,
    title={GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense Retrieval},
    author={Wang, Kexin and Thakur, Nandan and Reimers, Nils and Gurevych, Iryna},
    booktitle={NAACL},
    year={2022},
    url={https://arxiv.org/abs/2112.07577},
}
"""


def margin_mse(q: Tensor, p: Tensor, n: Tensor, teacher_positive: Tensor, teacher_negatives: Tensor,
               temperature: float = 0.05) -> Tensor:
    """MarginMSE over every (positive, negative) pair of the batch.

    Args:
        q, p: queries and positives, [B, d]; n: hard negatives, [B, k, d].
        teacher_positive: [B]; teacher_negatives: [B, k] (same scale as each other).
        temperature: τ, the student's cosine is divided by it.

    >>> q = torch.tensor([[1.0, 0.0]]); p = torch.tensor([[1.0, 0.0]]); n = torch.tensor([[[0.0, 1.0]]])
    >>> margin_mse(q, p, n, torch.tensor([3.0]), torch.tensor([[1.0]]), temperature=1.0).item()  # (1 - 0 - 2)^2
    1.0
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    q, p, n = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1)
    student = ((q * p).sum(-1)[:, None] - torch.einsum("bd,bkd->bk", q, n)) / temperature
    teacher = teacher_positive[:, None] - teacher_negatives
    return ((student - teacher) ** 2).mean()
