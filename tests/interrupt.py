"""Runs a training task to its end, or stops it inside a chosen update (tests of resume)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dalle.training.checkpoint import seed_everything
from dalle.training.loop import train


class Crash(RuntimeError):
    pass


def run_task(
    config,
    make_task,
    out: Path,
    stop_at_call: int | None = None,
    error: type[BaseException] = KeyboardInterrupt,
) -> dict[str, torch.Tensor]:
    """Trains ``make_task(config)`` into ``out``; with ``stop_at_call``, raises ``error``
    after that many loss computations (the batch and its random numbers consumed)."""
    seed_everything(config.loop.seed)
    task = make_task(config, torch.device("cpu"))
    if stop_at_call is not None:
        calls = {"n": 0}
        inner = task.training_loss

        def stopping_loss(batch, step):
            calls["n"] += 1
            loss = inner(batch, step)
            if calls["n"] == stop_at_call:
                raise error("stopped")
            return loss

        task.training_loss = stopping_loss
    train(task, config.data, config.loop, config.optim, out, dataclasses.asdict(config))
    return task.model.state_dict()


def assert_resumes_exactly(config, make_task, root: Path, stop_at_call: int = 4) -> None:
    """A run interrupted inside its ``stop_at_call``-th update and resumed ends with
    exactly the weights of the same run trained straight through."""
    straight = run_task(config, make_task, root / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_task(config, make_task, root / "stopped", stop_at_call=stop_at_call)
    resumed = run_task(config, make_task, root / "stopped")
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
