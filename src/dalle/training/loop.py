"""A training loop that knows nothing of any particular model.

A :class:`Task` supplies the model, its loss on a batch, and what to do at evaluation and
export time; the loop owns the optimizer, learning-rate schedule, mixed precision,
gradient accumulation and clipping, progress, metrics, and checkpoints that resume
exactly: after a kill, re-running the same command continues from the last checkpoint
with the same data order and random numbers as if it had never stopped. (Steps between
the last checkpoint and a hard kill are redone, so ``metrics.jsonl`` may list a step
twice; the later line is the one that counts.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dalle.data.datasets import Batch, DataConfig, SkipLog, make_loader, open_source
from dalle.training.checkpoint import (
    CHECKPOINT_FILE,
    LoopState,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
)
from dalle.training.schedules import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay of the learning rate."""

    lr: float = 1e-3
    final_lr: float = 1e-5
    warmup_steps: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-4
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    # Exponential moving average of the weights, used for evaluation and export; 0 is off.
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas needs two values, got {list(self.betas)}")
        if self.lr <= 0 or self.final_lr < 0:
            raise ValueError("optim.lr must be positive and optim.final_lr not negative")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in [0, 1), not {self.ema_decay}")


@dataclass
class LoopConfig:
    steps: int = 1000  # optimizer updates
    grad_accum: int = 1  # batches per update
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "fp32" or "bf16"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    # Wall-time budget for this session of the run; when spent, the loop checkpoints,
    # evaluates and exports, and a re-run continues. 0 means no budget.
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"loop.precision must be auto, fp32 or bf16, not {self.precision!r}")
        if (
            min(self.steps, self.grad_accum, self.log_every, self.eval_every, self.checkpoint_every)
            < 1
        ):
            raise ValueError("loop.steps, grad_accum and the *_every intervals must be at least 1")


class Task(Protocol):
    """What the loop needs from a model family."""

    model: nn.Module

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]: ...

    def training_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on one batch, and scalar metrics to log."""
        ...

    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Held-out metrics (and any images written under ``out_dir``)."""
        ...

    def export(self, out_dir: Path) -> None:
        """Writes the trained model in its published format."""
        ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; use auto, fp32 or bf16")


