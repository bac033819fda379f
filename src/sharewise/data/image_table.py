"""Image-path tables: a CSV/TSV/Parquet file with a column of image paths and target columns.

``sharewise run --data labels.csv --image-col path --cat-target species --num-target length``
works like any table: targets, masks, splits and encoders come from
:func:`~sharewise.data.table.prepare_table` (``inputs_from_frame=False``); the inputs are the
images (PNG, JPEG, ... through Pillow), never the table's other columns. Relative paths are
relative to the table's folder (``data.image_root`` to change it). The image column is never a
feature or a target. The source is chosen automatically when ``data.image_col`` is set.

:func:`shared_image_data` is the part shared with the IDX and image-folder sources: a frame of
targets whose ``__item__`` column points at images of one :class:`DecodedImages`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from ..config import Config, TaskSpec
from ..errors import ConfigError, DataError, close_matches
from .base import InputSpec
from .derive import add_derived_columns
from .image_ops import (DecodedImages, ImageFiles, ImageOptions, ImageStore, warn_skipped, json_ready,
                        make_augment, open_image_files, pixel_transform)
from .sources import LoadedData, data_path, register_source
from .table import prepare_table, read_table

ITEM = "__item__"


class ImageTableOptions(ImageOptions):
    image_col: str
    image_root: str | None = None  # base of relative paths (default: the table's folder)
    derived_tasks: dict[str, str] = Field(default_factory=dict)


def shared_image_data(cfg: Config, opts: ImageOptions, frame: pd.DataFrame, test_frame: pd.DataFrame | None,
                      decoded: DecodedImages, source: str, *, default_tasks: list[str] | None = None,
                      background: float = 0.0) -> tuple[Any, dict[str, Any]]:
    """Shared-input data from a frame of targets (+ ``derived_tasks``) whose ``__item__`` column
    indexes ``decoded``: the table pipeline for targets and splits, images as inputs."""
    derived = getattr(opts, "derived_tasks", {}) or {}
    frame = add_derived_columns(frame, derived)
    if test_frame is not None:
        test_frame = add_derived_columns(test_frame, derived)
    cfg = cfg.model_copy(deep=True)
    if not cfg.tasks and default_tasks is not None:
        cfg.tasks = [TaskSpec(name=n, kind="categorical") for n in (list(derived) or default_tasks)]
    for s in cfg.tasks:
        if (s.column or s.name) == ITEM:
            raise ConfigError(f"tasks: {ITEM!r} is internal")
    data, full, prep = prepare_table(frame, cfg, source=source, test_frame=test_frame, inputs_from_frame=False)
    rows = full[ITEM].to_numpy().astype(np.int64)
    seed = cfg.split.seed if cfg.split.seed is not None else cfg.train.seed
    pixels = pixel_transform(opts, decoded, rows[data.splits["train"]], seed)
    data.examples.inputs = ImageStore(decoded, rows, pixels)
    data.examples.transform = make_augment(opts, pixels, background)
    data.input_spec = InputSpec("image", decoded.shape)
    data.meta["images"] = len(rows)
    state = {**prep.to_dict(), "preprocessing": {"decode": decoded.spec.key(), **pixels.to_dict()}}
    return data, state


def _resolve_paths(frame: pd.DataFrame, col: str, base: Path, table: Path) -> tuple[list[str | None], list[str]]:
    """Absolute paths of the column (None where the cell is empty) and the row descriptions of empty cells."""
    out: list[str | None] = []
    empty = []
    for i, v in enumerate(frame[col].tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            out.append(None)
            empty.append(f"{table}: row {i + 1} has no image path in column {col!r}")
            continue
        p = Path(str(v).strip()).expanduser()
        out.append(str(p if p.is_absolute() else base / p))
    return out, empty


@register_source("image_table", "a table with an image-path column (data.image_col) and target columns",
                 "table + PNG/JPEG/... files", ImageTableOptions)
def build_image_table(cfg: Config, opts: ImageTableOptions) -> LoadedData:
    path = data_path(cfg.data.path)
    d = cfg.data
    if d.features is not None:
        raise ConfigError("data.features: an image table's input is the image only; its other columns are "
                          "targets, ids or ignored")
    col = opts.image_col
    for s in cfg.tasks:
        if (s.column or s.name) == col:
            raise ConfigError(f"tasks: {col!r} is the image column (data.image_col), not a target")
    tables = [(path, read_table(path, d))]
    if d.test_path:
        tables.append((Path(d.test_path), read_table(d.test_path, d)))
    locations: list[str] = []
    frames = []
    bad: list[str] = []
    for table, frame in tables:
        if col not in frame.columns:
            raise DataError(f"{table}: unknown image column {col!r}{close_matches(col, frame.columns)}")
        base = Path(opts.image_root) if opts.image_root else table.parent
        paths, empty = _resolve_paths(frame, col, base, table)
        if empty and not opts.skip_bad_images:
            raise DataError(empty[0])
        bad += empty
        keep = np.array([p is not None for p in paths], dtype=bool)
        frame = frame.loc[keep].copy()
        frame[ITEM] = len(locations) + np.arange(int(keep.sum()))
        locations += [p for p in paths if p is not None]
        frames.append(frame)
    if bad:
        warn_skipped(str(path), bad)
    if not locations:
        raise DataError(f"{path}: no image path in column {col!r}")
    decoded, ok = open_image_files(ImageFiles(locations), opts, str(path))
    frames = [f[ok[f[ITEM].to_numpy()]] for f in frames]
    for (table, _), f in zip(tables, frames):
        if len(f) == 0:
            raise DataError(f"{table}: no row left with a readable image")
    if d.id_col is None:
        cfg = cfg.model_copy(deep=True)
        cfg.data.id_col = col
    data, state = shared_image_data(cfg, opts, frames[0], frames[1] if len(frames) > 1 else None, decoded, str(path))
    data.meta["skipped_images"] = int(len(bad) + (~ok).sum())
    state = {"kind": "images", "source": "image_table", "image_col": col, **state}
    return LoadedData(data, json_ready(state))
