"""fp16 with per-residual-block gradient scales, against one global loss scale."""

from __future__ import annotations

import torch
from torch import nn

from dalle.training.grad_scaling import BlockGradScaler


class Residual(nn.Module):
    """``x + gain * f(x)``; the branch's output is scaled in fp32, as DALL-E's small
    resblock gains are, so its forward values survive fp16 while its gradient (``gain``
    times the stream's) is what underflows."""

    def __init__(self, width: int, gain: float) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh bounds each branch, so the stream stays within fp16 in the forward pass.
        return x + self.gain * torch.tanh(self.outer(torch.tanh(self.inner(x)))).float()


class Deep(nn.Module):
    """Blocks whose gradients span 13 orders of magnitude: more than fp16 holds."""

    def __init__(self, gains: list[float], width: int = 16) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Residual(width, g) for g in gains)
        self.head = nn.Linear(width, 1)

    def residual_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        # Summed rather than averaged over its 64 x 256 terms, the loss's gradients are large.
        return self.head(x).float().pow(2).mean() * 64 * 256


GAINS = [1e-12] * 8 + [1.0] * 4


def _gradients_under(scaler: BlockGradScaler, model: Deep, x: torch.Tensor) -> bool:
    """One fp16 backward pass; gradients left unscaled in ``.grad``. True if finite."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(x)
    scaler.scale(loss).backward()
    return scaler.unscale_()


def _settle(scaler: BlockGradScaler, model: Deep, x: torch.Tensor) -> None:
    """Lowers the scales (halving, never growing) until no region overflows. A block
    that overflows passes zeros below it, so blocks settle one after another."""
    for _ in range(400):
        finite = _gradients_under(scaler, model, x)
        scaler.update()
        if finite:
            _gradients_under(scaler, model, x)
            return
    raise AssertionError("scales never settled")


def _relative_errors(model: Deep, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        name: float((p.grad - reference[name]).norm() / reference[name].norm())
        for name, p in model.named_parameters()
    }


def test_per_block_scales_keep_gradients_that_one_global_scale_loses() -> None:
    torch.manual_seed(0)
    model = Deep(GAINS)
    x = torch.randn(64, 16)
    model(x).backward()  # fp32: the reference gradients
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    settings = dict(init_scale=2.0**40, growth_factor=1.0, backoff_factor=0.5, max_scale=2.0**60)

    global_scale = BlockGradScaler(model, [], **settings)
    _settle(global_scale, model, x)
    global_errors = _relative_errors(model, reference)

    per_block = BlockGradScaler(model, model.residual_blocks(), **settings)
    _settle(per_block, model, x)
    block_errors = _relative_errors(model, reference)

    tiny = [n for n in reference if n.startswith("blocks.") and int(n.split(".")[1]) < 8]
    # One scale small enough for the large blocks not to overflow leaves the tiny blocks'
    # gradients below fp16's smallest number: they come out zero.
    assert all(global_errors[n] > 0.9 for n in tiny), global_errors
    assert max(block_errors.values()) < 1e-2, block_errors
    # Each block found its own scale: the tiny blocks' far above the large blocks'.
    scales = per_block.scales
    assert scales[1:9].min() > 1e6 * scales[9:].max()


def test_an_overflowing_block_is_filtered_and_backs_off_alone() -> None:
    torch.manual_seed(0)
    model = Deep([1.0, 1.0, 1.0])
    x = torch.randn(8, 16)
    scaler = BlockGradScaler(model, model.residual_blocks(), init_scale=1.0)
    scaler.scales[3] = 2.0**22  # the top block's gradients overflow fp16
    assert not _gradients_under(scaler, model, x)
    # The inf was zeroed where it left the block: blocks below still got finite gradients.
    assert all(torch.isfinite(p.grad).all() for p in model.blocks[0].parameters())
    before = scaler.scales.clone()
    scaler.update()
    assert scaler.scales[3] == before[3] * 2**-0.5
    assert torch.all(scaler.scales[:3] == before[:3] * 2 ** (1 / 1000))


def test_scales_round_trip_through_state_dict() -> None:
    model = Deep([1.0, 1.0])
    scaler = BlockGradScaler(model, model.residual_blocks())
    scaler.scales[1] = 7.0
    other = BlockGradScaler(model, model.residual_blocks())
    other.load_state_dict(scaler.state_dict())
    assert torch.equal(other.scales, scaler.scales)
