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
from dalle.training.checkpoint import CHECKPOINT_FILE, load_saved_weights, saved_run
from dalle.training.stages import StageSpec, stage_of_model


def export_checkpoint(run: Path, out: Path) -> Path:
    """Writes ``run``'s last checkpoint to ``out``, with the trained folders its stage
    reads (a transformer's caption and image tokenizers), so ``out`` is self-contained."""
    saved = saved_run(run)
    if saved is None:
        raise FileNotFoundError(f"no training checkpoint in {run}")
    if saved.model_type is None or saved.model_config is None:
        raise ValueError(f"{run / CHECKPOINT_FILE} predates export support: finish the run")
    stage = _stage(saved.model_type)
    model = _build(stage, saved.model_config)
    load_saved_weights(saved, model)
    model.save_pretrained(out)  # type: ignore[operator]
    for part in (*stage.inputs, *stage.optional_inputs):
        source = saved.config.get(part)
        if isinstance(source, str) and source and Path(source).is_dir():
            shutil.copytree(source, out / part, dirs_exist_ok=True)
    return out


def _stage(model_type: str) -> StageSpec:
    try:
        return stage_of_model(model_type)
    except ValueError:
        raise ValueError(f"checkpoint holds an unknown model type {model_type!r}") from None


def _build(stage: StageSpec, model_config: dict) -> torch.nn.Module:
    cls = stage.model_class
    return cls(config_from_dict(cls.config_class, model_config))  # type: ignore[attr-defined,call-arg]
