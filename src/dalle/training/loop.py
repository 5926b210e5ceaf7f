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
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dalle.data.datasets import (
    Batch,
    DataConfig,
    SkipLog,
    local_batch_size,
    make_loader,
    open_source,
    rebatch,
    training_data,
)
from dalle.interrupts import InterruptGuard
from dalle.models.protocol import weight_decay_groups
from dalle.precision import DTYPES, PRECISIONS, autocast_context, resolve_precision
from dalle.training import distributed
from dalle.training.checkpoint import Checkpointer, LoopState, rng_state, seed_everything
from dalle.training.evaluator import Evaluator
from dalle.training.grad_scaling import BlockGradScaler
from dalle.training.parallelize import ParallelPlan, parallelize, residual_blocks
from dalle.training.schedules import every_or_last, warmup_cosine

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


def optim_defaults(**values: Any) -> Any:
    """A train config's ``optim`` field, with its stage's own defaults."""
    return field(default_factory=lambda: OptimConfig(**values))


ATTENTION_KERNELS = ("auto", "math")


@dataclass
class LoopConfig:
    steps: int = 1000  # optimizer updates
    grad_accum: int = 1  # batches per update
    # "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", or "fp16" (with one dynamic
    # gradient scale per residual block, as the paper trained)
    precision: str = "auto"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    # Wall-time budget for this session of the run; when spent, the loop checkpoints,
    # evaluates and exports, and a re-run continues. 0 means no budget.
    max_minutes: float = 0.0
    # "steps": the learning-rate schedule runs over loop.steps, and a spent time budget
    # stops it wherever it is (a slow machine ends on a high learning rate). "time" (needs
    # max_minutes): the schedule runs over whichever ends first, loop.steps or
    # max_minutes of training in all (every session of the run together), so a slower
    # machine makes fewer updates but still anneals; the run then stops at the budget.
    schedule_clock: str = "steps"
    activation_checkpointing: bool = False  # recompute block activations: less memory
    compile: bool = False  # torch.compile each residual block
    # The kernel of scaled_dot_product_attention in training and evaluation: "auto" lets
    # PyTorch choose (a fused flash kernel on the CPU), "math" the plain matrix products.
    # On this 2-core CPU "math" is about twice as fast for sequences up to ~100 tokens
    # (the demo's 88) and half as fast from 256 on (BENCHMARKS.md).
    attention_kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.attention_kernel not in ATTENTION_KERNELS:
            kernels = ", ".join(ATTENTION_KERNELS)
            raise ValueError(f"loop.attention_kernel must be one of {kernels}, "
                             f"not {self.attention_kernel!r}")  # fmt: skip
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"loop.precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if (
            min(self.steps, self.grad_accum, self.log_every, self.eval_every, self.checkpoint_every)
            < 1
        ):
            raise ValueError("loop.steps, grad_accum and the *_every intervals must be at least 1")
        if self.schedule_clock not in ("steps", "time"):
            raise ValueError(
                f"loop.schedule_clock must be steps or time, not {self.schedule_clock!r}"
            )
        if self.schedule_clock == "time" and self.max_minutes <= 0:
            raise ValueError("loop.schedule_clock=time needs a time budget (loop.max_minutes)")


@dataclass
class RunConfig:
    """What every trained stage's settings begin with: its preset, data and loop. Each
    stage adds its model, its optimizer defaults (`optim_defaults`), its evaluation and
    its own options."""

    preset: str = ""
    data: DataConfig = training_data()
    loop: LoopConfig = field(default_factory=LoopConfig)


# Scalars a task reports for one batch: tensors (read back from the device only when the
# loop logs, so an update costs no host sync) or plain numbers (a schedule's value).
Metrics = dict[str, torch.Tensor | float]


