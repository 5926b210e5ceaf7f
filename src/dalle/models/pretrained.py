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
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from dalle import __version__
from dalle.config import ConfigError, load_config
from dalle.models import init

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
M = TypeVar("M", bound="PretrainedMixin")


def config_from_dict(config_class: type, data: dict[str, Any], origin: str = "config") -> Any:
    """Builds a config dataclass from plain data, checked against its typed fields: an
    unknown key, a missing one or a value of the wrong type is a ValueError that names it
    (``origin`` says where the data came from)."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: the model config must be a mapping, not {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{origin}: unknown {config_class.__name__} keys: {', '.join(unknown)}")
    try:
        return load_config(config_class, overrides=(), base=None, data=data)
    except ConfigError as err:
        raise ValueError(f"{origin}: {str(err).removeprefix('config: ')}") from None


def model_type(directory: str | Path, what: str) -> str:
    """The model class a saved folder holds (its ``config.json``'s ``model_type``);
    ``what`` names the expected kind of folder in errors."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: not {what} folder")
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("model_type"))
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a model config") from None


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` with a ``config``."""

    config_class: ClassVar[type]  # the model's config dataclass: ``class M(..., config=C)``
    config: Any

    def __init_subclass__(cls, config: type | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if config is not None:
            cls.config_class = config

    def __init__(self, config: Any) -> None:
        super().__init__()  # nn.Module's: the model's next base
        self.config = config
        # Drawn first, and even on the meta device (where building layers draws no random
        # numbers), so that weights initialised after sharding are the ones a single-device
        # build gets (see dalle.models.init).
        self.init_seed = init.draw_seed()

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
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None
        if not isinstance(meta, dict) or "config" not in meta:
            raise ValueError(f"{path} is not a model config (no 'config' entry)")
        if meta.get("model_type") != cls.__name__:
            raise ValueError(f"{directory} holds a {meta.get('model_type')}, not a {cls.__name__}")
        return config_from_dict(cls.config_class, meta["config"], str(path))

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | Path, device: str | torch.device = "cpu"
    ) -> M:
        config = cls.load_config(directory)
        weights = Path(directory) / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
        try:
            model = cls(config)  # type: ignore[call-arg]
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{Path(directory) / CONFIG_FILE}: {_first_line(err)}") from None
        try:
            load_model(model, str(weights), strict=True, device=str(device))  # type: ignore[arg-type]
        except SafetensorError as err:
            raise ValueError(f"{weights} is damaged or not a safetensors file ({err})") from None
        except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
            raise ValueError(
                f"{weights} does not match {CONFIG_FILE}: {_first_line(err)}"
            ) from None
        return model.to(device).eval()  # type: ignore[attr-defined,return-value]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(err).__name__