def _batches(data: DataConfig, loop: LoopState, skip_log: SkipLog) -> Iterator[Batch]:
    """Batches from the loop's position on, epoch after epoch.

    Each epoch's order depends only on (seed, epoch), and the loader draws from its own
    generator, never the global one; resuming replays the epoch's first batches and
    discards them, so the data order after a resume is the one without the stop.
    """
    dataset = open_source(data)
    skip_log.add(getattr(dataset, "index_skips", []))  # what indexing a folder found missing
    while True:
        if hasattr(dataset, "epoch"):
            dataset.epoch = loop.epoch  # WebDataset shard/sample shuffle seed
        config = dataclasses.replace(data, seed=data.seed + loop.epoch)
        loader = make_loader(dataset, config, drop_last=True)
        produced = False
        for index, batch in enumerate(loader):
            if index < loop.batches_in_epoch:
                continue
            produced = True
            skip_log.add(batch.skipped)
            loop.batches_in_epoch = index + 1
            yield batch
        if not produced and loop.batches_in_epoch == 0:
            raise RuntimeError(f"data source {data.source!r} yielded no complete batch")
        loop.epoch += 1
        loop.batches_in_epoch = 0


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def train(
    task: Task,
    data: DataConfig,
    loop_config: LoopConfig,
    optim: OptimConfig,
    out_dir: Path,
    run_config: dict[str, Any],
) -> LoopState:
    """Trains ``task.model`` to ``loop_config.steps`` updates, resuming if it can.

    Returns the final loop state. A KeyboardInterrupt writes a checkpoint first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if loop_config.threads:
        torch.set_num_threads(loop_config.threads)
    device = resolve_device(loop_config.device)
    if device.type == "cpu":
        # Tiny probabilities (a confident softmax over thousands of codes) underflow into
        # denormal floats, which CPUs process many times slower; flushing them to zero
        # changes nothing that training can see.
        torch.set_flush_denormal(True)
    model = task.model
    optimizer = torch.optim.AdamW(
        task.parameter_groups(optim.weight_decay),
        lr=optim.lr,
        betas=(optim.betas[0], optim.betas[1]),
        eps=optim.eps,
    )
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(optim.ema_decay))
        if optim.ema_decay > 0
        else None
    )
    checkpoint_path = out_dir / CHECKPOINT_FILE
    state = LoopState()
    if checkpoint_path.exists():
        state, _ = load_checkpoint(checkpoint_path, model, optimizer, ema=ema)
        log.info("resuming from %s at step %d", checkpoint_path, state.step)
    else:
        seed_everything(loop_config.seed)
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    metrics.write({"event": "start", "step": state.step, "device": str(device),
                   "parameters": sum(p.numel() for p in model.parameters())})  # fmt: skip

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, model, optimizer, state, run_config, ema=ema)

    # The loop position and random state at the start of the step in progress: an
    # interrupt mid-step checkpoints these, so the resumed run redoes that step with the
    # same batch and the same random numbers.
    boundary: tuple[LoopState, dict[str, Any]] = (dataclasses.replace(state), rng_state())

    skip_log = SkipLog()
    batches = _batches(data, state, skip_log)
    progress = tqdm(total=loop_config.steps, initial=state.step, unit="step", dynamic_ncols=True,
                    mininterval=2.0, disable=None)  # fmt: skip
    window_start, window_samples = time.perf_counter(), 0
    session_start = time.perf_counter() - state.elapsed_s
    model.train()
    deadline = (
        time.monotonic() + 60 * loop_config.max_minutes if loop_config.max_minutes else math.inf
    )
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while state.step < loop_config.steps:
            if time.monotonic() > deadline:
                log.warning(
                    "time budget of %.1f min spent at step %d", loop_config.max_minutes, state.step
                )
                break
            boundary = (dataclasses.replace(state), rng_state())
            lr = warmup_cosine(
                state.step, optim.warmup_steps, loop_config.steps, optim.lr, optim.final_lr
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            logged: dict[str, float] = {}
            for _ in range(loop_config.grad_accum):
                batch = next(batches)
                with autocast_context(device, loop_config.precision):
                    loss, step_metrics = task.training_loss(batch, state.step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {state.step}")
                (loss / loop_config.grad_accum).backward()
                for key, value in step_metrics.items():
                    logged[key] = logged.get(key, 0.0) + value / loop_config.grad_accum
                state.samples_seen += len(batch.captions)
                window_samples += len(batch.captions)
            if optim.grad_clip > 0:
                logged["grad_norm"] = float(
                    nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            state.step += 1
            state.elapsed_s = time.perf_counter() - session_start
            progress.update(1)
            if state.step % loop_config.log_every == 0 or state.step == loop_config.steps:
                now = time.perf_counter()
                rate = window_samples / max(now - window_start, 1e-9)
                window_start, window_samples = now, 0
                record = {"step": state.step, "lr": lr, "images_per_s": rate,
                          "elapsed_s": state.elapsed_s, **logged}  # fmt: skip
                metrics.write(record)
                progress.set_postfix(
                    loss=f"{logged.get('loss', float('nan')):.4f}", img_s=f"{rate:.0f}"
                )
                eta = (loop_config.steps - state.step) * state.elapsed_s / max(state.step, 1)
                if progress.disable:
                    loss_value = logged.get("loss", math.nan)
                    log.info(
                        "step %d/%d  loss %.4f  %.0f img/s  ETA %s",
                        state.step, loop_config.steps, loss_value, rate, _hms(eta),
                    )  # fmt: skip
            if state.step % loop_config.eval_every == 0 or state.step == loop_config.steps:
                model.eval()
                with averaged_weights(model, ema):
                    evaluated = task.evaluate(state.step, out_dir)
                model.train()
                metrics.write({"step": state.step, "eval": evaluated})
                progress.write(
                    f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items())
                )
            if state.step % loop_config.checkpoint_every == 0 or state.step == loop_config.steps:
                checkpoint()
    except KeyboardInterrupt:
        progress.close()
        optimizer.zero_grad(set_to_none=True)
        last_state, last_rng = boundary
        save_checkpoint(
            checkpoint_path, model, optimizer, last_state, run_config, rng=last_rng, ema=ema
        )
        log.warning(
            "interrupted: checkpoint written at step %d; run again to resume", last_state.step
        )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        progress.close()
        if skip_log.total:
            log.warning(skip_log.summary())
    stopped_early = state.step < loop_config.steps  # by the time budget
    if stopped_early:
        checkpoint()  # the raw weights: the average goes in the checkpoint beside them
    model.eval()
    with averaged_weights(model, ema):
        if stopped_early:
            metrics.write({"step": state.step, "eval": task.evaluate(state.step, out_dir)})
        task.export(out_dir)
    metrics.write({"event": "end", "step": state.step, "elapsed_s": state.elapsed_s,
                   "skipped": skip_log.to_json()})  # fmt: skip
    return state


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


def _raise_interrupt(signum: int, frame: object) -> None:
    # SIGTERM (a scheduler's kill, `timeout`) stops like Ctrl-C: checkpoint, then exit.
    raise KeyboardInterrupt(f"signal {signum}")


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