class Task(Protocol):
    """What the loop needs from a model family.

    A task that keeps state of its own from one update to the next may also define
    ``after_update(position)``, called once the optimizer has stepped, as part of the
    update (an interrupt lands before or after it, never inside), and should change that
    state only there; with ``state_dict()`` (JSON-safe values) and
    ``load_state_dict(state)`` checkpoints keep it, so a resumed run goes on exactly."""

    model: nn.Module

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        """The loss to minimise on one batch, and scalar metrics to log (its ``loss``
        among them). ``position`` is where the run's schedules stand, in updates: the
        update count, or further on when the schedules follow the clock."""
        ...

    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Held-out metrics (and any images written under ``out_dir``)."""
        ...

    def export(self, out_dir: Path, model: nn.Module) -> None:
        """Writes ``model`` (the trained weights, whole, on one device) in its published
        format."""
        ...


def resolve_device(name: str) -> torch.device:
    """``auto``: this rank's GPU if there is one, else the CPU. A device this machine
    does not have is a ValueError that says so."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this torch build or machine has no CUDA GPU")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type not in ("cpu", "meta"):
        backend = getattr(torch, device.type, None)
        if backend is None or not backend.is_available():
            raise ValueError(f"device {name!r} is not available on this machine")
    return device


def _batches(data: DataConfig, loop: LoopState, skip_log: SkipLog) -> Iterator[Batch]:
    """This rank's batches from the loop's position on, epoch after epoch.

    Each epoch's order depends only on (seed, epoch), and the loader draws from its own
    generator, never the global one; resuming replays the epoch's first batches and
    discards them, so the data order after a resume is the one without the stop.
    ``data.batch_size`` is the global batch; each of N ranks reads its own 1/N of it.
    Batches are always full: the samples of short loader batches (skips, a worker's last
    batch) are carried into the next, and the epoch's remainder is dropped, its skips
    counted.
    """
    local = local_batch_size(data.batch_size, distributed.current().world_size)
    dataset = open_source(data, split_by_rank=True)
    skip_log.add(getattr(dataset, "index_skips", []))  # what indexing found missing
    while True:
        if hasattr(dataset, "epoch"):
            dataset.epoch = loop.epoch  # WebDataset shard/sample shuffle seed
        config = dataclasses.replace(data, seed=data.seed + loop.epoch)
        loader = make_loader(dataset, config, split_by_rank=True)
        produced = False
        for index, batch in enumerate(rebatch(iter(loader), local)):
            if index < loop.batches_in_epoch:
                continue  # replayed after a resume; its skips were counted before the stop
            skip_log.add(batch.skipped)
            if len(batch) < local:
                break  # the epoch's remainder
            produced = True
            loop.batches_in_epoch = index + 1
            yield batch
        if not produced and loop.batches_in_epoch == 0:
            raise ValueError(
                f"data source {data.source!r} has fewer usable samples than one batch of "
                f"{local} (see `dalle data check`)"
            )
        loop.epoch += 1
        loop.batches_in_epoch = 0


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only).

    A line torn by a kill mid-append or a full disk is cut off when the log is opened,
    so the next record starts on a line of its own.
    """

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            repair_torn_tail(path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def repair_torn_tail(path: Path) -> None:
    """Truncates ``path`` after its last complete line if what follows it is not one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write",
                path, len(data) - keep)  # fmt: skip
    with open(path, "r+b") as handle:
        handle.truncate(keep)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; lines that are not JSON objects (a torn write)
    are left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def train(
    task: Task,
    data: DataConfig,
    loop_config: LoopConfig,
    optim: OptimConfig,
    out_dir: Path,
    run_config: dict[str, Any],
) -> LoopState:
    """Trains ``task.model`` to ``loop_config.steps`` updates, resuming if it can.

    Under torchrun every rank calls this; the model is parallelised (sharded over the
    ranks), rank 0 alone writes logs and exports, and checkpoints are sharded. Returns the
    final loop state. A KeyboardInterrupt (or SIGTERM) writes a checkpoint first.
    """
    trainer = Trainer(task, loop_config, optim, out_dir, run_config)
    return trainer.run(data)


