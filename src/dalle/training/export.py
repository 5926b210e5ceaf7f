"""A training checkpoint, sharded or not, as a model folder that generation loads.

The training loop exports its model when it finishes; this is for a run that has not
finished (a long one still going, or one that was killed): its last checkpoint becomes
``config.json`` + ``model.safetensors``, gathered whole in a single process whatever
number of ranks wrote it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dalle.models.pretrained import config_from_dict
from dalle.models.registry import MODEL_CLASSES
from dalle.training.checkpoint import (
    CHECKPOINT_FILE,
    SHARDED_CHECKPOINT_DIR,
    load_sharded_checkpoint,
    read_checkpoint,
    read_sharded_meta,
    sharded_checkpoint_step,
)


def export_checkpoint(run: Path, out: Path) -> Path:
    """Writes ``run``'s last checkpoint to ``out``; a transformer run also gets the
    tokenizer and dVAE it was trained with, so ``out`` is self-contained."""
    folder = run / SHARDED_CHECKPOINT_DIR
    if sharded_checkpoint_step(folder) is not None:
        meta = read_sharded_meta(folder)
        model = _build(meta["model_type"], meta["model_config"])
        load_sharded_checkpoint(folder, model)
        run_config = meta["config"]
    elif (run / CHECKPOINT_FILE).is_file():
        payload = read_checkpoint(run / CHECKPOINT_FILE)
        if "model_type" not in payload:
            raise ValueError(f"{run / CHECKPOINT_FILE} predates export support: finish the run")
        model = _build(payload["model_type"], payload["model_config"])
        model.load_state_dict(payload["model"])
        run_config = payload["config"]
    else:
        raise FileNotFoundError(f"no training checkpoint in {run}")
    model.save_pretrained(out)  # type: ignore[operator]
    for part in ("tokenizer", "image_tokenizer"):
        source = run_config.get(part)
        if isinstance(source, str) and source and Path(source).is_dir():
            shutil.copytree(source, out / part, dirs_exist_ok=True)
    return out


def _build(model_type: str, model_config: dict) -> torch.nn.Module:
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"checkpoint holds an unknown model type {model_type!r}")
    cls = MODEL_CLASSES[model_type]
    return cls(config_from_dict(cls.config_class, model_config))  # type: ignore[attr-defined,call-arg]
