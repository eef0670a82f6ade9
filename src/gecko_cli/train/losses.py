"""The Gecko training loss (eq. 3 of arXiv 2403.20327), its GradCache variant, and MRL wrapping.

`gecko_infonce` is the maths on plain tensors; `GeckoLoss` and `CachedGeckoLoss` plug it into the
sentence-transformers trainer (which runs on accelerate); `build_loss` picks one and wraps it in
`MatryoshkaLoss` so one model serves several embedding sizes. This module is only imported by the
training commands, so torch and sentence-transformers are imported at the top.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses import CachedLossMixin, has_static_embedding_input
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from torch import Tensor, nn

from gecko_cli.contract.errors import UsageError

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


def _check_shapes(q: Tensor, p: Tensor, n: Tensor | None) -> None:
    if q.ndim != 2 or q.shape != p.shape:
        raise ValueError(f"q and p must both be [B, d], got {tuple(q.shape)} and {tuple(p.shape)}")
    if n is not None and (n.ndim != 3 or n.shape[0] != q.shape[0] or n.shape[2] != q.shape[1]):
        raise ValueError(f"n must be [B, k, d] = [{q.shape[0]}, k, {q.shape[1]}], got {tuple(n.shape)}")


def _row_losses(
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


class _GatherRows(torch.autograd.Function):
    """all_gather along rows (any row count per process); backward hands each process the sum,
    over every process's loss, of its own rows' gradients. Written out because torch.distributed.nn's
    all_gather is deprecated (torch 2.13); an all_reduce of the gradient works on every backend."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, counts: tuple[int, ...], rank: int) -> Tensor:
        ctx.begin, ctx.end = sum(counts[:rank]), sum(counts[: rank + 1])
        padded = F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, max(counts) - tensor.shape[0])).contiguous()
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.begin : ctx.end], None, None


def gather_rows(tensors: Sequence[Tensor]) -> tuple[list[Tensor], int, int]:
    """This process's rows of each tensor -> every process's rows, in rank order, with autograd.

    Returns the gathered tensors, the index of this process's first row in them, and the total row
    count. Gradients flow back to the process that owns each row, summed over every process's
    loss, so with DDP averaging the parameter gradients, a loss of
    ``sum(local rows) * world_size / total`` on every process trains exactly like that loss over
    one process holding all the rows. Processes may hold different row counts. Not distributed,
    or one process: the tensors as they are.

    [B, d] on each of 2 processes -> ([2B, d], rank * B, 2B)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors), 0, tensors[0].shape[0]
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=tensors[0].device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([tensors[0].shape[0]], device=tensors[0].device))
    counts = tuple(int(size.item()) for size in sizes)
    gathered = [_GatherRows.apply(tensor, counts, rank) for tensor in tensors]
    return gathered, sum(counts[:rank]), sum(counts)


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
    _check_shapes(q, p, n)
    if temperature <= 0 or reduction not in ("mean", "none"):
        raise ValueError(f"need temperature > 0 and reduction 'mean' or 'none', got {temperature}, {reduction!r}")
    losses = _row_losses(q, p, n, 0, q.shape[0], temperature, same_tower)
    return losses.mean() if reduction == "mean" else losses


def _stack_negatives(columns: Sequence[Tensor]) -> Tensor | None:
    """[neg_1, ..., neg_k] columns of [B, d] -> one [B, k, d] tensor, or None when k = 0."""
    return torch.stack(list(columns), dim=1) if columns else None


def _denominator_rows(q: Tensor, p: Tensor, gather: bool) -> tuple[Tensor, Tensor, int, float]:
    """This process's q, p -> (the q, p every denominator sees, our first row there, weight per row).

    Gathered, the weight is world_size / total rows, so that DDP's gradient average gives the
    gradient of the mean over every process's rows; not gathered, it is 1 / local rows (the mean).
    Hard negatives are never gathered: eq. 3 puts query i's own negatives only in Z_i.
    """
    if not gather:
        return q, p, 0, 1 / q.shape[0]
    (q_all, p_all), offset, total = gather_rows([q, p])
    return q_all, p_all, offset, (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1) / total


class GeckoLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.05,
        same_tower: bool = True,
        gather_across_devices: bool = True,
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

        Inputs:
            +-------------------------------------------------+--------+
            | Inputs                                          | Labels |
            +=================================================+========+
            | (anchor, positive) pairs                        | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_k) | none   |
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

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        # Like MultipleNegativesRankingLoss: the positive and negative columns share one forward pass.
        # On 2 CPU cores that was 27% faster per step than a forward per column (benchmarks/bench_train.py).
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """[anchor, positive, neg_1, ..., neg_k] embeddings of [B, d] -> scalar loss; labels are unused."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected (anchor, positive, *negatives) columns, got {len(embeddings)}")
        q, p, n = embeddings[0], embeddings[1], _stack_negatives(embeddings[2:])
        _check_shapes(q, p, n)
        q_all, p_all, offset, weight = _denominator_rows(q, p, self.gather_across_devices)
        losses = _row_losses(q_all, p_all, n, offset, offset + q.shape[0], self.temperature, self.same_tower)
        return losses.sum() * weight

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "same_tower": self.same_tower,
                "gather_across_devices": self.gather_across_devices}

    @property
    def citation(self) -> str:
        return GECKO_CITATION


class CachedGeckoLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.05,
        same_tower: bool = True,
        mini_batch_size: int = 32,
        show_progress_bar: bool = False,
        gather_across_devices: bool = True,
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
        n = _stack_negatives([torch.cat(column) for column in reps[2:]])
        _check_shapes(q, p, n)
        q_all, p_all, offset, weight = _denominator_rows(q, p, self.gather_across_devices)
        if with_backward:
            # The chunks back-propagate into detached copies; their gradients then cross the gather
            # once, at the end. Back-propagating every chunk through it would cost a collective per
            # chunk, and hang when processes hold different numbers of chunks.
            gathered = [q_all, p_all]
            q_all, p_all = (tensor.detach().requires_grad_() for tensor in gathered)
        chunks = []
        for begin in range(0, q.shape[0], self.mini_batch_size):
            end = min(begin + self.mini_batch_size, q.shape[0])
            rows = (offset + begin, offset + end)
            # Sum · weight (not mean) so the chunks add up to the batch mean exactly.
            chunk = _row_losses(q_all, p_all, None if n is None else n[begin:end], *rows,
                                self.temperature, self.same_tower).sum() * weight
            if with_backward:
                chunk.backward()
                chunk = chunk.detach()
            chunks.append(chunk)
        if with_backward:
            torch.autograd.backward(gathered, [q_all.grad, p_all.grad])
        return torch.stack(chunks).sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "same_tower": self.same_tower, "mini_batch_size": self.mini_batch_size,
                "gather_across_devices": self.gather_across_devices}

    @property
    def citation(self) -> str:
        return GECKO_CITATION + GRADCACHE_CITATION


def build_loss(
    model: SentenceTransformer,
    temperature: float = 0.05,
    same_tower: bool = True,
    mrl_dims: Sequence[int] | None = None,
    mini_batch_size: int | None = None,
    gather_across_processes: bool = True,
) -> nn.Module:
    """The training loss for the command-line options: Gecko's loss, cached or not, MRL or not.

    Raises `UsageError` for options that cannot work with this model (they come from the user).

    Example: ``build_loss(model, mrl_dims=[384, 256], mini_batch_size=32)`` -> a `MatryoshkaLoss`
    whose ``.loss`` is a `CachedGeckoLoss`; ``build_loss(model)`` -> a plain `GeckoLoss`.
    """
    if temperature <= 0:
        raise UsageError(f"temperature must be positive, got {temperature}")
    if mini_batch_size is not None and mini_batch_size < 1:
        raise UsageError(f"mini-batch size must be at least 1, got {mini_batch_size}")
    if mini_batch_size is not None and has_static_embedding_input(model):
        raise UsageError("a mini-batch size (GradCache) does not work with a StaticEmbedding model")
    if mini_batch_size is None:
        loss: nn.Module = GeckoLoss(model, temperature, same_tower, gather_across_processes)
    else:
        loss = CachedGeckoLoss(model, temperature, same_tower, mini_batch_size,
                               gather_across_devices=gather_across_processes)
    if not mrl_dims:
        return loss
    dimension = model.get_embedding_dimension()
    bad = [dim for dim in mrl_dims if dim < 1 or (dimension is not None and dim > dimension)]
    if bad:
        raise UsageError(f"MRL dimensions {bad} are not in 1..{dimension} (the model's embedding dimension)")
    return MatryoshkaLoss(model, loss, matryoshka_dims=list(mrl_dims))