class Trainer:
    """One session of a run: the parallelised model, its optimizer, weight average and
    gradient scaler, the checkpointer and the evaluator, and the loop's position."""

    def __init__(
        self,
        task: Task,
        loop: LoopConfig,
        optim: OptimConfig,
        out_dir: Path,
        run_config: dict[str, Any],
    ) -> None:
        self.task, self.loop, self.optim, self.out_dir = task, loop, optim, out_dir
        self.rank = distributed.current()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.device = _prepare_device(loop)
        self.precision = resolve_precision(self.device, loop.precision)
        # Under torchrun the model is sharded even over one rank: the same code path
        # (process group, FSDP2, sharded checkpoints) as many ranks.
        sharded = self.rank.enabled
        if sharded and optim.ema_decay > 0:
            raise ValueError("optim.ema_decay is not supported with sharded (torchrun) training")
        plan = ParallelPlan(activation_checkpointing=loop.activation_checkpointing,
                            compile=loop.compile, shard=sharded,
                            compute_dtype=DTYPES[self.precision])  # fmt: skip
        self.model = parallelize(task.model, plan, self.device)
        self.optimizer = torch.optim.AdamW(weight_decay_groups(task.model, optim.weight_decay),
                                           lr=optim.lr, betas=(optim.betas[0], optim.betas[1]),
                                           eps=optim.eps)  # fmt: skip
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(optim.ema_decay))
                    if optim.ema_decay > 0 else None)  # fmt: skip
        self.scaler = (BlockGradScaler(self.model, residual_blocks(self.model))
                       if self.precision == "fp16" else None)  # fmt: skip
        self.checkpoints = Checkpointer(out_dir, self.model, self.optimizer, run_config,
                                        loop.checkpoint_every, sharded, loop.seed, self.ema,
                                        self.scaler, task)  # fmt: skip
        self.evaluator = Evaluator(
            task,
            self.model,
            self.ema,
            out_dir,
            loop.eval_every,
            self.compute,
        )
        state = self.checkpoints.load()
        if state is None:
            state = LoopState()
            seed_everything(loop.seed + self.rank.rank)
        self.state = state
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=self.rank.is_main)
        self.skip_log = SkipLog()
        self.guard = InterruptGuard()
        # Set on the device when a loss is not finite; read (one host sync) only before
        # anything is logged or written, so that no checkpoint or export holds its effect.
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.checked_step = state.step
        # The loop position and random state that go with the weights as they are now:
        # taken after each whole update (evaluation and checkpoint writes leave the random
        # state alone), so an interrupt anywhere checkpoints one consistent step, and the
        # resumed run redoes a step cut short with the same batch and random numbers.
        self.boundary: tuple[LoopState, dict[str, Any]] = (dataclasses.replace(state),
                                                           rng_state())  # fmt: skip

    def run(self, data: DataConfig) -> LoopState:
        """Updates until ``loop.steps`` or the time budget; then evaluates if the budget
        cut the run short, exports, and records the end."""
        state, loop = self.state, self.loop
        parameters = sum(p.numel() for p in self.model.parameters())
        self.metrics.write({"event": "start", "step": state.step, "device": str(self.device),
                            "world_size": self.rank.world_size, "precision": self.precision,
                            "parameters": parameters})  # fmt: skip
        batches = _batches(data, state, self.skip_log)
        self.progress = tqdm(total=loop.steps, initial=state.step, unit="step",
                             dynamic_ncols=True, mininterval=2.0,
                             disable=None if self.rank.is_main else True)  # fmt: skip
        self.model.train()
        with self.guard:
            try:
                self._updates(batches)
            except KeyboardInterrupt:
                self._save_on_interrupt()
                raise
            finally:
                self.progress.close()
                if self.skip_log.total:
                    log.warning(self.skip_log.summary())
        self._check_finite()
        if state.step < loop.steps:  # stopped by the time budget
            self.checkpoints.save(state)  # the raw weights; the average goes beside them
            self.metrics.write({"step": state.step, "eval": self.evaluator.evaluate(state.step)})
        self.evaluator.export()
        self.metrics.write({"event": "end", "step": state.step, "elapsed_s": state.elapsed_s,
                            "skipped": self.skip_log.to_json()})  # fmt: skip
        return state

    def _updates(self, batches: Iterator[Batch]) -> None:
        state, loop = self.state, self.loop
        deadline = _deadline(loop, state)
        session_start = time.perf_counter() - state.elapsed_s
        window = _Window(time.perf_counter())
        while state.step < loop.steps:
            position = _schedule_position(loop, state)
            if _budget_spent(deadline) or position >= loop.steps:
                log.warning(_budget_message(loop, state.step))
                break
            lr = warmup_cosine(position, self.optim.warmup_steps, loop.steps, self.optim.lr,
                               self.optim.final_lr)  # fmt: skip
            step_metrics, samples = self.train_step(batches, lr, position)
            state.elapsed_s = time.perf_counter() - session_start
            window.samples += samples
            self.progress.update(1)
            last = loop.steps
            if every_or_last(state.step, loop.log_every, last):
                # The logged update's metrics, read back from the device only now: the
                # updates in between cost no host sync.
                self._check_finite()
                self._log(_to_floats(step_metrics), lr, window)
            if self.evaluator.due(state.step, last):
                self._check_finite()
                evaluated = self.evaluator.evaluate(state.step)
                self.metrics.write({"step": state.step, "eval": evaluated})
                if self.rank.is_main:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items())
                    self.progress.write(f"step {state.step}: {shown}")
            if self.checkpoints.due(state.step, last):
                self._check_finite()
                self.checkpoints.save(state)

    def compute(self) -> AbstractContextManager:
        """Where the loss is computed: the run's autocast and attention kernel."""
        stack = ExitStack()
        stack.enter_context(autocast_context(self.device, self.precision))
        if self.loop.attention_kernel == "math":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return stack

    def train_step(
        self, batches: Iterator[Batch], lr: float, position: float
    ) -> tuple[dict[str, torch.Tensor | float], int]:
        """One optimizer update over ``loop.grad_accum`` batches at learning rate ``lr``,
        the schedules at ``position``.
        Returns the update's metrics (tensors, not yet read back from the device) and the
        samples it consumed over all ranks."""
        loop, state = self.loop, self.state
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        metrics: dict[str, torch.Tensor | float] = {}
        samples = 0
        for _ in range(loop.grad_accum):
            batch = next(batches)
            with self.compute():
                loss, batch_metrics = self.task.training_loss(batch, position)
            scaled = self.scaler.scale(loss) if self.scaler is not None else loss
            (scaled / loop.grad_accum).backward()
            self.nonfinite |= ~torch.isfinite(loss.detach())
            _accumulate(metrics, batch_metrics, 1 / loop.grad_accum)
            samples += len(batch.captions) * self.rank.world_size
        finite = self.scaler.unscale_() if self.scaler is not None else True
        if self.optim.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
            metrics["grad_norm"] = _full(norm).detach()
        with self.guard.deferred():  # the update and its record, whole or not at all
            if finite:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                metrics["skipped_update"] = float(not finite)
                metrics["loss_scale"] = self.scaler.loss_scale
                self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if hasattr(self.task, "after_update"):
                self.task.after_update(position)
            state.step += 1
            state.samples_seen += samples
            self.boundary = (dataclasses.replace(state), rng_state())
        return metrics, samples

    def _check_finite(self) -> None:
        """Stops the run if a loss since the last check was nan or infinite."""
        if bool(self.nonfinite):
            raise FloatingPointError(
                f"the loss became nan or infinite between steps {self.checked_step} and "
                f"{self.state.step}; the last checkpoint holds the weights from before"
            )
        self.checked_step = self.state.step

    def _log(self, logged: dict[str, float], lr: float, window: _Window) -> None:
        state, loop = self.state, self.loop
        logged = distributed.mean_over_ranks(logged)
        rate = window.rate(time.perf_counter())
        self.metrics.write({"step": state.step, "lr": lr, "images_per_s": rate,
                            "elapsed_s": state.elapsed_s, **logged})  # fmt: skip
        self.progress.set_postfix(loss=f"{logged.get('loss', math.nan):.4f}", img_s=f"{rate:.0f}")
        if self.progress.disable and self.rank.is_main:
            eta = (loop.steps - state.step) * state.elapsed_s / max(state.step, 1)
            log.info("step %d/%d  loss %.4f  %.0f img/s  ETA %s", state.step, loop.steps,
                     logged.get("loss", math.nan), rate, _hms(eta))  # fmt: skip

    def _save_on_interrupt(self) -> None:
        self.progress.close()
        self.optimizer.zero_grad(set_to_none=True)
        last_state, last_rng = self.boundary
        if self.rank.enabled:
            # The other ranks may be anywhere, even inside a collective: saving now could
            # hang. The last periodic checkpoint is where a re-run resumes.
            log.warning("interrupted: run again to resume from the last checkpoint")
            return
        with self.guard.deferred():  # a second Ctrl-C waits for this checkpoint
            self.checkpoints.save(last_state, rng=last_rng)
        log.warning("interrupted: checkpoint written at step %d; run again to resume",
                    last_state.step)  # fmt: skip


