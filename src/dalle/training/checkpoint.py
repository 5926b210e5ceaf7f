"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model and optimizer state, the loop's position (step, epoch and
batches consumed in the epoch) and every random generator's state. It is written to a
temporary file and renamed over the old one, so a kill during the write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class LoopState:
    step: int = 0  # optimizer updates done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of the current epoch already consumed
    samples_seen: int = 0
    elapsed_s: float = 0.0  # training wall time over all sessions of the run


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices), e.g. before building a model."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: LoopState,
    config: dict[str, Any],
    rng: dict[str, Any] | None = None,
    ema: torch.nn.Module | None = None,
) -> Path:
    """Writes the checkpoint atomically (temporary file, fsync, rename).

    ``rng`` defaults to the generators' current state; pass the state captured at the
    step boundary that ``loop`` describes when saving from the middle of a step.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loop": asdict(loop),
        "rng": rng if rng is not None else rng_state(),
        "config": config,
    }
    if ema is not None:
        payload["ema"] = ema.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    ema: torch.nn.Module | None = None,
) -> tuple[LoopState, dict[str, Any]]:
    """Restores model (and optimizer, RNG, weight average) in place.

    Returns the loop state and the whole payload.
    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    if ema is not None:
        if "ema" not in payload:
            raise ValueError(f"{path} has no weight average; resume with optim.ema_decay=0")
        ema.load_state_dict(payload["ema"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return LoopState(**payload["loop"]), payload
