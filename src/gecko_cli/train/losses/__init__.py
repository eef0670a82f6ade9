"""The training losses, one per file in the sentence-transformers style, and `build_loss`.

- `gecko.py`: `gecko_infonce` (eq. 3 of arXiv 2403.20327 on plain tensors) and `GeckoLoss`;
- `cached_gecko.py`: `CachedGeckoLoss`, the same loss with GradCache (arXiv 2101.06983);
- `margin_mse.py`, `listwise_kl.py`: distillation from teacher scores, added to either by `distill.py`;
- `build_loss` picks one for the command-line options and wraps it in `MatryoshkaLoss` (MRL), so one
  model serves several embedding sizes.

Only the training run imports this package, so torch and sentence-transformers load at the top.
"""

from __future__ import annotations

from collections.abc import Sequence

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses import has_static_embedding_input
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from torch import nn

from gecko_cli.contract.errors import UsageError
from gecko_cli.train.losses.cached_gecko import CachedGeckoLoss
from gecko_cli.train.config import Distillation
from gecko_cli.train.losses.gecko import GeckoLoss, gecko_infonce

__all__ = ["CachedGeckoLoss", "Distillation", "GeckoLoss", "build_loss", "gecko_infonce"]


def build_loss(
    model: SentenceTransformer,
    *,
    temperature: float = 0.05,
    same_tower: bool = True,
    mrl_dims: Sequence[int] | None = None,
    mini_batch_size: int | None = None,
    gather_across_processes: bool = True,
    distill: Distillation | None = None,
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
        loss: nn.Module = GeckoLoss(model, temperature, same_tower, gather_across_processes, distill=distill)
    else:
        loss = CachedGeckoLoss(model, temperature, same_tower, mini_batch_size,
                               gather_across_devices=gather_across_processes, distill=distill)
    if not mrl_dims:
        return loss
    dimension = model.get_embedding_dimension()
    bad = [dim for dim in mrl_dims if dim < 1 or (dimension is not None and dim > dimension)]
    if bad:
        raise UsageError(f"MRL dimensions {bad} are not in 1..{dimension} (the model's embedding dimension)")
    return MatryoshkaLoss(model, loss, matryoshka_dims=list(mrl_dims))
