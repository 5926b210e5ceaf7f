"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model and optimizer state, the loop's position (step, epoch and
batches consumed in the epoch) and every random generator's state. It is written to a
temporary file and renamed over the old one, so a kill during the write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from dalle.training.parallelize import unsharded_class
from dalle.training.schedules import every_or_last

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
_PAYLOAD_KEYS = ("model", "optimizer", "loop", "rng", "config")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read back: the message names it and what to do."""


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A ``checkpoint.pt`` payload, checked for the parts a resume needs. With ``mmap``,
    tensors stay on disk until touched (cheap, for reading the run's config)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # unpickling damaged bytes can raise almost anything
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({detail}); restore it, or move it away "
            "to start the run over"
        ) from None
    missing = [k for k in _PAYLOAD_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (no {', '.join(missing)})")
    return payload


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
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loop: LoopState,
    config: dict[str, Any], rng: dict[str, Any] | None = None, ema: torch.nn.Module | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
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
        "extra": extra or {},
        **model_description(model),
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
    payload = read_checkpoint(path)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not fit this model: {str(err).splitlines()[0]}"
        ) from None
    if ema is not None:
        if "ema" not in payload:
            raise ValueError(f"{path} has no weight average; resume with optim.ema_decay=0")
        ema.load_state_dict(payload["ema"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return LoopState(**payload["loop"]), payload


# ----------------------------------------------------------------------------- sharded

SHARDED_CHECKPOINT_DIR = "checkpoint"  # torch.distributed.checkpoint: one file per rank
_LOOP_FILE = "loop.json"


def sharded_checkpoint_step(directory: str | Path) -> int | None:
    """The step of the sharded checkpoint in ``directory``, or None if there is none."""
    path = Path(directory) / _LOOP_FILE
    if not path.is_file():
        return None
    return int(read_sharded_meta(directory)["loop"]["step"])


def read_sharded_meta(directory: str | Path) -> dict[str, Any]:
    """A sharded checkpoint's ``loop.json`` (loop position, world size, run config)."""
    path = Path(directory) / _LOOP_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        int(meta["loop"]["step"]) + int(meta["world_size"])  # both present, both numbers
        if not isinstance(meta["config"], dict):
            raise TypeError("config is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint record ({type(err).__name__}); restore it, "
            "or move the folder away to start the run over"
        ) from None
    return meta


def save_sharded_checkpoint(
    directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    loop: LoopState, config: dict[str, Any], rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Every rank writes its shard of the weights and optimizer state with
    ``torch.distributed.checkpoint`` (a collective: all ranks call it), plus its own
    random state; rank 0 adds the loop position and run config.

    Written to a temporary folder that replaces the old one only once every rank is done,
    so a kill mid-write leaves the previous checkpoint whole. The result loads on any
    number of ranks, a single process included.
    """
    directory = Path(directory)
    rank, world = _rank_world()
    tmp = directory.with_name(directory.name + ".tmp")
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_is_fine():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    # Each rank's own data position too: ranks whose shares hold different numbers of
    # unusable samples reach their epochs' ends at different steps.
    own = {"rng": rng if rng is not None else rng_state(), "loop": asdict(loop)}
    torch.save(own, tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        meta = {
            "loop": asdict(loop),
            "world_size": world,
            "config": config,
            "extra": extra or {},
            **model_description(model),
        }
        (tmp / _LOOP_FILE).write_text(json.dumps(meta, indent=1, default=str))
    _barrier()
    if rank == 0:
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            directory.replace(old)
        tmp.replace(directory)
        if old.exists():
            shutil.rmtree(old)
    _barrier()
    return directory


def load_sharded_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> tuple[LoopState, dict[str, Any]]:
    """Restores a sharded checkpoint into ``model`` (sharded or not, on any number of
    ranks) and ``optimizer``. Each rank's random state and data position are restored
    when the number of ranks is the one it was saved with; otherwise every rank takes
    rank 0's position and is seeded from (seed, step, rank). Returns the loop state and
    the checkpoint's metadata."""
    directory = Path(directory)
    meta = read_sharded_meta(directory)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        with _single_process_is_fine():
            dcp.load(state, checkpoint_id=str(directory))
        set_model_state_dict(model, state["model"])
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        with _single_process_is_fine():
            dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])  # fmt: skip
    loop = LoopState(**meta["loop"])
    rank, world = _rank_world()
    rng_file = directory / f"rng-rank{rank}.pt"
    if world == meta["world_size"] and rng_file.is_file():
        own = torch.load(rng_file, weights_only=False)
        set_rng_state(own["rng"])
        loop = LoopState(**own["loop"])
    else:
        seed_everything(seed + 1_000_003 * loop.step + rank)
    return loop, meta


def model_description(model: torch.nn.Module) -> dict[str, Any]:
    """What rebuilds the model from a checkpoint alone: its class name and config."""
    model_config = getattr(model, "config", None)
    return {
        "model_type": unsharded_class(model).__name__,
        "model_config": asdict(model_config) if model_config is not None else None,
    }


