"""Data-parallel training: which process this is, and the row gather that makes in-batch negatives global.

`accelerate launch` and torchrun start one process per device and set `RANK` / `WORLD_SIZE`;
`launch_rank` reads them, so a command knows its rank before torch is imported. `gather_rows`
shares every process's queries and positives, with gradients, so that N processes of B rows
train like one process of N·B rows (see `GeckoLoss(gather_across_devices=...)`).

torch is imported inside the functions: the stage commands import this module at start-up.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from gecko_cli.contract.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor


def launch_rank() -> tuple[int, int]:
    """(this process's rank, number of processes) as `accelerate launch` / torchrun set them.

    (0, 1) in a plain run. Read from the environment, so it is known before training starts.
    """
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def data_parallel_rank(input_file: Path | None, what: str) -> tuple[int, int]:
    """`launch_rank()`, refusing stdin when several processes run (they cannot share it)."""
    rank, processes = launch_rank()
    if processes > 1 and input_file is None:
        raise UsageError(f"with several processes (accelerate launch, torchrun) pass the {what} with --input FILE: "
                         "processes cannot share stdin")
    return rank, processes


def world_size() -> int:
    """Processes in the initialised process group; 1 when torch.distributed is not in use."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(tensors: Sequence["Tensor"]) -> tuple[list["Tensor"], int, int]:
    """This process's rows of each tensor -> every process's rows, in rank order, with autograd.

    Returns the gathered tensors, the index of this process's first row in them, and the total row
    count. Gradients flow back to the process that owns each row, summed over every process's
    loss, so with DDP averaging the parameter gradients, a loss of
    ``sum(local rows) * world_size / total`` on every process trains exactly like that loss over
    one process holding all the rows. Processes may hold different row counts. Not distributed,
    or one process: the tensors as they are.

    [B, d] on each of 2 processes -> ([2B, d], rank * B, 2B)
    """
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return list(tensors), 0, tensors[0].shape[0]
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=tensors[0].device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([tensors[0].shape[0]], device=tensors[0].device))
    counts = tuple(int(size.item()) for size in sizes)
    gather = _gather_rows_function()
    gathered = [gather.apply(tensor, counts, rank) for tensor in tensors]
    return gathered, sum(counts[:rank]), sum(counts)


@functools.cache
def _gather_rows_function() -> Any:
    """The `_GatherRows` autograd function, defined on first use so that this module imports no torch."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    class _GatherRows(torch.autograd.Function):
        """all_gather along rows (any row count per process); backward hands each process the sum,
        over every process's loss, of its own rows' gradients. Written out because torch.distributed.nn's
        all_gather is deprecated (torch 2.13); an all_reduce of the gradient works on every backend."""

        @staticmethod
        def forward(ctx: Any, tensor: "Tensor", counts: tuple[int, ...], rank: int) -> "Tensor":
            ctx.begin, ctx.end = sum(counts[:rank]), sum(counts[: rank + 1])
            padded = F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, max(counts) - tensor.shape[0])).contiguous()
            parts = [torch.empty_like(padded) for _ in counts]
            dist.all_gather(parts, padded)
            return torch.cat([part[:count] for part, count in zip(parts, counts)])

        @staticmethod
        def backward(ctx: Any, grad: "Tensor") -> tuple["Tensor", None, None]:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad)
            return grad[ctx.begin : ctx.end], None, None

    return _GatherRows
