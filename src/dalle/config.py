"""Typed configuration: dataclass schemas, YAML files and dotted ``key=value`` overrides.

Every component describes its settings as a dataclass. A run's settings are the schema's
defaults, then a YAML file, then command-line overrides such as ``train.lr=3e-4``, merged
by OmegaConf against the schema so that an unknown key or a value of the wrong type is an
error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit its schema."""


def _explain(err: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    where = f"config key '{key}'" if key else "config"
    return ConfigError(f"{origin}: bad {where}: {message}")


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: T | None = None,
    data: dict[str, Any] | None = None,
) -> T:
    """Builds a ``schema`` instance from its defaults, a YAML file and dotted overrides.

    ``base``, an instance of ``schema``, replaces the schema's defaults (a preset);
    ``data``, plain values (a saved model's config.json), is merged before the file.
    Raises ConfigError naming the offending key for unknown keys, values that do not
    convert to the field's type, and overrides that are not of the form ``key=value``.
    """
    merged = OmegaConf.structured(base if base is not None else schema)
    if data is not None:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise _explain(err, "config") from None
    if path is not None:
        try:
            from_file = OmegaConf.load(path)
            if not isinstance(from_file, DictConfig):
                kind = type(from_file).__name__.removesuffix("Config").lower()
                raise ConfigError(
                    f"{path}: the top level must be a mapping of settings, not a {kind}"
                )
            merged = OmegaConf.merge(merged, from_file)
        except OmegaConfBaseException as err:
            raise _explain(err, str(path)) from None
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from None
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override {item!r}") from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, "config") from None


def save_config(config: Any, path: str | Path) -> None:
    """Writes a config dataclass as YAML, loadable back with :func:`load_config`."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)), encoding="utf-8")


def peek_key(key: str, path: str | Path | None, overrides: Sequence[str]) -> Any:
    """The value of a top-level ``key`` from overrides, else the file, else None.

    Used to pick a preset before the rest of the config is merged on top of it.
    """
    for item in reversed(overrides):
        name, sep, value = item.partition("=")
        if sep and name.strip() == key:
            return yaml.safe_load(value)
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from None
        if isinstance(data, dict):
            return data.get(key)
    return None