@contextmanager
def _single_process_is_fine() -> Iterator[None]:
    # Saving or loading without a process group is how one process resumes a sharded
    # run; torch warns each time that it assumed so.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- run folders


@dataclass
class SavedRun:
    """What a run folder's last checkpoint says of itself, whichever layout holds it."""

    folder: Path  # the run folder
    sharded: bool  # ``checkpoint/`` (torch.distributed.checkpoint) or ``checkpoint.pt``
    config: dict[str, Any]  # the run's settings
    model_type: str | None  # the model's class name (None: written before export existed)
    model_config: dict[str, Any] | None


def saved_run(run: str | Path) -> SavedRun | None:
    """The last checkpoint of the run folder ``run``, without loading its weights
    (None when there is none). A sharded checkpoint, if any, is the one a resume uses."""
    run = Path(run)
    if sharded_checkpoint_step(run / SHARDED_CHECKPOINT_DIR) is not None:
        meta, sharded = read_sharded_meta(run / SHARDED_CHECKPOINT_DIR), True
    elif (run / CHECKPOINT_FILE).is_file():
        meta, sharded = read_checkpoint(run / CHECKPOINT_FILE, mmap=True), False
    else:
        return None
    return SavedRun(run, sharded, meta["config"], meta.get("model_type"), meta.get("model_config"))


def load_saved_weights(saved: SavedRun, model: torch.nn.Module) -> None:
    """Loads the checkpoint's weights into a plain (unsharded) ``model``."""
    if saved.sharded:
        load_sharded_checkpoint(saved.folder / SHARDED_CHECKPOINT_DIR, model)
    else:
        model.load_state_dict(read_checkpoint(saved.folder / CHECKPOINT_FILE)["model"])


class Checkpointer:
    """A run's checkpoints: where they go, when, and how they load.

    One ``checkpoint.pt`` for a single process, a sharded ``checkpoint/`` folder
    (torch.distributed.checkpoint) under torchrun. A run that has a sharded checkpoint
    keeps it, so a run started on N ranks resumes on M, one process included. Written
    every ``every`` updates and at the last one (:meth:`due`).
    """

    def __init__(
        self,
        out_dir: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        run_config: dict[str, Any],
        every: int,
        sharded: bool,
        seed: int,
        ema: torch.nn.Module | None = None,
        scaler: Any = None,  # a BlockGradScaler (fp16), saved beside the weights
        task: Any = None,  # saved beside the weights when it has state_dict/load_state_dict
    ) -> None:
        self.file = out_dir / CHECKPOINT_FILE
        self.folder = out_dir / SHARDED_CHECKPOINT_DIR
        self.model, self.optimizer, self.ema, self.scaler = model, optimizer, ema, scaler
        self.task = task if hasattr(task, "state_dict") else None
        self.run_config, self.every, self.seed = run_config, every, seed
        self.use_folder = sharded or sharded_checkpoint_step(self.folder) is not None
        if self.use_folder and ema is not None:
            raise ValueError(f"{self.folder} is a sharded checkpoint, which does not hold a "
                             "weight average: resume with optim.ema_decay=0")  # fmt: skip

    def due(self, step: int, last: int) -> bool:
        return every_or_last(step, self.every, last)

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        if self.task is not None:
            extra["task"] = self.task.state_dict()
        return extra

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        if self.scaler is not None and "grad_scaler" in extra:
            self.scaler.load_state_dict(extra["grad_scaler"])
        if self.task is not None and "task" in extra:
            self.task.load_state_dict(extra["task"])

    def load(self) -> LoopState | None:
        """Restores the last checkpoint, if any; returns its loop state."""
        if self.use_folder and sharded_checkpoint_step(self.folder) is not None:
            state, meta = load_sharded_checkpoint(self.folder, self.model, self.optimizer,
                                                  self.seed)  # fmt: skip
            self._restore_extra(meta.get("extra", {}))
            log.info("resuming from %s (saved on %d ranks) at step %d",
                     self.folder, meta["world_size"], state.step)  # fmt: skip
            return state
        if self.file.exists():
            if self.use_folder:
                raise ValueError(f"{self.file} is a single-process checkpoint: resume it "
                                 "without torchrun")  # fmt: skip
            state, payload = load_checkpoint(self.file, self.model, self.optimizer, ema=self.ema)
            self._restore_extra(payload.get("extra", {}))
            log.info("resuming from %s at step %d", self.file, state.step)
            return state
        return None

    def save(self, state: LoopState, rng: dict[str, Any] | None = None) -> None:
        if self.use_folder:
            save_sharded_checkpoint(self.folder, self.model, self.optimizer, state,
                                    self.run_config, rng=rng, extra=self._extra())  # fmt: skip
        else:
            save_checkpoint(self.file, self.model, self.optimizer, state, self.run_config,
                            rng=rng, ema=self.ema, extra=self._extra())  # fmt: skip