@dataclass
class _Window:
    """Samples seen since the last log, for the throughput it reports."""

    start: float
    samples: int = 0

    def rate(self, now: float) -> float:
        rate = self.samples / max(now - self.start, 1e-9)
        self.start, self.samples = now, 0
        return rate


def _prepare_device(loop: LoopConfig) -> torch.device:
    if loop.threads:
        torch.set_num_threads(loop.threads)
    device = resolve_device(loop.device)
    if device.type == "cpu":
        # Tiny probabilities (a confident softmax over thousands of codes) underflow into
        # denormal floats, which CPUs process many times slower; flushing them to zero
        # changes nothing that training can see.
        torch.set_flush_denormal(True)
    return device


def _accumulate(
    into: dict[str, torch.Tensor | float], values: dict[str, torch.Tensor | float], weight: float
) -> None:
    """``into[k] += weight * values[k]``, tensors kept on their device."""
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        into[key] = into.get(key, 0.0) + value * weight


def _to_floats(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Reads every tensor metric back from the device at once (one sync)."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([metrics[k].reshape(()) for k in keys]).tolist()  # type: ignore[union-attr]
        out.update(zip(keys, values, strict=True))
    return {k: out[k] for k in metrics}


def _deadline(config: LoopConfig, state: LoopState) -> float:
    """When this session must stop, on the ``time.monotonic`` clock: ``max_minutes`` from
    now, or, when the schedule follows the clock, what is left of the run's budget."""
    if not config.max_minutes:
        return math.inf
    spent = state.elapsed_s if config.schedule_clock == "time" else 0.0
    return time.monotonic() + 60 * config.max_minutes - spent


def _schedule_position(config: LoopConfig, state: LoopState) -> float:
    """Where the learning-rate schedule stands, in steps: the step itself, or, when the
    schedule follows the clock, the share of the time budget spent if that is further on
    (rank 0's clock for every rank, so that all ranks use one learning rate)."""
    if config.schedule_clock != "time":
        return float(state.step)
    by_time = config.steps * state.elapsed_s / (60 * config.max_minutes)
    if distributed.current().enabled:
        shared = torch.tensor(by_time, dtype=torch.float64, device=distributed.collective_device())
        torch.distributed.broadcast(shared, src=0)
        by_time = float(shared)
    return max(float(state.step), by_time)


def _budget_message(config: LoopConfig, step: int) -> str:
    """What a spent budget did to the run, in words a user can act on."""
    head = (f"time budget of {config.max_minutes:g} min spent: "
            f"{step:,} of {config.steps:,} updates ran")  # fmt: skip
    if config.schedule_clock == "time":
        return f"{head}; the learning rate followed the clock and finished its decay"
    return (f"{head}; the learning rate stopped at its value for update {step:,} "
            f"(loop.schedule_clock=time would finish the decay in the budget)")  # fmt: skip


def _budget_spent(deadline: float) -> bool:
    """Whether the wall-time budget is spent, decided by rank 0 for every rank (ranks that
    stopped at different steps would wait on each other forever)."""
    if deadline == math.inf:
        return False
    spent = time.monotonic() > deadline
    if distributed.current().world_size == 1:
        return spent
    shared = torch.tensor(float(spent), device=distributed.collective_device())
    torch.distributed.broadcast(shared, src=0)
    return bool(shared)


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if isinstance(value, DTensor) else value


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
