"""The registry of data sources: ``data.source`` names one, and :func:`build_data` calls it.

A source is a function ``(cfg) -> LoadedData``; adding a format means one new module in
``data/`` that registers itself here with :func:`register_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..config import Config, DataConfig, TaskSpec, validate_options
from ..errors import ConfigError, close_matches
from .base import PerTaskData, SharedInputData


@dataclass
class LoadedData:
    """What a source returns: the data and the JSON state ``predict`` needs to encode new rows."""

    data: SharedInputData | PerTaskData
    state: dict[str, Any] = field(default_factory=dict)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class SourceInfo:
    name: str
    build: Callable[[Config, BaseModel], LoadedData]
    description: str
    formats: str
    options: type[BaseModel] = NoOptions


_SOURCES: dict[str, SourceInfo] = {}


def register_source(name: str, description: str, formats: str, options: type[BaseModel] = NoOptions):
    def deco(fn: Callable[[Config, BaseModel], LoadedData]):
        _SOURCES[name] = SourceInfo(name, fn, description, formats, options)
        return fn
    return deco


def sources() -> dict[str, SourceInfo]:
    _load_builtin_sources()
    return dict(_SOURCES)


def _load_builtin_sources() -> None:
    from . import _table_source  # noqa: F401  (registers table and digits)
    from . import families, idx, image_folder, image_table, omniglot  # noqa: F401  (image sources)
    from . import volume  # noqa: F401  (volumes: NIfTI/.npy + phenotype table)
    from . import yt8m  # noqa: F401  (Youtube-8M TFRecord shards)


def resolve_source(cfg: Config) -> str:
    if cfg.data.source:
        return cfg.data.source
    if cfg.data.options.get("image_col"):
        return "image_table"
    if cfg.data.options.get("volume_pattern") or cfg.data.options.get("volume_col"):
        return "volumes"
    if cfg.data.path:
        from .image_ops import guess_source

        path = Path(cfg.data.path)
        if str(path).endswith(".tfrecord") or (path.is_dir() and any(path.glob("*.tfrecord"))):
            return "yt8m"
        return guess_source(Path(cfg.data.path)) or "table"
    return "digits"


def build_data(cfg: Config) -> LoadedData:
    name = resolve_source(cfg)
    table = sources()
    if name not in table:
        raise ConfigError(f"data.source: unknown source {name!r}{close_matches(name, table)}; see `sharewise datasets`")
    info = table[name]
    known = set(DataConfig.model_fields) | set(info.options.model_fields)
    for key in cfg.data.options:
        if key not in known:
            raise ConfigError(
                f"unknown config key 'data.{key}' for data.source {name!r}{close_matches(key, sorted(known))}"
            )
    opts = validate_options(info.options, cfg.data.options, "data")
    return info.build(cfg, opts)


def default_tasks(cfg: Config, builtin_tasks: dict[str, str]) -> list[TaskSpec]:
    return cfg.tasks or [TaskSpec(name=k, kind=v) for k, v in builtin_tasks.items()]


def data_path(path: str | None, key: str = "data.path") -> Path:
    if not path:
        raise ConfigError(f"{key} is not set: give --data FILE or set it in the config")
    return Path(path)
