"""Image folders: ``root/<class>/<file>`` → one categorical task ``label`` (shared input).

Every image under a class folder (sub-folders included) is an example of that class; files
directly in ``root`` and hidden files are ignored. Class names that are all integers become
integer labels (so ``0 … 10`` sort numerically). When every top-level folder is a split name
(``train``, ``val``/``valid``/``validation``, ``test``), the layout ``root/<split>/<class>/<file>``
gives the splits instead of ``split.ratios``. ``data.derived_tasks`` adds tasks computed from
``label`` (see :mod:`sharewise.data.derive`); ``tasks`` may rename ``label`` through ``column``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from ..config import Config
from ..errors import ConfigError, DataError
from .image_ops import IMAGE_EXTENSIONS, ImageFiles, ImageOptions, json_ready, open_image_files
from .image_table import ITEM, shared_image_data
from .sources import LoadedData, data_path, register_source
from .splits import SPLIT_ALIASES


class ImageFolderOptions(ImageOptions):
    derived_tasks: dict[str, str] = Field(default_factory=dict)
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))


def _images_under(folder: Path, extensions: set[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_folder(root: Path, extensions: list[str]) -> pd.DataFrame:
    """``id`` (path relative to root), ``label``, ``split`` (when the layout has one) and ``path``."""
    ext = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not top:
        raise DataError(f"{root}: no class folders (expected root/<class>/<image files>)")
    split_layout = all(p.name.lower() in SPLIT_ALIASES for p in top)
    rows = []
    for first in top:
        class_dirs = [first]
        if split_layout:
            class_dirs = sorted(p for p in first.iterdir() if p.is_dir() and not p.name.startswith("."))
        for cdir in class_dirs:
            for f in _images_under(cdir, ext):
                row = {"id": f.relative_to(root).as_posix(), "label": cdir.name, "path": str(f)}
                if split_layout:
                    row["split"] = SPLIT_ALIASES[first.name.lower()]
                rows.append(row)
    if not rows:
        raise DataError(f"{root}: no image files ({', '.join(sorted(ext))}) in its class folders")
    frame = pd.DataFrame(rows)
    labels = frame["label"].astype(str)
    if labels.str.fullmatch(r"-?\d+").all():
        frame["label"] = labels.astype(int)
    return frame


@register_source("image_folder", "a folder of class folders (root/<class>/<image>): one categorical task",
                 "folder/<class>/<image>", ImageFolderOptions)
def build_image_folder(cfg: Config, opts: ImageFolderOptions) -> LoadedData:
    root = data_path(cfg.data.path)
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected root/<class>/<image files>)")
    if cfg.data.test_path:
        raise ConfigError("data.test_path is not used by image folders: use root/train, root/val, root/test")
    frame = list_folder(root, opts.extensions)
    files = ImageFiles(frame["path"].tolist())
    decoded, ok = open_image_files(files, opts, str(root))
    frame[ITEM] = np.arange(len(frame))
    frame = frame[ok].drop(columns=["path"]).reset_index(drop=True)
    cfg = cfg.model_copy(deep=True)
    if cfg.data.id_col is None:
        cfg.data.id_col = "id"
    if "split" in frame.columns and cfg.data.split_col is None:
        cfg.data.split_col = "split"
    data, state = shared_image_data(cfg, opts, frame, None, decoded, str(root), default_tasks=["label"])
    data.meta["skipped_images"] = int((~ok).sum())
    return LoadedData(data, json_ready({"kind": "images", "source": "image_folder", **state}))
