"""Which scaled_dot_product_attention kernel trains faster on this CPU: the fused flash
kernel PyTorch picks by default, or the plain matrix products ("math")?

Times a forward and backward of causal attention in bf16 at several sequence lengths, then
a training step (bf16 autocast, AdamW) of the demo's transformer and of the small
masked-token decoder under each kernel. Same process, same threads, one after the other.

    .venv/bin/python benchmarks/attention_kernel_cpu.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.models.token_decoder import TOKEN_DECODER_PRESETS, TokenDecoder

KERNELS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}


def seconds_per_call(step: Callable[[], None], kernel: SDPBackend, warmup: int = 3,
                     repeats: int = 5) -> float:  # fmt: skip
    with sdpa_kernel(kernel):
        for _ in range(warmup):
            step()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
    return (time.perf_counter() - start) / repeats


def attention_alone() -> None:
    torch.manual_seed(0)
    for length, batch, heads, dim in [(64, 64, 4, 32), (88, 32, 4, 32), (256, 16, 8, 32),
                                      (512, 8, 8, 64), (1280, 2, 16, 64)]:  # fmt: skip
        q, k, v = (torch.randn(batch, heads, length, dim, dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))  # fmt: skip

        def step(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> None:
            F.scaled_dot_product_attention(q, k, v, is_causal=True).float().sum().backward()

        times = {n: seconds_per_call(step, kernel) * 1000 for n, kernel in KERNELS.items()}
        print(f"attention, {length} tokens x batch {batch}: math {times['math']:.1f} ms, "
              f"flash {times['flash']:.1f} ms", flush=True)  # fmt: skip


def training_step(model: torch.nn.Module, inputs: tuple, batch: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters())

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            out = model(*inputs)
        loss = sum(o.float().mean() for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for name, kernel in KERNELS.items():
        rate = batch / seconds_per_call(step, kernel, repeats=10)
        print(f"  {name}: {rate:.0f} images/s", flush=True)


def main() -> None:
    attention_alone()
    c = replace(DALLE_PRESETS["dalle-bench"], width=128, layers=4, heads=4,
                attention=["full"] * 4, text_vocab_size=364, text_len=24,
                image_vocab_size=1000, image_grid=8)  # fmt: skip
    print("the demo's transformer (batch 32, 24 + 64 tokens):")
    training_step(DALLETransformer(c), (torch.randint(1, 364, (32, 24)),
                                        torch.randint(0, 1000, (32, 64))), 32)  # fmt: skip
    d = replace(TOKEN_DECODER_PRESETS["token-decoder-small"], text_vocab_size=364)
    print("token-decoder-small (batch 64, 8x8 tokens, 28 context tokens):")
    inputs = (torch.randint(0, 1001, (64, 8, 8)), torch.randint(1, 364, (64, 24)),
              F.normalize(torch.randn(64, 64), dim=-1))  # fmt: skip
    training_step(TokenDecoder(d), inputs, 64)


if __name__ == "__main__":
    main()
