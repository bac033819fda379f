"""CIFAR-100, python version: the 20 superclass tasks of the task-clusters experiment
(parameter-allocation spec §7.3, preset ``paper``).

Reads the folder ``cifar-100-python/`` of the official archive: the pickles ``train``, ``test``
and ``meta`` (Python 2 pickles of dicts with byte-string keys: ``data`` uint8 (N, 3072) in
channel-major order, ``fine_labels``, ``coarse_labels``; ``meta`` holds ``fine_label_names`` and
``coarse_label_names``). Unpickling is restricted to the few NumPy constructors those files use,
so a pickle that names anything else is refused instead of executed.

Task k (named after coarse label k) is a 5-way classification among the fine classes of that
superclass, ordered by fine-label id. Each fine class's training images are cut, seeded, into
train and validation (default 80/20: 400 / 100 per class, 2 000 / 500 per task); the test file
is the test split (100 per class, 500 per task).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import DataError
from ..seeding import np_rng
from ..tasks import Task
from .base import ExampleSet, InputSpec, PerTaskData
from .image_ops import DecodedImages, DecodeSpec, ImageOptions, ImageStore, make_augment, pixel_transform
from .splits import _allocate, carve_train

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with ``str`` keys, loaded without executing code."""
    if not path.is_file():
        raise DataError(f"CIFAR-100 file not found: {path} (expected the pickles train, test and meta of "
                        "cifar-100-python)")
    try:
        with path.open("rb") as fh:
            obj = _SafeUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path}: not a readable CIFAR-100 pickle ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _images(record: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for key in ("data", "fine_labels", "coarse_labels"):
        if key not in record:
            raise DataError(f"{path}: no {key!r} entry (keys: {', '.join(sorted(record))})")
    data = np.asarray(record["data"])
    fine = np.asarray(record["fine_labels"], dtype=np.int64)
    coarse = np.asarray(record["coarse_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' should be uint8 of shape (N, 3072), found {data.dtype} {list(data.shape)}")
    if not len(data) == len(fine) == len(coarse):
        raise DataError(f"{path}: {len(data)} images, {len(fine)} fine and {len(coarse)} coarse labels")
    return data.reshape(-1, 3, 32, 32), fine, coarse


def read_cifar100(folder: Path) -> dict[str, Any]:
    """``{train: (images, fine, coarse), test: (...), fine_names, coarse_names}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.cifar100: not a folder: {folder}")
    meta = read_pickle(folder / "meta")
    for key in ("fine_label_names", "coarse_label_names"):
        if key not in meta:
            raise DataError(f"{folder / 'meta'}: no {key!r} entry")
    out = {s: _images(read_pickle(folder / s), folder / s) for s in ("train", "test")}
    return {**out, "fine_names": _names(meta["fine_label_names"]), "coarse_names": _names(meta["coarse_label_names"])}


def cifar100_superclasses(folder: Path, cfg: Config, *, size: int = 32, crop_padding: int = 4,
                          val_fraction: float = 0.2) -> PerTaskData:
    """The 20 superclass tasks (per-task data), pixel values in [0, 1], training crops after padding."""
    cifar = read_cifar100(folder)
    if size != 32:
        raise DataError(f"data.image_size: CIFAR-100 images are 32x32, got {size}")
    train_x, train_fine, train_coarse = cifar["train"]
    test_x, test_fine, test_coarse = cifar["test"]
    images = np.concatenate([train_x, test_x])
    decoded = DecodedImages(None, DecodeSpec(3, (32, 32)), array=np.ascontiguousarray(images))
    opts = ImageOptions(normalize="none", augment={"crop_padding": crop_padding})
    seed = cfg.split.seed if cfg.split.seed is not None else cfg.train.seed
    n_train = len(train_x)
    fine = np.concatenate([train_fine, test_fine])
    coarse = np.concatenate([train_coarse, test_coarse])
    is_train = np.arange(len(images)) < n_train
    pixels = pixel_transform(opts, decoded, np.arange(n_train), seed)
    augment = make_augment(opts, pixels)
    tasks, examples, splits = [], {}, {}
    for k, name in enumerate(cifar["coarse_names"]):
        members = sorted(set(fine[coarse == k].tolist()))
        if len(members) < 2:
            raise DataError(f"{folder}: superclass {name!r} has {len(members)} fine class(es)")
        rows = np.flatnonzero(coarse == k)
        labels = np.searchsorted(members, fine[rows])
        train_pos, val_pos = [], []
        for c, f in enumerate(members):
            pos = np.flatnonzero((fine[rows] == f) & is_train[rows])
            pos = pos[np_rng(seed, "cifar_split", f).permutation(len(pos))]
            n_train_c, _ = _allocate(len(pos), [1 - val_fraction, val_fraction])
            train_pos.append(pos[:n_train_c])
            val_pos.append(pos[n_train_c:])
        task_splits = {"train": np.sort(np.concatenate(train_pos)), "val": np.sort(np.concatenate(val_pos)),
                       "test": np.flatnonzero(~is_train[rows])}
        task_splits.update(carve_train(task_splits["train"], seed, 1 - cfg.split.train2_fraction))
        splits[name] = task_splits
        classes = [cifar["fine_names"][f] for f in members]
        tasks.append(Task(name, "categorical", classes=classes))
        ids = np.array([f"{'train' if r < n_train else 'test'}/{r if r < n_train else r - n_train}" for r in rows],
                       dtype=object)
        examples[name] = ExampleSet(ImageStore(decoded, rows, pixels), {name: torch.from_numpy(labels)},
                                    {name: torch.ones(len(rows), dtype=torch.bool)}, ids, transform=augment)
    meta = {"source": f"cifar100 ({folder})", "images": int(len(images))}
    return PerTaskData(tasks, examples, splits, InputSpec("image", (3, 32, 32)), meta)
