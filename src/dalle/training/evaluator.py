"""Evaluation and export during training: on the weight average when there is one, on
every rank (a sharded model's forward pass needs them all), files from rank 0 only."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.optim.swa_utils import AveragedModel

from dalle.training import distributed
from dalle.training.checkpoint import rng_state, set_rng_state
from dalle.training.parallelize import is_sharded, unsharded_copy
from dalle.training.schedules import every_or_last

if TYPE_CHECKING:
    from dalle.training.loop import Task


class Evaluator:
    """Runs a task's held-out evaluation every ``every`` updates and at the last one, and
    its export at the end."""

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        ema: AveragedModel | None,
        out_dir: Path,
        every: int,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        self.task, self.model, self.ema, self.out_dir, self.every = task, model, ema, out_dir, every
        # A sharded model computes in its mixed-precision dtype (bf16 weights once
        # gathered), so its evaluation runs under the training autocast: a task's float32
        # inputs then meet bf16 weights without a dtype error.
        self.autocast = autocast if is_sharded(model) else nullcontext

    def due(self, step: int, last: int) -> bool:
        return every_or_last(step, self.every, last)

    def evaluate(self, step: int) -> dict[str, float]:
        """The task's held-out metrics. The random state is put back afterwards, so
        training draws the same numbers whether or not (and however often) it evaluates."""
        self.model.eval()
        random_state = rng_state()
        try:
            with averaged_weights(self.model, self.ema), self.autocast():
                if distributed.current().is_main:
                    return self.task.evaluate(step, self.out_dir)
                with tempfile.TemporaryDirectory() as scratch:
                    return self.task.evaluate(step, Path(scratch))
        finally:
            set_rng_state(random_state)
            self.model.train()

    def export(self) -> None:
        """Writes the trained model; a sharded one is first gathered whole on rank 0."""
        self.model.eval()
        if not is_sharded(self.model):
            with averaged_weights(self.model, self.ema):
                self.task.export(self.out_dir, self.model)
            return
        whole = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if distributed.current().is_main:
            self.task.export(self.out_dir, unsharded_copy(self.model, whole))
        distributed.barrier()


@contextmanager
def averaged_weights(model: nn.Module, ema: AveragedModel | None) -> Iterator[None]:
    """Puts the weight average into ``model`` for the duration, then restores its own."""
    if ema is None:
        yield
        return
    own = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(own)
