"""Data-parallel training across processes, on PyTorch's own engine (torchrun + DDP).

torchrun starts one process per rank and tells each its place through the environment
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT): that is torchrun's launch contract, not a
hyper-parameter. Without it, everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# A rank that dies mid-collective must not leave the others waiting for ever.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, backend: str = "auto") -> Ranks:
    """Join the process group torchrun set up: gloo on CPU, nccl on CUDA (or as asked)."""
    if not launched_by_torchrun():
        return Ranks()
    ranks = Ranks(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(chosen, timeout=COLLECTIVE_TIMEOUT)
    return ranks


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank on its own GPU; CPU ranks share the CPU. More ranks than GPUs share them
    round-robin (for trying DDP on one GPU; that needs the gloo backend, as nccl refuses)."""
    if device.type == "cuda" and ranks.enabled:
        index = ranks.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def shard(order: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's share of a permutation, as DistributedSampler deals it: the order is padded
    by repeating its start until it divides evenly, then rank r takes every world_size-th index
    from position r. Every index is visited once per epoch across ranks (a few twice)."""
    if not ranks.enabled:
        return order
    padded_length = -(-len(order) // ranks.world_size) * ranks.world_size
    padded = torch.cat([order, order[: padded_length - len(order)]])
    return padded[ranks.rank :: ranks.world_size]


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Element-wise sums over ranks (identity in one process)."""
    if not dist.is_initialized():
        return list(values)
    stacked = torch.stack([value.to(torch.float64) for value in values])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return list(stacked)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(value) -> list:
    """Every rank's `value`, in rank order (a one-item list in one process)."""
    if not dist.is_initialized():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_with_torchrun(nproc: int, arguments: list[str]) -> int:
    """`mnist train --nproc N ...` = torchrun --nproc-per-node N -m mnist_classifier train ..."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mnist_classifier",
        "train",
        *arguments,
    ]
    return subprocess.call(command)
