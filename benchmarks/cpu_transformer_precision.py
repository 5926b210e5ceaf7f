"""The demo-sized transformer's training step on this CPU: fp32 against bf16 autocast
(this CPU has native bf16), with the paper's sparse schedule and with full attention,
all in one run so that the ratios compare like with like.

    .venv/bin/python benchmarks/cpu_transformer_precision.py [--steps 6] [--grid 16]
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from dalle.models.dalle_transformer import DALLEConfig, DALLETransformer


def time_steps(attention: str, precision: str, grid: int, steps: int, batch: int) -> float:
    """Seconds per training step (forward, backward, AdamW) after one warm-up step."""
    torch.manual_seed(0)
    config = DALLEConfig(
        text_vocab_size=512, text_len=24, image_vocab_size=1000, image_grid=grid,
        width=256, layers=6, heads=8, conv_kernel=5,
        attention=["full"] * 6 if attention == "full" else [],
    )  # fmt: skip
    model = DALLETransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    text = torch.randint(2, 512, (batch, 24))
    image = torch.randint(0, 1000, (batch, grid * grid))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else nullcontext())  # fmt: skip

    def step() -> None:
        with autocast:
            loss = model.loss(text, image)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokens = args.batch * (24 + args.grid**2)
    results = {}
    for attention in ("paper", "full"):
        for precision in ("fp32", "bf16"):
            seconds = time_steps(attention, precision, args.grid, args.steps, args.batch)
            name = f"{attention}-{precision}"
            results[name] = {"step_s": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}
            print(name, results[name], flush=True)
    base = results["paper-fp32"]["step_s"]
    print(json.dumps({"speedup_vs_paper_fp32": {k: round(base / v["step_s"], 2)
                                                for k, v in results.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
