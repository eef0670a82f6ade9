"""Data-parallel training: in-batch negatives gathered across processes, and `accelerate launch`.

1. Two real gloo processes (torch.multiprocessing, tiny random tensors): the Gecko loss over
   2 processes × B rows, with gathering, equals the single-process loss over the 2B rows, and so
   do the gradients once averaged the way DDP averages them. Plain and cached loss, even and
   uneven row counts.
2. `accelerate launch --multi_gpu --num_processes 2 -m gecko_cli finetune` on CPU: two ranks
   train, only rank 0 writes the summary and the model, and the model loads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gecko_cli.train.losses import CachedGeckoLoss, GeckoLoss, gecko_infonce

WORLD = 2
D, K, TAU = 8, 2, 0.1
# Rows per process: even, and uneven so that the processes also run different numbers of chunks
# in the cached loss (3 rows = 2 chunks of 2, 5 rows = 3 chunks).
SPLITS = {"even": (4, 4), "uneven": (3, 5)}


def full_batch(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same random q [rows, D], p [rows, D], n [rows, K, D] in every process (float64)."""
    generator = torch.Generator().manual_seed(rows)
    q, p, n = (torch.randn(*shape, generator=generator, dtype=torch.float64)
               for shape in ((rows, D), (rows, D), (rows, K, D)))
    return q, p, n


def _local_loss(kind: str, gather: bool, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> list[torch.Tensor]:
    """Run one loss on this process's leaves; return (loss, grad q, grad p, grad n)."""
    leaves = [t.clone().requires_grad_() for t in (q, p, n)]
    if kind == "plain":
        loss_fn = GeckoLoss(None, TAU, gather_across_devices=gather)  # the model is not used here
        loss = loss_fn.compute_loss_from_embeddings([leaves[0], leaves[1], *leaves[2].unbind(1)])
        loss.backward()
    else:
        loss_fn = CachedGeckoLoss(nn.Sequential(nn.Identity()), TAU, mini_batch_size=2, gather_across_devices=gather)
        # What CachedLossMixin hands over: per column, mini-batches of detached embeddings.
        columns = [leaves[0], leaves[1], *leaves[2].unbind(1)]
        reps = [[piece.detach().requires_grad_() for piece in column.split(2)] for column in columns]
        loss = loss_fn.calculate_loss(reps, with_backward=True)
        for column, pieces in zip(columns, reps):
            column.backward(torch.cat([piece.grad for piece in pieces]))
    return [loss.detach(), *(leaf.grad for leaf in leaves)]


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for split, sizes in SPLITS.items():
            q, p, n = full_batch(sum(sizes))
            begin = sum(sizes[:rank])
            rows = slice(begin, begin + sizes[rank])
            for kind in ("plain", "cached"):
                for gather in (True, False):
                    results[(split, kind, gather)] = _local_loss(kind, gather, q[rows], p[rows], n[rows])
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def _reference(rows: int) -> list[torch.Tensor]:
    """Loss and gradients of the single-process loss over every row."""
    leaves = [t.clone().requires_grad_() for t in full_batch(rows)]
    loss = gecko_infonce(*leaves, temperature=TAU)
    loss.backward()
    return [loss.detach(), *(leaf.grad for leaf in leaves)]


@pytest.mark.parametrize("kind", ["plain", "cached"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_gathered_loss_over_two_processes_equals_one_process_over_both_batches(ranks: list[dict], kind: str,
                                                                               split: str) -> None:
    sizes = SPLITS[split]
    loss, *grads = _reference(sum(sizes))
    per_rank = [ranks[rank][(split, kind, True)] for rank in range(WORLD)]
    # DDP averages gradients over the processes, and the trainer logs the average loss.
    assert torch.stack([r[0] for r in per_rank]).mean().item() == pytest.approx(loss.item(), abs=1e-12)
    for index, name in enumerate(("q", "p", "n"), start=1):
        ours = torch.cat([r[index] for r in per_rank]) / WORLD
        torch.testing.assert_close(ours, grads[index - 1], atol=1e-12, rtol=0, msg=f"gradient of {name}")


@pytest.mark.parametrize("kind", ["plain", "cached"])
def test_without_gathering_each_process_sees_only_its_own_batch(ranks: list[dict], kind: str) -> None:
    q, p, n = full_batch(8)
    for rank in range(WORLD):
        rows = slice(4 * rank, 4 * rank + 4)
        local = gecko_infonce(q[rows], p[rows], n[rows], temperature=TAU).item()
        assert ranks[rank][("even", kind, False)][0].item() == pytest.approx(local, abs=1e-12)
    assert ranks[0][("even", kind, False)][0].item() != pytest.approx(_reference(8)[0].item(), abs=1e-3)


# ---- `accelerate launch` with 2 CPU processes, end to end on the embedded embedder ----


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_runs_two_ranks_and_rank_0_writes(tmp_path: Path) -> None:
    from tests.conftest import jsonl
    from tests.integration.test_finetune import training_records

    records = tmp_path / "train.jsonl"
    records.write_text(jsonl(*training_records()))
    out = tmp_path / "model"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "gecko_cli", "finetune", "--input", str(records), "--output", str(out),
               "--max-steps", "2", "--batch-size", "4", "--mini-batch-size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.splitlines()  # one summary line: rank 1 writes nothing to stdout
    summary = json.loads(line)
    assert summary["processes"] == 2 and summary["steps"] == 2 and summary["output"] == str(out)
    assert "process 1 of 2" in result.stderr
    assert json.loads((out / "gecko.json").read_text())["training"]["gather_across_processes"] is True

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["a query"], prompt_name="query").shape == (1, 384)
