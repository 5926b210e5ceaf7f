"""fp16 training with one gradient scale per residual block (DALL-E, Ramesh et al. 2021, §2.4).

fp16 represents magnitudes from about 6e-8 to 65504. One global loss scale must keep the
largest gradient anywhere in the model under 65504, and then the gradients of blocks
deep in a large model, many orders of magnitude smaller, round to zero: they underflow.
The paper's remedy gives every residual block its own scale.

How: the residual stream's gradient is kept at the outside scale ``S0`` (the loss is
multiplied by ``S0``). Where it enters block ``i`` from above, it is multiplied by
``s_i / S0``, so inside the block (parameters and activations) gradients are ``s_i`` times
the true ones; where it leaves the block below, it is multiplied back by ``S0 / s_i``
and any inf or NaN is zeroed there (the paper's "filter") and recorded, so that one
block's overflow does not spill into the blocks below it. After the backward pass each
parameter's gradient is divided by its own region's scale. When a region overflowed, the
update is skipped and that region's scale shrinks by sqrt(2); otherwise every scale
grows by 2^(1/1000) per update, within bounds (the paper's schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``factor`` and, with ``overflow``
    given, zeroes non-finite gradient entries and records that it did."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: torch.Tensor, overflow: Any) -> torch.Tensor:
        ctx.save_for_backward(factor)
        ctx.overflow = overflow
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (factor,) = ctx.saved_tensors
        scaled = (grad.float() * factor).to(grad.dtype)  # an fp16 overflow becomes inf
        if ctx.overflow is not None:
            flags, index = ctx.overflow
            finite = torch.isfinite(scaled)
            flags[index] = torch.maximum(flags[index], (~finite).any().float())
            scaled = torch.where(finite, scaled, torch.zeros_like(scaled))
        return scaled, None, None


def _first_tensor(args: tuple) -> int | None:
    return next((i for i, a in enumerate(args) if isinstance(a, torch.Tensor)), None)


class BlockGradScaler:
    """Dynamic gradient scales for the region outside the blocks (index 0) and for each
    residual block (index ``i + 1``). A block's input is its first tensor argument and
    its output its (first) tensor result, as for a residual block ``x -> x + f(x)``.
    With no blocks this is ordinary dynamic loss scaling."""

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        init_scale: float = 2.0**13,
        growth_factor: float = 2 ** (1 / 1000),
        backoff_factor: float = 2**-0.5,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
    ) -> None:
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.min_scale, self.max_scale = min_scale, max_scale
        # On the model's device: the hooks and checks then never wait on the host.
        self.device = next(model.parameters()).device
        self.scales = torch.full((len(blocks) + 1,), float(init_scale), device=self.device)
        self.overflow = torch.zeros(len(blocks) + 1, device=self.device)
        in_block = {id(p): i + 1 for i, b in enumerate(blocks) for p in b.parameters()}
        self.regions = [(p, in_block.get(id(p), 0)) for p in model.parameters()]
        self._hooks = []
        for i, block in enumerate(blocks, start=1):
            self._hooks.append(block.register_forward_pre_hook(self._enter(i)))
            self._hooks.append(block.register_forward_hook(self._leave(i)))

    def _enter(self, i: int):
        # Gradient flowing out of the block's input, back into the residual stream below.
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            at = _first_tensor(args)
            if at is None or not torch.is_grad_enabled():
                return None
            factor = self.scales[0] / self.scales[i]
            scaled = _ScaleGradient.apply(args[at], factor, (self.overflow, i))
            return (*args[:at], scaled, *args[at + 1 :])

        return hook

    def _leave(self, i: int):
        # Gradient arriving at the block's output from above: into the block's own scale.
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if not torch.is_grad_enabled():
                return None
            factor = self.scales[i] / self.scales[0]
            if isinstance(output, torch.Tensor):
                return _ScaleGradient.apply(output, factor, None)
            at = _first_tensor(tuple(output))
            if at is None:
                return None
            items = list(output)
            items[at] = _ScaleGradient.apply(items[at], factor, None)
            return type(output)(items)

        return hook

    @property
    def loss_scale(self) -> float:
        return float(self.scales[0])

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scales[0]

    @torch.no_grad()
    def unscale_(self) -> bool:
        """Divides every gradient by its region's scale; True when all are finite (the
        decision is the same on every rank)."""
        found = self.overflow.clone()
        for param, region in self.regions:
            if param.grad is None:
                continue
            param.grad.div_(self.scales[region])
            local = param.grad.to_local() if isinstance(param.grad, DTensor) else param.grad
            found[region] = torch.maximum(found[region], (~torch.isfinite(local)).any().float())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        self.overflow = found
        return not bool(found.any())

    def update(self) -> None:
        """Shrinks the scales of regions that overflowed this step, grows the others."""
        factor = torch.where(self.overflow > 0, self.backoff_factor, self.growth_factor)
        self.scales = (self.scales * factor).clamp(self.min_scale, self.max_scale)
        self.overflow = torch.zeros_like(self.overflow)

    def state_dict(self) -> dict[str, list[float]]:
        return {"scales": self.scales.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        scales = torch.tensor(state["scales"], device=self.device)
        if scales.shape != self.scales.shape:
            raise ValueError(f"checkpoint has {len(scales)} gradient scales, the model "
                             f"{len(self.scales)}")  # fmt: skip
        self.scales = scales
