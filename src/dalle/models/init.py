"""Weight initialisation that gives the same weights whether a model is sharded or not.

Each parameter draws from its own generator, seeded by the model's seed and the
parameter's name, and is generated whole; a rank holding a shard (an FSDP2 DTensor)
keeps only its slice. So a model initialised after sharding over 8 ranks, over 2, or on
one device has identical weights, and runs on different numbers of ranks can be compared
step by step.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

Fill = Callable[[torch.Tensor, torch.Generator], object]


def draw_seed() -> int:
    """A model's init seed from the global CPU generator (so ``seed_everything`` sets it);
    explicit about the device, so it also works while a model is built on meta."""
    return int(torch.randint(0, 2**62, (1,), device="cpu").item())


def normal(std: float) -> Fill:
    return lambda t, g: t.normal_(0.0, std, generator=g)


def constant(value: float) -> Fill:
    return lambda t, g: t.fill_(value)


def clean_name(name: str) -> str:
    """The parameter's name without wrapper prefixes (activation checkpointing, compile)."""
    for prefix in ("_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


@torch.no_grad()
def init_parameter_(param: torch.Tensor, fill: Fill, seed: int, name: str) -> None:
    """Fills ``param`` (a plain tensor or a sharded DTensor) as if it were generated whole
    by ``fill`` with a generator seeded by ``(seed, name)``."""
    offset = zlib.crc32(clean_name(name).encode())
    generator = torch.Generator().manual_seed((seed + offset) % 2**63)
    whole = torch.empty(tuple(param.shape), dtype=torch.float32)
    fill(whole, generator)
    if isinstance(param, DTensor):
        # Every rank generated the same whole tensor: take this rank's slice, no messages.
        mine = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(mine.to_local())
    else:
        param.copy_(whole)
