"""One entry point for every trainer: resume check, seeding, the loop, and a summary.

The CLI commands (`dalle train-vae`, `dalle train`) and `make demo` both go through
:func:`run_training`, so a run started from either resumes from the other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dalle.config import ConfigError, save_config
from dalle.training.checkpoint import CHECKPOINT_FILE, SHARDED_CHECKPOINT_DIR, seed_everything
from dalle.training.distributed import init_distributed
from dalle.training.loop import LoopState, Task, resolve_device, train


def check_resumable(out: Path, config: dict[str, Any]) -> None:
    """Refuses to resume a run whose model or data no longer match its checkpoint."""
    checkpoint, sharded = out / CHECKPOINT_FILE, out / SHARDED_CHECKPOINT_DIR / "loop.json"
    if sharded.exists():
        saved = json.loads(sharded.read_text())["config"]
    elif checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]
    else:
        return
    for section in ("model", "data"):
        if saved.get(section) != config.get(section):
            raise ConfigError(
                f"{out} holds a checkpoint trained with a different '{section}' config; "
                "use a new --out, or the same settings to resume"
            )


def final_eval(out: Path) -> dict[str, float]:
    """The last evaluation a run logged to its metrics.jsonl (empty if none)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return next((r["eval"] for r in reversed(records) if "eval" in r), {})


def run_training(
    config: Any, make_task: Callable[[Any, torch.device], Task], out: Path
) -> LoopState:
    """Trains (or resumes) ``config`` into ``out`` and prints a one-line summary.

    Launched by torchrun, every rank runs this: the ranks join one process group and
    share each global batch (``data.batch_size``), and rank 0 alone writes and prints.
    """
    rank = init_distributed(config.loop.device)
    device = resolve_device(config.loop.device)
    # The model's initial weights depend on the seed; every rank builds the same model.
    seed_everything(config.loop.seed)
    task = make_task(config, device)  # may fill derived config fields
    check_resumable(out, dataclasses.asdict(config))
    if rank.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "train_config.yaml")
    try:
        state = train(task, config.data, config.loop, config.optim, out,
                      dataclasses.asdict(config))  # fmt: skip
    finally:
        if rank.enabled:
            torch.distributed.destroy_process_group()
    if rank.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in final_eval(out).items())
        print(f"trained {state.step} steps in {state.elapsed_s:.0f}s; held-out {summary}")
        print(f"model saved to {out} (config.json + model.safetensors)")
    return state
