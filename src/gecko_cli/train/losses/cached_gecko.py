"""`CachedGeckoLoss`: Gecko's loss (eq. 3) with GradCache, so the batch size is not bounded by memory.

Same loss value and gradients as `GeckoLoss` (tests/unit/test_training.py checks both), built on
sentence-transformers' `CachedLossMixin`, the machinery behind `CachedMultipleNegativesRankingLoss`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses import CachedLossMixin, has_static_embedding_input
from torch import Tensor, nn

from gecko_cli.train.config import Distillation
from gecko_cli.train.losses.distill import distill_loss
from gecko_cli.train.losses.gecko import (GECKO_CITATION, check_shapes, denominator_rows, distill_config,
                                          row_losses, stack_negatives)

GRADCACHE_CITATION = """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


class CachedGeckoLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.05,
        same_tower: bool = True,
        mini_batch_size: int = 32,
        show_progress_bar: bool = False,
        gather_across_devices: bool = True,
        distill: Distillation | None = None,
    ) -> None:
        """
        :class:`GeckoLoss` with GradCache (Gao et al. 2021, `arXiv 2101.06983 <https://arxiv.org/abs/2101.06983>`_):
        the same loss value and gradients, with memory bounded by ``mini_batch_size`` instead of the batch size.

        (1) embed every column in mini-batches without gradients, keeping each mini-batch's RNG state;
        (2) compute eq. 3 on the whole batch (in chunks of ``mini_batch_size`` queries) and back-propagate it
            to the embeddings only, caching their gradients;
        (3) in the backward pass, re-embed each mini-batch with gradients under its saved RNG state (so
            dropout draws the same masks) and back-propagate the cached gradients into the model.

        The three steps are sentence-transformers' ``CachedLossMixin`` (the machinery behind
        :class:`CachedMultipleNegativesRankingLoss`); this class supplies ``calculate_loss``. Because it
        sets ``uses_gradient_cache``, :class:`MatryoshkaLoss` wraps it by decorating ``calculate_loss``
        (truncating the cached embeddings) rather than the model's forward, so the two compose.

        Args:
            model: SentenceTransformer model (not a StaticEmbedding one: its inputs cannot be sliced).
            temperature: τ, as in :class:`GeckoLoss`.
            same_tower: as in :class:`GeckoLoss`.
            mini_batch_size: rows embedded (and rows of the score matrix built) at a time.
            show_progress_bar: show the mini-batch progress bars of sentence-transformers.
            gather_across_devices: as in :class:`GeckoLoss`; the cached embeddings are gathered.
            distill: as in :class:`GeckoLoss`; the distillation term is computed on the whole batch's
                cached embeddings (it is per query, so it needs no chunking).
        """
        super().__init__()
        if has_static_embedding_input(model):
            raise ValueError("CachedGeckoLoss cannot slice a StaticEmbedding model's inputs; use GeckoLoss.")
        if temperature <= 0 or mini_batch_size < 1:
            raise ValueError(f"need temperature > 0 and mini_batch_size >= 1, got {temperature}, {mini_batch_size}")
        self.model = model
        self.temperature = temperature
        self.same_tower = same_tower
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = show_progress_bar
        self.gather_across_devices = gather_across_devices
        self.distill = distill

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise ValueError(f"Expected (anchor, positive, *negatives) columns, got {len(sentence_features)}")
        return self.forward_cached(sentence_features, labels)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """Per-column lists of mini-batch embeddings -> eq. 3 over the whole batch.

        With ``with_backward`` each chunk of query rows is back-propagated as soon as it is computed
        and the detached total is returned, so only one chunk of the score matrix is alive at a time.
        """
        q, p = torch.cat(reps[0]), torch.cat(reps[1])
        n = stack_negatives([torch.cat(column) for column in reps[2:]])
        check_shapes(q, p, n)
        q_all, p_all, offset, weight = denominator_rows(q, p, self.gather_across_devices)
        if with_backward:
            # The chunks back-propagate into detached copies; their gradients then cross the gather
            # once, at the end. Back-propagating every chunk through it would cost a collective per
            # chunk, and hang when processes hold different numbers of chunks.
            gathered = [q_all, p_all]
            q_all, p_all = (tensor.detach().requires_grad_() for tensor in gathered)
        scale = 1.0 if self.distill is None else self.distill.contrastive_weight
        chunks = []
        for begin in range(0, q.shape[0], self.mini_batch_size):
            end = min(begin + self.mini_batch_size, q.shape[0])
            rows = (offset + begin, offset + end)
            # Sum · weight (not mean) so the chunks add up to the batch mean exactly.
            chunk = row_losses(q_all, p_all, None if n is None else n[begin:end], *rows,
                                self.temperature, self.same_tower).sum() * (weight * scale)
            if with_backward:
                chunk.backward()
                chunk = chunk.detach()
            chunks.append(chunk)
        if self.distill is not None:
            # Fresh concatenations: the contrastive backward above has already freed the graph of q, p, n.
            columns = [torch.cat(column) for column in reps]
            term = self.distill.weight * distill_loss(columns[0], columns[1], stack_negatives(columns[2:]), labels,
                                                      self.distill, self.temperature)
            if with_backward:
                term.backward()
                term = term.detach()
            chunks.append(term)
        if with_backward:
            # A zero contrastive weight leaves the gathered copies without gradients.
            grads = [g if g is not None else torch.zeros_like(t) for g, t in ((q_all.grad, q_all), (p_all.grad, p_all))]
            torch.autograd.backward(gathered, grads)
        return torch.stack(chunks).sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "same_tower": self.same_tower, "mini_batch_size": self.mini_batch_size,
                "gather_across_devices": self.gather_across_devices, **distill_config(self.distill)}

    @property
    def citation(self) -> str:
        return GECKO_CITATION + GRADCACHE_CITATION
