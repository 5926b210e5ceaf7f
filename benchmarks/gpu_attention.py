"""Attention alone, forward and backward, for each layer kind of the paper's schedule at its
1,280-token sequence (256 text + 32x32 image tokens), on a GPU: which back-end is fastest
per kind, apart from the rest of the model (issue 17). Back-ends: FlexAttention with
128- and 64-wide tiles (its mask function, :func:`mask_function`), dense boolean masks
through ``scaled_dot_product_attention``, the row-blocked layout
(:mod:`dalle.models.blocked_attention`), and the fused causal kernel (no mask) as the
reference every sparse kind must beat. Median of ``triton.testing.do_bench`` in ms.

    python benchmarks/gpu_attention.py [--batch 8] [--heads 16] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from dalle.models.attention_masks import mask_function, text_image_mask
from dalle.models.blocked_attention import BlockedLayout, blocked_attention
from dalle.models.dalle_transformer import flex_kernel_options

TEXT_POSITIONS, GRID, KERNEL = 257, 32, 11  # start token + 256 caption tokens; 32x32 image


def attention_function(backend: str, kind: str, length: int, device: torch.device):
    """``f(q, k, v) -> out`` for one back-end and layer kind over ``length`` positions."""
    if backend.startswith("flex"):
        block = int(backend[4:])
        rule = mask_function(kind, TEXT_POSITIONS, GRID, KERNEL)
        mask = create_block_mask(lambda b, h, q, k: rule(q, k), None, None, length, length,
                                 device=device, BLOCK_SIZE=block)  # fmt: skip
        kernel = torch.compile(flex_attention, dynamic=False)
        options = flex_kernel_options(block)
        return lambda q, k, v: kernel(q, k, v, block_mask=mask, kernel_options=options)
    if backend == "dense":
        dense = text_image_mask(kind, TEXT_POSITIONS, GRID, KERNEL)[:length, :length]
        dense = dense.to(device)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    if backend == "blocked":  # the whole grid: one dummy position more than the model's
        layout = BlockedLayout(kind, TEXT_POSITIONS, GRID, KERNEL)
        return lambda q, k, v: blocked_attention(q, k, v, layout)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def time_backend(backend: str, kind: str, args, device: torch.device) -> dict:
    from triton.testing import do_bench

    length = TEXT_POSITIONS + GRID * GRID - (0 if backend == "blocked" else 1)
    shape = (args.batch, args.heads, length, 64)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))  # fmt: skip
    grad = torch.randn(shape, device=device, dtype=torch.bfloat16)
    attend = attention_function(backend, kind, length, device)
    # Correct first: against dense masks in float32 over the model's 1,280 positions
    # (bf16 operands land between 1e-3 and 1e-2).
    n = TEXT_POSITIONS + GRID * GRID - 1
    reference = attention_function("dense", kind, n, device)
    expected = reference(*(x[:, :, :n].detach().float() for x in (q, k, v)))
    error = (attend(q, k, v)[:, :, :n].float() - expected).norm() / expected.norm()

    def forward_backward() -> None:
        attend(q, k, v).backward(grad)

    forward_ms = do_bench(lambda: attend(q, k, v), warmup=50, rep=200, return_mode="median")
    both_ms = do_bench(forward_backward, warmup=50, rep=200, return_mode="median")
    return {"kind": kind, "backend": backend, "relative_error": error.item(),
            "forward_ms": forward_ms, "forward_backward_ms": both_ms}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kinds", default="row,column,conv,full")
    parser.add_argument("--backends", default="causal,dense,flex128,flex64,blocked")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for kind in args.kinds.split(","):
        for backend in args.backends.split(","):
            if backend == "causal" and kind != "full":
                continue  # the same kernel for every kind: timed once, as the reference
            try:
                row = time_backend(backend, kind, args, device)
            except Exception as error:  # one failing back-end must not lose the others
                traceback.print_exc()
                row = {"kind": kind, "backend": backend, "error": repr(error)[:1000]}
            rows.append({"device": torch.cuda.get_device_name(device),
                         "torch": torch.__version__, **row})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
            torch.cuda.empty_cache()
    print(f"{'kind':<8}{'backend':<10}{'rel. error':>11}{'fwd ms':>9}{'fwd+bwd ms':>12}")
    nan = float("nan")
    for r in rows:
        print(
            f"{r['kind']:<8}{r['backend']:<10}{r.get('relative_error', nan):>11.2e}"
            f"{r.get('forward_ms', nan):>9.3f}{r.get('forward_backward_ms', nan):>12.3f}"
        )


if __name__ == "__main__":
    main()
