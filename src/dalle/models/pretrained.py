"""The published model format: ``config.json`` + ``model.safetensors`` in a folder.

Training checkpoints (optimizer, schedule, RNG, data position) are kept apart from this,
in :mod:`dalle.training.checkpoint`; this format is what generation and other stages load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_model, save_model

from dalle import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
M = TypeVar("M", bound="PretrainedMixin")


def config_from_dict(config_class: type, data: dict[str, Any]) -> Any:
    """Builds a config dataclass, naming any key it does not know."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys: {', '.join(unknown)}")
    return config_class(**data)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` with a ``config``."""

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "model_type": type(self).__name__,
            "dalle_version": __version__,
            "config": dataclasses.asdict(self.config),
        }
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_model(self, str(tmp))  # type: ignore[arg-type]
        tmp.replace(directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load_config(cls, directory: str | Path) -> Any:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: not a saved model folder")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("model_type") != cls.__name__:
            raise ValueError(f"{directory} holds a {meta.get('model_type')}, not a {cls.__name__}")
        return config_from_dict(cls.config_class, meta["config"])

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | Path, device: str | torch.device = "cpu"
    ) -> M:
        model = cls(cls.load_config(directory))  # type: ignore[call-arg]
        missing, unexpected = load_model(
            model,  # type: ignore[arg-type]
            str(Path(directory) / WEIGHTS_FILE),
            strict=True,
            device=str(device),
        )
        del missing, unexpected  # strict=True already raised on any
        return model.to(device).eval()  # type: ignore[attr-defined,return-value]
