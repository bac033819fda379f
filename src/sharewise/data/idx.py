"""IDX source: MNIST-format files (MNIST, Fashion-MNIST, KMNIST, ...), gzipped or not.

``data.path`` is the folder holding the four standard files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
optionally ``.gz``; the dotted spelling ``train-images.idx3-ubyte`` too), or give each file
with ``data.train_images`` etc. Gzip is recognised by its magic bytes. The header is checked
(magic ``0x0000TTDD``: type code TT, DD dimensions), and the data length must equal the product
of the dimensions; a truncated or mismatched file (60 000 images vs 59 999 labels) is a
:class:`DataError` naming the file.

Two dataset shapes:

- *shared input* (default): one example per image, targets = ``label`` and the columns of
  ``data.derived_tasks`` (e.g. ``parity: "label % 2"``), through the table pipeline
  (:func:`~sharewise.data.table.prepare_table`), so targets, masks, class lists and
  standardised numerical targets behave exactly as for a table;
- *per task* (``data.task_views``): each task its own copy of the images, e.g.
  ``{mnist: {}, mnist_rot: {rot90: 1}}`` (a 90° counter-clockwise rotation, ``np.rot90(img, 1)``,
  as in the parameter-allocation paper §5.1) or ``{loo_3: {drop_class: 3}}`` (leave one class
  out: the images of 3 are removed and the 9 others keep their digit labels).

Splits: the IDX test files are the test split. Train and validation are split from the
training files, seeded and stratified on the label; 90/10 unless ``split.ratios`` is set (its
train and val shares are then renormalised, as for ``data.test_path`` tables). Without test
files the training files are split three ways with ``split.ratios``. In the per-task shape every
task uses the same split (an image is in the same split for all tasks).
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..config import Config, TaskSpec
from ..errors import ConfigError, DataError, close_matches
from ..tasks import Task
from .base import ExampleSet, InputSpec, PerTaskData
from .image_ops import (DecodedImages, ImageOptions, ImageStore, array_to_decoded, decode_spec, json_ready,
                        make_augment, pixel_transform)
from .image_table import ITEM, shared_image_data
from .sources import LoadedData, register_source
from .splits import carve_train
from .table import prepare_table

IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
ROLES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
DEFAULT_RATIOS = (0.9, 0.1, 0.0)


class TaskView(BaseModel):
    """One per-task copy of the images: a fixed rotation and/or one class left out."""

    model_config = ConfigDict(extra="forbid")
    rot90: int = Field(0, ge=0, le=3, description="counter-clockwise quarter turns")
    drop_class: int | None = None


class IdxOptions(ImageOptions):
    train_images: str | None = None
    train_labels: str | None = None
    test_images: str | None = None
    test_labels: str | None = None
    derived_tasks: dict[str, str] = Field(default_factory=dict)
    task_views: dict[str, TaskView] = Field(default_factory=dict)


# ----------------------------------------------------------------- reading


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file (gzip detected from its magic bytes), header checked."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"IDX file not found: {p}")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not an IDX file")
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{p}: corrupt or truncated gzip data ({err})") from None
    except OSError as err:
        raise DataError(f"{p}: cannot read the file: {err.strerror or err}") from None
    if len(raw) < 4:
        raise DataError(f"{p}: not an IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{p}: not an IDX file (magic number 0x{raw[:4].hex()}; expected 0x0000TTDD with "
                        "type TT in 08/09/0B/0C/0D/0E and DD dimensions)")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{p}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise DataError(f"{p}: truncated IDX file: the header says {' x '.join(map(str, dims))} "
                        f"({expected} data bytes) but the file has {got}")
    if got > expected:
        raise DataError(f"{p}: {got - expected} unexpected trailing byte(s) after the "
                        f"{' x '.join(map(str, dims))} array the header announces")
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=header).reshape(dims)


def find_idx_files(folder: Path, *, required: bool = True) -> dict[str, Path]:
    """The standard IDX file names (optionally ``.gz``) in ``folder``."""
    out: dict[str, Path] = {}
    for role, stems in ROLES.items():
        for stem in stems:
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    out[role] = folder / name
                    break
            if role in out:
                break
    if required and ("train_images" not in out or "train_labels" not in out):
        missing = [ROLES[r][0] + "[.gz]" for r in ("train_images", "train_labels") if r not in out]
        raise DataError(f"{folder}: no IDX training files found (missing {', '.join(missing)}); "
                        "or give data.train_images and data.train_labels")
    return out


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) of one IDX pair, with their counts checked."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        hint = " (is it a labels file?)" if images.ndim == 1 else ""
        raise DataError(f"{images_path}: expected a 3-d IDX array of images (N x H x W), found "
                        f"{images.ndim}-d {list(images.shape)}{hint}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-d IDX array of labels, found {labels.ndim}-d {list(labels.shape)}"
                        + (" (is it an images file?)" if labels.ndim == 3 else ""))
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels but {images_path} holds {len(images)} images")
    if images.dtype != np.uint8:
        a = images.astype(np.float64)
        lo, hi = a.min(), a.max()
        images = ((a - lo) / (hi - lo if hi > lo else 1.0) * 255 + 0.5).astype(np.uint8)
    return images, labels.astype(np.int64)


def locate(cfg: Config, opts: IdxOptions) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if cfg.data.path:
        p = Path(cfg.data.path)
        if not p.exists():
            raise DataError(f"data path not found: {p}")
        folder = p if p.is_dir() else p.parent  # one of the four files names their folder
        files = find_idx_files(folder, required=not (opts.train_images and opts.train_labels))
    for role in ROLES:
        v = getattr(opts, role)
        if v:
            files[role] = Path(v)
    if "train_images" not in files or "train_labels" not in files:
        raise ConfigError("IDX data: set data.path to the folder with the four IDX files, or data.train_images "
                          "and data.train_labels")
    if ("test_images" in files) != ("test_labels" in files):
        have = "test_images" if "test_images" in files else "test_labels"
        raise DataError(f"{files[have]}: the test {'labels' if have == 'test_images' else 'images'} file is missing")
    return files


# ----------------------------------------------------------------- the source


@register_source("idx", "MNIST-format images (MNIST, Fashion-MNIST, KMNIST): label + derived tasks, or "
                 "per-task views", "IDX files (+ .gz)", IdxOptions)
def build_idx(cfg: Config, opts: IdxOptions) -> LoadedData:
    if cfg.data.test_path:
        raise ConfigError("data.test_path is not used by IDX data: the t10k files are the test split")
    if opts.derived_tasks and opts.task_views:
        raise ConfigError("data.derived_tasks and data.task_views exclude each other (shared-input vs per-task data)")
    files = locate(cfg, opts)
    train_x, train_y = read_pair(files["train_images"], files["train_labels"])
    has_test = "test_images" in files
    if has_test:
        test_x, test_y = read_pair(files["test_images"], files["test_labels"])
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DataError(f"{files['test_images']}: images are {test_x.shape[1]}x{test_x.shape[2]}, the training "
                            f"images {train_x.shape[1]}x{train_x.shape[2]}")
    else:
        test_x, test_y = train_x[:0], train_y[:0]
        warnings.warn(f"{files['train_images']}: no IDX test files; train/val/test are split from the training files")
    images = np.concatenate([train_x, test_x]) if has_test else train_x
    spec = decode_spec(opts, "L", train_x.shape[1:])
    decoded = DecodedImages(None, spec, array=array_to_decoded(images, spec))
    n_train = len(train_x)
    frame = pd.DataFrame({"id": [f"train/{i}" for i in range(n_train)], "label": train_y, ITEM: np.arange(n_train)})
    test_frame = None
    if has_test:
        test_frame = pd.DataFrame({"id": [f"test/{i}" for i in range(len(test_x))], "label": test_y,
                                   ITEM: n_train + np.arange(len(test_x))})
    cfg = cfg.model_copy(deep=True)
    if has_test and cfg.split.ratios is None:
        cfg.split.ratios = list(DEFAULT_RATIOS)
    source = str(cfg.data.path or files["train_images"])
    state = {"kind": "images", "source": "idx", "files": {k: str(v) for k, v in files.items()}}
    if opts.task_views:
        data, pixels = _per_task_views(cfg, opts, frame, test_frame, decoded, source)
    else:
        if cfg.data.id_col is None:
            cfg.data.id_col = "id"
        data, table_state = shared_image_data(cfg, opts, frame, test_frame, decoded, source, default_tasks=["label"])
        state.update(table_state)
        return LoadedData(data, json_ready(state))
    state["preprocessing"] = {"decode": spec.key(), **pixels.to_dict()}
    return LoadedData(data, json_ready(state))


def _per_task_views(cfg: Config, opts: IdxOptions, frame: pd.DataFrame, test_frame: pd.DataFrame | None,
                    decoded: DecodedImages, source: str):
    """Per-task data: every view its own ExampleSet over the same images and the same split."""
    specs = {s.name: s for s in cfg.tasks}
    for name in specs:
        if name not in opts.task_views:
            raise ConfigError(f"tasks: {name!r} is not one of data.task_views{close_matches(name, opts.task_views)}")
        if specs[name].kind != "categorical":
            raise ConfigError(f"tasks.{name}: task views are categorical (the image's class)")
    cfg.tasks = []
    if cfg.data.id_col is None:
        cfg.data.id_col = "id"
    base_spec = [TaskSpec(name="label", kind="categorical")]
    shared_cfg = cfg.model_copy(update={"tasks": base_spec})
    data, full, _ = prepare_table(frame, shared_cfg, source=source, test_frame=test_frame, inputs_from_frame=False)
    rows = full[ITEM].to_numpy()
    labels = full["label"].to_numpy().astype(np.int64)
    ids = full["id"].to_numpy()
    seed = cfg.split.seed if cfg.split.seed is not None else cfg.train.seed
    pixels = pixel_transform(opts, decoded, rows[data.splits["train"]], seed)
    augment = make_augment(opts, pixels)
    present = sorted(np.unique(labels[data.splits["train"]]).tolist())
    tasks, examples, splits = [], {}, {}
    for name, view in opts.task_views.items():
        if view.drop_class is not None and view.drop_class not in present:
            raise ConfigError(f"data.task_views.{name}.drop_class: class {view.drop_class} is not among {present}")
        classes = [c for c in present if c != view.drop_class]
        if len(classes) < 2:
            raise DataError(f"{source}: task {name!r} keeps {len(classes)} class(es); a classifier needs at least 2")
        lookup = np.full(max(present + [int(labels.max())]) + 1, -1, dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        codes = lookup[labels]
        keep = codes >= 0
        spec = specs.get(name)
        tasks.append(Task(name, "categorical", classes=classes, weight=spec.weight if spec else 1.0,
                          loss=spec.loss if spec else None))
        examples[name] = ExampleSet(ImageStore(decoded, rows, pixels, rot90=view.rot90),
                                    {name: torch.from_numpy(np.maximum(codes, 0))}, {name: torch.from_numpy(keep)},
                                    ids, transform=augment)
        task_splits = {k: v[keep[v]] for k, v in data.splits.items() if k in ("train", "val", "test")}
        task_splits.update(carve_train(task_splits["train"], seed, 1 - cfg.split.train2_fraction))
        splits[name] = task_splits
    shapes = {ex.inputs.shape for ex in examples.values()}
    if len(shapes) > 1:
        raise ConfigError(f"data.task_views: the views give different image shapes {sorted(shapes)} "
                          "(rot90 1 or 3 of non-square images); use square images or data.image_size")
    meta = {"source": source, "images": len(rows), "views": {k: v.model_dump() for k, v in opts.task_views.items()}}
    return PerTaskData(tasks, examples, splits, InputSpec("image", shapes.pop()), meta), pixels
