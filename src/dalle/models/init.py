"""Weight initialisation that gives the same weights whether a model is sharded or not.

Each parameter draws from its own generator, seeded by the model's seed and the
parameter's name, and is generated whole; a rank holding a shard (an FSDP2 DTensor)
keeps only its slice. So a model initialised after sharding over 8 ranks, over 2, or on
one device has identical weights, and runs on different numbers of ranks can be compared
step by step.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import nn
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
    # On the CPU (the generator's device) even inside a `with torch.device("cuda")` build.
    whole = torch.empty(tuple(param.shape), dtype=torch.float32, device="cpu")
    fill(whole, generator)
    if isinstance(param, DTensor):
        # Every rank generated the same whole tensor: take this rank's slice, no messages.
        mine = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(mine.to_local())
    else:
        param.copy_(whole)


def uniform(bound: float) -> Fill:
    return lambda t, g: t.uniform_(-bound, bound, generator=g)


def torch_default(module: nn.Module, name: str, param: torch.Tensor) -> Fill:
    """PyTorch's own default initialisation of ``module``'s parameter ``name``, as a fill:
    convolutions and linear layers U(+-1/sqrt(fan_in)) for weight and bias (what
    ``kaiming_uniform_(a=sqrt(5))`` comes to), attention's input projection Xavier-uniform
    with zero biases, norms at identity, embeddings N(0, 1)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return constant(1.0 if name == "weight" else 0.0)
    if isinstance(module, nn.Embedding):
        return normal(1.0)
    if isinstance(module, nn.MultiheadAttention):
        if name == "in_proj_weight":  # [3E, E]
            return uniform(math.sqrt(6 / (param.shape[0] + param.shape[1])))
        return constant(0.0)  # in_proj_bias
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear) and name == "bias":
            return constant(0.0)  # attention's output projection: zero bias
        return uniform(1 / math.sqrt(module.weight[0].numel()))  # fan_in = in * kernel area
    raise TypeError(f"no default initialisation for {type(module).__name__}.{name}")


Rule = Callable[[str, nn.Module, str, torch.Tensor], Fill]


def named_starts(starts: dict[str, Fill]) -> Rule:
    """A rule: the fill ``starts`` names for a parameter (by its full name, without
    wrapper prefixes), PyTorch's default for every other one."""

    def rule(module_name: str, module: nn.Module, name: str, param: torch.Tensor) -> Fill:
        full_name = f"{module_name}.{name}" if module_name else name
        return starts.get(clean_name(full_name)) or torch_default(module, name, param)

    return rule


def initialise_(model: nn.Module, seed: int, rule: Rule) -> None:
    """Fills every parameter of ``model`` by ``rule(module_name, module, name, param)``,
    each from its own generator (:func:`init_parameter_`)."""
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}" if module_name else name
            init_parameter_(param, rule(module_name, module, name, param), seed, full_name)
