"""Process-group set-up for runs launched by ``torchrun``, and small collective helpers.

``torchrun --nproc-per-node N -m dalle train ...`` starts N processes and tells each its
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` through the environment; a plain ``dalle
train`` has none of these and runs as a single process with no process group. NCCL
connects GPUs; gloo lets the same code run on CPUs (the tests use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in the run. ``world_size == 1`` without a process group
    is the ordinary single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_name: str = "auto") -> Distributed:
    """Joins the process group when launched by torchrun; otherwise a single process.

    Each rank then uses GPU ``LOCAL_RANK`` when it trains on CUDA.
    """
    if not launched_by_torchrun():
        return Distributed()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    return Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def current() -> Distributed:
    """The running process's place, from the process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(
            dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()
        )
    return Distributed()


def collective_device() -> torch.device:
    """Where small tensors for collectives must live: NCCL only moves GPU memory."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Averages scalar metrics over ranks (each computed on that rank's share)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                           device=collective_device())  # fmt: skip
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist(), strict=True))


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` ``[b, ...]`` concatenated in rank order, ``[world * b, ...]``, with
    gradients flowing back to each rank's own part (a contrastive loss over the global
    batch needs every rank's features)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
