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

from ..config import Config, TaskSpec, validate_options
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


def resolve_source(cfg: Config) -> str:
    if cfg.data.source:
        return cfg.data.source
    return "table" if cfg.data.path else "digits"


def build_data(cfg: Config) -> LoadedData:
    name = resolve_source(cfg)
    table = sources()
    if name not in table:
        raise ConfigError(f"data.source: unknown source {name!r}{close_matches(name, table)}; see `sharewise datasets`")
    info = table[name]
    opts = validate_options(info.options, cfg.data.options, "data")
    return info.build(cfg, opts)


def default_tasks(cfg: Config, builtin_tasks: dict[str, str]) -> list[TaskSpec]:
    return cfg.tasks or [TaskSpec(name=k, kind=v) for k, v in builtin_tasks.items()]


def data_path(path: str | None, key: str = "data.path") -> Path:
    if not path:
        raise ConfigError(f"{key} is not set: give --data FILE or set it in the config")
    return Path(path)
