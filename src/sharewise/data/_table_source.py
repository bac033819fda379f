"""Registers the ``table`` source (user files) and the built-in ``digits`` set."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field

from ..config import Config
from .builtin import BUILTIN
from .idx import TaskView
from .image_ops import DecodedImages, ImageOptions, array_to_decoded, decode_spec, json_ready
from .image_table import ITEM
from .sources import LoadedData, NoOptions, data_path, default_tasks, register_source
from .table import prepare_table, read_table


@register_source("table", "a CSV, TSV or Parquet file; features from the other columns", ".csv .tsv .parquet (+ .gz)")
def build_table(cfg: Config, _opts: NoOptions) -> LoadedData:
    path = data_path(cfg.data.path)
    frame = read_table(path, cfg.data)
    test_frame = read_table(cfg.data.test_path, cfg.data.for_test_file()) if cfg.data.test_path else None
    data, _, prep = prepare_table(frame, cfg, source=str(path), test_frame=test_frame)
    return LoadedData(data, {"kind": "table", **prep.to_dict()})


class DigitsOptions(ImageOptions):
    """``as_image``: the table's 64 pixels as a (1, 8, 8) input. ``task_views``: per-task images
    instead, as the IDX source's views (``{loo_3: {drop_class: 3}}``, ``rot90``), read through the
    image options (``image_size``, ``resample``, ``color``, ``normalize``, ``augment``); the split
    is seeded and shared by every view (``split.ratios``, default 60/20/20)."""

    model_config = ConfigDict(extra="forbid")
    as_image: bool = False
    task_views: dict[str, TaskView] = Field(default_factory=dict)


DIGITS_VIEW_RATIOS = [0.6, 0.2, 0.2]


def digits_task_views(cfg: Config, opts: DigitsOptions) -> LoadedData:
    """The built-in digits as per-task images (intensities 0-16 scaled to 0-255), one task per view."""
    from sklearn.datasets import load_digits

    from .idx import _per_task_views

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    spec = decode_spec(opts, "L", images.shape[1:])
    decoded = DecodedImages(None, spec, array=array_to_decoded(images, spec))
    frame = pd.DataFrame({"id": np.arange(len(images)), "label": bunch.target.astype(np.int64),
                          ITEM: np.arange(len(images))})
    cfg = cfg.model_copy(deep=True)
    if cfg.split.ratios is None:
        cfg.split.ratios = list(DIGITS_VIEW_RATIOS)
    data, pixels = _per_task_views(cfg, opts, frame, None, decoded, "digits (built-in, scikit-learn)")
    return LoadedData(data, json_ready({"kind": "images", "source": "digits", "views": list(opts.task_views),
                                        "preprocessing": {"decode": spec.key(), **pixels.to_dict()}}))


@register_source("digits", BUILTIN["digits"]["description"], "built-in", DigitsOptions)
def build_digits(cfg: Config, opts: DigitsOptions) -> LoadedData:
    if opts.task_views:
        return digits_task_views(cfg, opts)
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
