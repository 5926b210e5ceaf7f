"""One entry point for every trainer: resume check, seeding, the loop, and a summary.

The CLI commands (`dalle train-vae`, `dalle train`, `dalle train-clip`) and `make demo`
all go through :func:`run_training`, so a run started from either resumes from the other.

A run folder keeps the record of how it began: ``train_config.yaml`` is written once, by
the first session. A later session resumes only with the settings the checkpoint was
trained with, and with the same input folders (image and caption tokenizers: compared by content),
except for settings that change how long the run goes or how it reports
(:data:`FREE_TO_CHANGE`). Anything else is refused unless ``allow_changes`` is given;
every accepted change is logged and appended to ``config_changes.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dalle.config import ConfigError, save_config
from dalle.files import folder_hash
from dalle.training.checkpoint import saved_run, seed_everything
from dalle.training.distributed import init_distributed
from dalle.training.loop import LoopState, read_metrics, resolve_device, train

if TYPE_CHECKING:
    from dalle.training.stages import StageSpec

log = logging.getLogger(__name__)

CONFIG_RECORD = "train_config.yaml"
CHANGES_FILE = "config_changes.jsonl"
# Dotted settings (or prefixes ending in ".") a resume may change without a flag: they
# decide how long the run goes, where, and what it reports, not what it learns.
FREE_TO_CHANGE = (
    "loop.steps", "loop.max_minutes", "loop.log_every", "loop.eval_every",
    "loop.checkpoint_every", "loop.threads", "loop.device", "data.num_workers", "eval.",
)  # fmt: skip


def config_changes(saved: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple]:
    """``{dotted key: (saved value, new value)}`` for every setting that differs. Input
    fingerprints are compared only when the saved run has them."""
    old, new = _flatten(saved), _flatten(config)
    if not any(k.startswith("inputs.") for k in old):
        new = {k: v for k, v in new.items() if not k.startswith("inputs.")}
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)}  # fmt: skip


def is_free(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE_TO_CHANGE)


def check_resumable(out: Path, config: dict[str, Any], allow_changes: bool = False) -> dict:
    """Refuses to resume a run whose settings or inputs differ from its checkpoint's,
    except those free to change or, with ``allow_changes``, any. Returns the accepted
    changes (empty for a new run)."""
    saved = saved_run(out)
    if saved is None:
        return {}
    changes = config_changes(saved.config, config)
    refused = {k: v for k, v in changes.items() if not is_free(k)}
    if refused and not allow_changes:
        shown = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"{out} holds a checkpoint trained with other settings ({shown}); resume with "
            "the same settings, use a new --out, or pass --allow-changes to go on anyway"
        )
    return changes


def input_fingerprints(config: Any, keys: tuple[str, ...]) -> dict[str, str]:
    """A content hash of each input folder (config ``keys``) the config names."""
    prints = {}
    for key in keys:
        folder = getattr(config, key, None)
        if isinstance(folder, str) and folder and Path(folder).is_dir():
            prints[key] = folder_hash(Path(folder))
    return prints


def final_eval(out: Path) -> dict[str, float]:
    """The last evaluation a run logged to its metrics.jsonl (empty if none)."""
    records = read_metrics(out / "metrics.jsonl")
    return next((r["eval"] for r in reversed(records) if "eval" in r), {})


def run_training(
    stage: StageSpec, config: Any, out: Path, allow_changes: bool = False
) -> LoopState:
    """Trains (or resumes) ``stage`` with ``config`` into ``out``; prints a summary.

    Launched by torchrun, every rank runs this: the ranks join one process group and
    share each global batch (``data.batch_size``), and rank 0 alone writes and prints.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a run folder")
    stage.check_inputs(config)
    rank = init_distributed(config.loop.device)
    device = resolve_device(config.loop.device)
    # The model's initial weights depend on the seed; every rank builds the same model.
    seed_everything(config.loop.seed)
    task = stage.build_task(config, device)  # may fill derived config fields
    folders = (*stage.inputs, *stage.optional_inputs)
    run_config = {**dataclasses.asdict(config), "inputs": input_fingerprints(config, folders)}
    changes = check_resumable(out, run_config, allow_changes)
    if rank.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _record(out, config, changes)
    try:
        state = train(task, config.data, config.loop, config.optim, out, run_config)
        if rank.enabled:
            # Every rank's last collective done before any tears the group down: a rank that
            # exits while gloo's threads still serve its peer aborts (SIGABRT) at exit.
            torch.distributed.barrier()
    finally:
        if rank.enabled:
            torch.distributed.destroy_process_group()
    if rank.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in final_eval(out).items())
        print(f"trained {state.step} steps in {state.elapsed_s:.0f}s; held-out {summary}")
        print(f"model saved to {out} (config.json + model.safetensors)")
    return state


def _record(out: Path, config: Any, changes: dict[str, tuple]) -> None:
    """Keeps how the run began (written once) and what each resume changed."""
    if not (out / CONFIG_RECORD).exists():
        save_config(config, out / CONFIG_RECORD)
    if not changes:
        return
    for key, (old, new) in changes.items():
        log.warning("resuming with %s changed: %s -> %s", key, _short(old), _short(new))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changes}
    with open(out / CHANGES_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): list(tree) if isinstance(tree, tuple) else tree}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
