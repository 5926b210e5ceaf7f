"""Where an image tokenizer's training step goes on this CPU: rendering a batch, cutting
its crops, and the update, then a ``torch.profiler`` table of the update's operators
grouped by input shape.

    python benchmarks/fsq_step_profile.py [--config configs/fsq-shapes-demo.yaml]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dalle.data.datasets import make_loader, open_source
from dalle.training.fsq_task import FSQTask
from dalle.training.stages import FSQ


def update(task: FSQTask, optimizer: torch.optim.Optimizer, batch) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = task.training_loss(batch, 0.0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fsq-shapes-demo.yaml")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    config = FSQ.build_config(args.config, [])
    task = FSQTask(config, torch.device("cpu"))
    batches = iter(make_loader(open_source(config.data), config.data))
    start = time.perf_counter()
    held = [next(batches) for _ in range(args.batches)]
    print(f"render: {(time.perf_counter() - start) / args.batches * 1000:.1f} ms a batch")
    start = time.perf_counter()
    for batch in held:
        task.training_images(batch)
    print(f"crops: {(time.perf_counter() - start) / args.batches * 1000:.1f} ms a batch")
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=1e-3)
    for batch in held[:5]:  # warm-up
        update(task, optimizer, batch)
    start = time.perf_counter()
    for batch in held[5:]:
        update(task, optimizer, batch)
    print(f"update: {(time.perf_counter() - start) / (len(held) - 5) * 1000:.1f} ms")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in held[:8]:
            update(task, optimizer, batch)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=30,
        max_shapes_column_width=90,
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
