"""Gecko's contrastive loss (eq. 3 of arXiv 2403.20327): the pure function and the sentence-transformers loss.

`gecko_infonce` is the maths on plain tensors; `GeckoLoss` plugs it into the sentence-transformers
trainer (which runs on accelerate). The helpers here are shared with `CachedGeckoLoss`
(`cached_gecko.py`), which computes the same loss with GradCache. Only the training commands import
this package, so torch and sentence-transformers are imported at the top.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from gecko_cli.train.distributed import gather_rows, world_size
from gecko_cli.train.config import Distillation
from gecko_cli.train.losses.distill import distill_loss

GECKO_CITATION = """
@misc{lee2024gecko,
    title={Gecko: Versatile Text Embeddings Distilled from Large Language Models},
    author={Jinhyuk Lee and Zhuyun Dai and Xiaoqi Ren and Blair Chen and Daniel Cer and Jeremy R. Cole and Kai Hui and Michael Boratko and Rajvi Kapadia and Wen Ding and Yi Luan and Sai Meher Karthik Duddu and Gustavo Hernandez Abrego and Weiqiang Shi and Nithi Gupta and Aditya Kusupati and Prateek Jain and Siddhartha Reddy Jonnalagadda and Ming-Wei Chang and Iftekhar Naim},
    year={2024},
    eprint={2403.20327},
    archivePrefix={arXiv},
    primaryClass={cs.CL},
    url={https://arxiv.org/abs/2403.20327},
}
"""


def check_shapes(q: Tensor, p: Tensor, n: Tensor | None) -> None:
    """Raise ValueError unless q and p are [B, d] and n (if any) is [B, k, d]."""
    if q.ndim != 2 or q.shape != p.shape:
        raise ValueError(f"q and p must both be [B, d], got {tuple(q.shape)} and {tuple(p.shape)}")
    if n is not None and (n.ndim != 3 or n.shape[0] != q.shape[0] or n.shape[2] != q.shape[1]):
        raise ValueError(f"n must be [B, k, d] = [{q.shape[0]}, k, {q.shape[1]}], got {tuple(n.shape)}")


def row_losses(
    q: Tensor, p: Tensor, n_rows: Tensor | None, begin: int, end: int, temperature: float, same_tower: bool
) -> Tensor:
    """Eq. 3's per-query terms -log(exp(s(q_i,p_i)/τ) / Z_i) for queries begin..end-1, unreduced.

    q and p hold every query and positive that enter the denominators (the whole batch, or every
    process's batch when gathered); n_rows holds the hard negatives of queries begin..end-1 only,
    [end - begin, k, d], because query i's denominator holds its own hard negatives and no other's.
    Only rows begin..end-1 of the score matrix are built, so the cached loss can bound the memory of
    the loss stage as well as of the embedding stage. Normalising here (not once by the caller) lets
    every row chunk run its own backward pass without holding on to a shared graph.
    """
    q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    rows = torch.arange(begin, end, device=q.device)
    q_rows = q[begin:end]
    to_positives = q_rows @ p.T  # [r, B]: own positive p_i and every in-batch positive p_j
    blocks = [to_positives]
    if same_tower:
        # Same-tower negatives: the other queries q_j. s(q_i, q_i) = 1 would swamp Z_i, so mask it.
        is_self = F.one_hot(rows, num_classes=q.shape[0]).bool()
        blocks.append((q_rows @ q.T).masked_fill(is_self, float("-inf")))
    if n_rows is not None:
        # Hard negatives: each query sees only its own n_i, never another query's (the paper's choice).
        blocks.append(torch.einsum("rd,rkd->rk", q_rows, F.normalize(n_rows, dim=-1)))
    logits = torch.cat(blocks, dim=1) / temperature
    positive = to_positives[torch.arange(end - begin, device=q.device), rows] / temperature
    return logits.logsumexp(dim=1) - positive


def gecko_infonce(
    q: Tensor,
    p: Tensor,
    n: Tensor | None = None,
    temperature: float = 0.05,
    same_tower: bool = True,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Gecko's contrastive loss (arXiv 2403.20327, eq. 3), averaged over the batch.

    With cosine similarity s and temperature τ, for query i::

        Z_i = Σ_j exp(s(q_i, p_j)/τ) + Σ_{j≠i} exp(s(q_i, q_j)/τ) + Σ_m exp(s(q_i, n_im)/τ)
        loss = mean_i -log(exp(s(q_i, p_i)/τ) / Z_i)

    The middle sum (same-tower negatives) is dropped when ``same_tower`` is False.

    Args:
        q: queries, [B, d].
        p: their positives, [B, d].
        n: hard negatives, [B, k, d]; row i only enters query i's denominator.
        temperature: τ.
        same_tower: include the other queries of the batch as negatives.
        reduction: "mean" (the loss) or "none" (the [B] per-query terms, for inspection).

    >>> e = torch.eye(2)
    >>> round(gecko_infonce(e, e, temperature=1.0).item(), 4)  # log(e + 2) - 1
    0.5514
    """
    check_shapes(q, p, n)
    if temperature <= 0 or reduction not in ("mean", "none"):
        raise ValueError(f"need temperature > 0 and reduction 'mean' or 'none', got {temperature}, {reduction!r}")
    losses = row_losses(q, p, n, 0, q.shape[0], temperature, same_tower)
    return losses.mean() if reduction == "mean" else losses


def stack_negatives(columns: Sequence[Tensor]) -> Tensor | None:
    """[neg_1, ..., neg_k] columns of [B, d] -> one [B, k, d] tensor, or None when k = 0."""
    return torch.stack(list(columns), dim=1) if columns else None


def denominator_rows(q: Tensor, p: Tensor, gather: bool) -> tuple[Tensor, Tensor, int, float]:
    """This process's q, p -> (the q, p every denominator sees, our first row there, weight per row).

    Gathered, the weight is world_size / total rows, so that DDP's gradient average gives the
    gradient of the mean over every process's rows; not gathered, it is 1 / local rows (the mean).
    Hard negatives are never gathered: eq. 3 puts query i's own negatives only in Z_i.
    """
    if not gather:
        return q, p, 0, 1 / q.shape[0]
    (q_all, p_all), offset, total = gather_rows([q, p])
    return q_all, p_all, offset, world_size() / total


def distill_config(spec: Distillation | None) -> dict[str, Any]:
    """The distillation settings for a loss's config dict (nothing without distillation)."""
    if spec is None:
        return {}
    return {"distill": spec.kind, "distill_weight": spec.weight, "contrastive_weight": spec.contrastive_weight,
            "teacher_temperature": spec.teacher_temperature}


class GeckoLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.05,
        same_tower: bool = True,
        gather_across_devices: bool = True,
        distill: Distillation | None = None,
    ) -> None:
        """
        Gecko's contrastive loss (Lee et al. 2024, `arXiv 2403.20327 <https://arxiv.org/abs/2403.20327>`_, eq. 3):
        InfoNCE over cosine similarities divided by a temperature τ, where the denominator for query i holds
        its positive, every other in-batch positive, the other queries of the batch ("same-tower negatives")
        and only its *own* hard negative(s)::

            Z_i = Σ_j exp(s(q_i, p_j)/τ) + Σ_{j≠i} exp(s(q_i, q_j)/τ) + Σ_m exp(s(q_i, n_im)/τ)
            L = 1/B Σ_i -log(exp(s(q_i, p_i)/τ) / Z_i)

        It differs from :class:`MultipleNegativesRankingLoss` in two ways: the same-tower term, and
        that another query's hard negatives are not negatives for query i.

        Args:
            model: SentenceTransformer model.
            temperature: τ. ``0.05`` is ``scale=20`` in sentence-transformers terms; the paper does not
                publish its value.
            same_tower: include the other queries of the batch in the denominator (the paper does).
            gather_across_devices: in data-parallel training (DDP, e.g. ``accelerate launch``), gather
                every process's queries and positives, with gradients, so the in-batch and same-tower
                negatives are the global batch's: N processes of B rows train exactly like one of N·B
                rows. A no-op in a single process. (sentence-transformers' name; its losses default
                to False.)
            distill: add distillation from teacher scores (``distill.py``: MarginMSE or listwise KL,
                weighted against this loss); the rows then need a ``label`` column of teacher scores.

        Inputs:
            +-------------------------------------------------+--------+
            | Inputs                                          | Labels |
            +=================================================+========+
            | (anchor, positive) pairs                        | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_k) | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_k) | [1+k]  |
            | with ``distill``                                | scores |
            +-------------------------------------------------+--------+

        Recommendations:
            - Use ``BatchSamplers.NO_DUPLICATES``: a duplicate query or positive in the batch is a false negative.

        Relations:
            - :class:`CachedGeckoLoss` computes the same loss and gradients with GradCache, so the batch
              size is not bounded by memory.

        Example:
            ::

                loss = GeckoLoss(model)  # then MatryoshkaLoss(model, loss, [768, 256]), see build_loss
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = model
        self.temperature = temperature
        self.same_tower = same_tower
        self.gather_across_devices = gather_across_devices
        self.distill = distill

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        # Like MultipleNegativesRankingLoss: the positive and negative columns share one forward pass.
        # Faster per step than a forward per column (the notes of benchmarks/results/train_bench.json).
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """[anchor, positive, neg_1, ..., neg_k] embeddings of [B, d] -> scalar loss; labels (teacher
        scores) are used only with `distill`."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected (anchor, positive, *negatives) columns, got {len(embeddings)}")
        q, p, n = embeddings[0], embeddings[1], stack_negatives(embeddings[2:])
        check_shapes(q, p, n)
        q_all, p_all, offset, weight = denominator_rows(q, p, self.gather_across_devices)
        losses = row_losses(q_all, p_all, n, offset, offset + q.shape[0], self.temperature, self.same_tower)
        contrastive = losses.sum() * weight
        if self.distill is None:
            return contrastive
        return (self.distill.contrastive_weight * contrastive
                + self.distill.weight * distill_loss(q, p, n, labels, self.distill, self.temperature))

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "same_tower": self.same_tower,
                "gather_across_devices": self.gather_across_devices, **distill_config(self.distill)}

    @property
    def citation(self) -> str:
        return GECKO_CITATION
