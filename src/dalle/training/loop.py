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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dalle.data.datasets import Batch, DataConfig, SkipLog, make_loader, open_source, rebatch
from dalle.interrupts import InterruptGuard
from dalle.training import distributed
from dalle.training.checkpoint import (
    CHECKPOINT_FILE,
    SHARDED_CHECKPOINT_DIR,
    LoopState,
    load_checkpoint,
    load_sharded_checkpoint,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    seed_everything,
    set_rng_state,
    sharded_checkpoint_step,
)
from dalle.training.grad_scaling import BlockGradScaler
from dalle.training.parallelize import (
    ParallelPlan,
    is_sharded,
    parallelize,
    residual_blocks,
    root_unsharded,
    unsharded_copy,
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

    def __post_init__(self) -> None:
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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_precision(device: torch.device, precision: str) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_context(device: torch.device, precision: str):
    precision = resolve_precision(device, precision)
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


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
    world = distributed.current().world_size
    local = distributed.local_batch_size(data.batch_size, world)
    data = dataclasses.replace(data, batch_size=local)
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
    rank = distributed.current()
    out_dir.mkdir(parents=True, exist_ok=True)
    if loop_config.threads:
        torch.set_num_threads(loop_config.threads)
    device = resolve_device(loop_config.device)
    if device.type == "cpu":
        # Tiny probabilities (a confident softmax over thousands of codes) underflow into
        # denormal floats, which CPUs process many times slower; flushing them to zero
        # changes nothing that training can see.
        torch.set_flush_denormal(True)
    precision = resolve_precision(device, loop_config.precision)
    sharded = rank.world_size > 1
    if sharded and optim.ema_decay > 0:
        raise ValueError("optim.ema_decay is not supported with sharded (torchrun) training")
    plan = ParallelPlan(
        activation_checkpointing=loop_config.activation_checkpointing,
        compile=loop_config.compile,
        shard=sharded,
        compute_dtype=_DTYPES[precision],
    )
    model = parallelize(task.model, plan, device)
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
    scaler = BlockGradScaler(model, residual_blocks(model)) if precision == "fp16" else None
    checkpoints = _Checkpoints(out_dir, model, optimizer, ema, scaler, run_config, sharded,
                               loop_config.seed)  # fmt: skip
    state = checkpoints.load()
    if state is None:
        state = LoopState()
        seed_everything(loop_config.seed + rank.rank)
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=rank.is_main)
    metrics.write({"event": "start", "step": state.step, "device": str(device),
                   "world_size": rank.world_size, "precision": precision,
                   "parameters": sum(p.numel() for p in model.parameters())})  # fmt: skip

    # The loop position and random state that go with the weights as they are now: taken
    # after each whole update (evaluation and checkpoint writes leave the random state
    # alone), so an interrupt anywhere checkpoints one consistent step, and the resumed
    # run redoes a step cut short with the same batch and the same random numbers.
    boundary: tuple[LoopState, dict[str, Any]] = (dataclasses.replace(state), rng_state())

    skip_log = SkipLog()
    batches = _batches(data, state, skip_log)
    progress = tqdm(total=loop_config.steps, initial=state.step, unit="step", dynamic_ncols=True,
                    mininterval=2.0, disable=None if rank.is_main else True)  # fmt: skip
    window_start, window_samples = time.perf_counter(), 0
    session_start = time.perf_counter() - state.elapsed_s
    model.train()
    deadline = _deadline(loop_config, state)
    guard = InterruptGuard()
    guard.__enter__()  # left in the finally below
    try:
        while state.step < loop_config.steps:
            position = _schedule_position(loop_config, state)
            if _budget_spent(deadline) or position >= loop_config.steps:
                log.warning(_budget_message(loop_config, state.step))
                break
            lr = warmup_cosine(
                position, optim.warmup_steps, loop_config.steps, optim.lr, optim.final_lr
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            logged: dict[str, float] = {}
            for _ in range(loop_config.grad_accum):
                batch = next(batches)
                with autocast_context(device, precision):
                    loss, step_metrics = task.training_loss(batch, state.step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {state.step}")
                scaled = scaler.scale(loss) if scaler is not None else loss
                (scaled / loop_config.grad_accum).backward()
                for key, value in step_metrics.items():
                    logged[key] = logged.get(key, 0.0) + value / loop_config.grad_accum
                state.samples_seen += len(batch.captions) * rank.world_size
                window_samples += len(batch.captions) * rank.world_size
            finite = scaler.unscale_() if scaler is not None else True
            if optim.grad_clip > 0:
                norm = nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
                logged["grad_norm"] = float(_full(norm))
            with guard.deferred():  # the update and its record, whole or not at all
                if finite:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    logged["skipped_update"] = float(not finite)
                    logged["loss_scale"] = scaler.loss_scale
                    scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                state.step += 1
                state.elapsed_s = time.perf_counter() - session_start
                boundary = (dataclasses.replace(state), rng_state())
            progress.update(1)
            if state.step % loop_config.log_every == 0 or state.step == loop_config.steps:
                logged = distributed.mean_over_ranks(logged)
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
                if progress.disable and rank.is_main:
                    loss_value = logged.get("loss", math.nan)
                    log.info(
                        "step %d/%d  loss %.4f  %.0f img/s  ETA %s",
                        state.step, loop_config.steps, loss_value, rate, _hms(eta),
                    )  # fmt: skip
            if state.step % loop_config.eval_every == 0 or state.step == loop_config.steps:
                evaluated = _evaluate(task, model, ema, state.step, out_dir)
                metrics.write({"step": state.step, "eval": evaluated})
                if rank.is_main:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items())
                    progress.write(f"step {state.step}: {shown}")
            if state.step % loop_config.checkpoint_every == 0 or state.step == loop_config.steps:
                checkpoints.save(state)
    except KeyboardInterrupt:
        progress.close()
        optimizer.zero_grad(set_to_none=True)
        last_state, last_rng = boundary
        if sharded:
            # The other ranks may be anywhere, even inside a collective: saving now could
            # hang. The last periodic checkpoint is where a re-run resumes.
            log.warning("interrupted: run again to resume from the last checkpoint")
        else:
            with guard.deferred():  # a second Ctrl-C waits for this checkpoint
                checkpoints.save(last_state, rng=last_rng)
            log.warning(
                "interrupted: checkpoint written at step %d; run again to resume", last_state.step
            )
        raise
    finally:
        guard.__exit__()
        progress.close()
        if skip_log.total:
            log.warning(skip_log.summary())
    stopped_early = state.step < loop_config.steps  # by the time budget
    if stopped_early:
        checkpoints.save(state)  # the raw weights: the average goes in the checkpoint beside them
        metrics.write(
            {"step": state.step, "eval": _evaluate(task, model, ema, state.step, out_dir)}
        )
    _export(task, model, ema, out_dir)
    metrics.write({"event": "end", "step": state.step, "elapsed_s": state.elapsed_s,
                   "skipped": skip_log.to_json()})  # fmt: skip
    return state


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
    shared = torch.tensor(by_time, dtype=torch.float64, device=distributed.collective_device())
    if distributed.current().world_size > 1:
        torch.distributed.broadcast(shared, src=0)
    return max(float(state.step), float(shared))


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
    spent = torch.tensor(float(time.monotonic() > deadline), device=distributed.collective_device())
    if distributed.current().world_size > 1:
        torch.distributed.broadcast(spent, src=0)
    return bool(spent)


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if isinstance(value, DTensor) else value


def _evaluate(
    task: Task, model: nn.Module, ema: AveragedModel | None, step: int, out_dir: Path
) -> dict[str, float]:
    """Every rank evaluates (a sharded model's forward pass needs them all); files are
    kept from rank 0 only. The random state is put back afterwards, so training draws the
    same numbers whether or not (and however often) it evaluates."""
    model.eval()
    random_state = rng_state()
    try:
        with averaged_weights(model, ema), root_unsharded(model):
            if distributed.current().is_main:
                return task.evaluate(step, out_dir)
            with tempfile.TemporaryDirectory() as scratch:
                return task.evaluate(step, Path(scratch))
    finally:
        set_rng_state(random_state)
        model.train()


def _export(task: Task, model: nn.Module, ema: AveragedModel | None, out_dir: Path) -> None:
    """Writes the trained model; a sharded one is first gathered whole on rank 0."""
    model.eval()
    if not is_sharded(model):
        with averaged_weights(model, ema):
            task.export(out_dir)
        return
    whole = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if distributed.current().is_main:
        plain = unsharded_copy(model, whole)
        task.model = plain
        try:
            task.export(out_dir)
        finally:
            task.model = model
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


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Checkpoints:
    """Where and how a run checkpoints: one ``checkpoint.pt`` for a single process, a
    sharded ``checkpoint/`` folder (torch.distributed.checkpoint) under torchrun. A run
    that has a sharded checkpoint keeps it, so a run started on N ranks resumes on M,
    one process included."""

    def __init__(
        self,
        out_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: AveragedModel | None,
        scaler: BlockGradScaler | None,
        run_config: dict[str, Any],
        sharded: bool,
        seed: int,
    ) -> None:
        self.file = out_dir / CHECKPOINT_FILE
        self.folder = out_dir / SHARDED_CHECKPOINT_DIR
        self.model, self.optimizer, self.ema, self.scaler = model, optimizer, ema, scaler
        self.run_config, self.seed = run_config, seed
        self.use_folder = sharded or sharded_checkpoint_step(self.folder) is not None
        if self.use_folder and ema is not None:
            raise ValueError(f"{self.folder} is a sharded checkpoint, which does not hold a "
                             "weight average: resume with optim.ema_decay=0")  # fmt: skip

    def _extra(self) -> dict[str, Any]:
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        if self.scaler is not None and "grad_scaler" in extra:
            self.scaler.load_state_dict(extra["grad_scaler"])

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
