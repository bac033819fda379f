"""Registers the ``table`` source (user files) and the built-in ``digits`` set."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..config import Config
from .builtin import BUILTIN
from .sources import LoadedData, NoOptions, data_path, default_tasks, register_source
from .table import prepare_table, read_table


@register_source("table", "a CSV, TSV or Parquet file; features from the other columns", ".csv .tsv .parquet (+ .gz)")
def build_table(cfg: Config, _opts: NoOptions) -> LoadedData:
    path = data_path(cfg.data.path)
    frame = read_table(path, cfg.data)
    test_frame = read_table(cfg.data.test_path, cfg.data.for_test_file()) if cfg.data.test_path else None
    data, _, prep = prepare_table(frame, cfg, source=str(path), test_frame=test_frame)
    return LoadedData(data, {"kind": "table", **prep.to_dict()})


class DigitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_image: bool = False


@register_source("digits", BUILTIN["digits"]["description"], "built-in", DigitsOptions)
def build_digits(cfg: Config, opts: DigitsOptions) -> LoadedData:
    info = BUILTIN["digits"]
    cfg = cfg.model_copy(deep=True)
    cfg.tasks = default_tasks(cfg, info["tasks"])
    if cfg.data.id_col is None:
        cfg.data.id_col = info["id_col"]
    shape = info["image_shape"] if opts.as_image else None
    # the built-in's other targets derive from the label (`value` is the digit): never features
    used = {t.column or t.name for t in cfg.tasks}
    frame = info["frame"]().drop(columns=[c for c in info["tasks"] if c not in used])
    data, _, prep = prepare_table(frame, cfg, source="digits (built-in)", input_shape=shape)
    return LoadedData(data, {"kind": "table", "builtin": "digits", "input_shape": list(shape) if shape else None,
                             **prep.to_dict()})
