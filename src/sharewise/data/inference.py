"""New examples for ``predict`` and exported models: a run's saved preprocessing applied to raw inputs.

A finished run's ``data_state.json`` (and an exported model's description, which copies it) holds
what turns raw inputs into the model's inputs: the table encoders (``features``, ``value_map``);
the image decoding and pixel statistics (``preprocessing``); the volume pipeline
(``preprocessing``). :func:`input_pipeline` rebuilds it as one of three pipelines, chosen by the
kind of input rather than by the source a run was trained on (an image-folder run predicts on a
table of image paths too):

- :class:`TableInputs`: a DataFrame or a table file; ``data.join`` redone (``join_paths`` moves
  the joined tables), ``data.value_map`` applied, features encoded with the training encoders.
- :class:`ImageInputs`: a folder (every image under it, id = the path relative to the folder, as
  an image-folder run names its examples; or the folder's IDX files), a table with an image-path
  column, one image or IDX file, or in memory: paths, Pillow images, ``uint8`` arrays (H, W) or
  (H, W, C), stacks (N, H, W) / (N, H, W, C). Decoded like the training files (Pillow: colour
  mode, resize), then the training pixel transform (÷255, inversion, per-channel statistics).
- :class:`VolumeInputs`: a phenotype table located through the run's ``volume_pattern`` (with
  its id column) or ``volume_col``, a folder of volume files, one file, or paths, nibabel images,
  arrays (D, H, W) / (C, D, H, W), a stack (N, C, D, H, W); read (NIfTI reoriented to RAS+) and
  preprocessed by the run's pipeline (mask, clip, normalise, resize or crop/pad).

:func:`predict_frame` runs a model over the located examples and :func:`decode_predictions`
writes its outputs per task: the label and one probability column per class (categorical), the
number in the target's units (numerical), one probability per label (multilabel).
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import Config, DataConfig, JoinSpec
from ..errors import ConfigError, DataError, close_matches
from ..tasks import Task
from .encoders import FeatureEncoder
from .image_ops import IMAGE_EXTENSIONS, DecodeSpec, ImageFiles, PixelTransform, pil_to_array
from .table import FORMATS, apply_value_map, read_table

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".npy")


@dataclass
class NewExamples:
    """Located new examples: ``keep`` (one row per example: the columns the predictions keep,
    e.g. the id), ``items`` (a tensor of encoded rows for tables; one path, image or array per
    row otherwise) and ``frame`` (the table the examples came from, after joins and value maps,
    aligned with ``keep``; None when they came from files or memory)."""

    keep: pd.DataFrame
    items: torch.Tensor | list[Any]
    source: str
    frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.keep)


@dataclass
class Inputs(ABC):
    """How one run's raw inputs become model inputs: :meth:`locate` finds the examples,
    :meth:`batch` reads and preprocesses some of them. ``read_cfg``: the run's table-reading keys."""

    read_cfg: DataConfig = field(default_factory=DataConfig)

    kind = "none"

    @abstractmethod
    def locate(self, data: Any, *, source: str | None = None, root: str | Path | None = None,
               image_col: str | None = None, join_paths: Sequence[str | Path] | str | Path | None = None,
               skip_rows: int | None = None) -> NewExamples:
        """The new examples ``data`` holds (see the module docstring for the forms it takes)."""

    @abstractmethod
    def batch(self, examples: NewExamples, rows: np.ndarray) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model inputs of ``examples``' ``rows``: one tensor, or per task one (per-task views)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The preprocessing in words and numbers (an exported model's metadata)."""

    def _reject(self, what: str, value: Any, why: str | None = None) -> None:
        if value is not None:
            raise ConfigError(f"{what}: {why or f'not used by a {self.kind} run'}")

    def _read(self, path: Path, skip_rows: int | None) -> pd.DataFrame:
        cfg = self.read_cfg if skip_rows is None else self.read_cfg.model_copy(update={"skip_rows": skip_rows})
        return read_table(path, cfg)


def _steps(steps: list[Any]) -> list[Any]:
    return [s for s in steps if s]


def _is_table(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in FORMATS


def _existing(data: Any) -> Path:
    p = Path(data).expanduser()
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise DataError(f"data not found: {p}{where}")
    return p


def _files_under(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(tuple(suffixes))
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# ----------------------------------------------------------------- tables


@dataclass
class TableInputs(Inputs):
    """Feature columns encoded with the training encoders, after the run's joins and value maps."""

    encoder: FeatureEncoder | None = None
    value_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    joins: list[JoinSpec] = field(default_factory=list)
    id_col: str | None = None
    input_shape: tuple[int, ...] = ()

    kind = "table"

    def locate(self, data: Any, *, source: str | None = None, root: str | Path | None = None,
               image_col: str | None = None, join_paths: Sequence[str | Path] | str | Path | None = None,
               skip_rows: int | None = None) -> NewExamples:
        self._reject("image_col (--image-col)", image_col)
        self._reject("root (--root)", root)
        if isinstance(data, pd.DataFrame):
            frame, source = data, source or "the data"
        elif isinstance(data, (str, os.PathLike)):
            frame, source = self._read(Path(data), skip_rows), source or str(data)
        else:
            raise DataError(f"a table run predicts on a pandas DataFrame or a table file (.csv, .tsv, .parquet), "
                            f"not {type(data).__name__}")
        index = frame.index
        frame = self._join(frame, source, join_paths)
        frame.index = index
        present = {c: m for c, m in self.value_map.items() if c in frame.columns}
        frame = apply_value_map(frame, present, source)
        x = torch.from_numpy(self.encoder.transform(frame, source=source, warn_unseen=True))
        x = x.reshape(len(x), *self.input_shape)
        keep = frame[[self.id_col]] if self.id_col and self.id_col in frame.columns else pd.DataFrame(index=index)
        return NewExamples(keep, x, source, frame)

    def _join(self, frame: pd.DataFrame, source: str, join_paths: Any) -> pd.DataFrame:
        if join_paths is not None and not isinstance(join_paths, (list, tuple)):
            join_paths = [join_paths]
        if not self.joins:
            if join_paths:
                raise ConfigError("join_paths (--join-data): this run has no data.join")
            return frame
        if join_paths is not None and len(join_paths) != len(self.joins):
            raise ConfigError(f"join_paths (--join-data): {len(join_paths)} path(s) given for the run's "
                              f"{len(self.joins)} data.join table(s), in the order of data.join")
        from .join import apply_joins

        specs = []
        for k, spec in enumerate(self.joins):
            path = Path(join_paths[k]) if join_paths is not None else Path(spec.path)
            if not path.exists():
                hint = "" if join_paths is not None else "; give its new path with --join-data (Run.predict(join_paths=...))"
                raise DataError(f"data.join: the joined table {path} is not found{hint}")
            specs.append(spec.model_copy(update={"path": str(path), "how": "left"}))
        frame, _ = apply_joins(frame, specs, source=source, encoding=self.read_cfg.encoding, joined_ok=True)
        return frame

    def batch(self, examples: NewExamples, rows: np.ndarray) -> torch.Tensor:
        return examples.items[torch.as_tensor(rows, dtype=torch.long)]

    def describe(self) -> dict[str, Any]:
        enc = self.encoder
        return {
            "input": f"float32 (batch, {', '.join(str(s) for s in self.input_shape)}): the encoded feature columns",
            "steps": _steps(["data.join: the joined tables' columns added on their keys (left join)" if self.joins else None,
                      "data.value_map applied" if self.value_map else None,
                      "numerical feature: (value - mean) / std, missing -> 0",
                      "categorical feature: one-hot over the training categories, unseen or missing -> all zeros"]),
            "features": enc.to_dict() if enc else None, "feature_names": enc.feature_names() if enc else [],
            "value_map": self.value_map, "join": [j.model_dump() for j in self.joins],
        }


# ----------------------------------------------------------------- images


def _decode_image(item: Any, spec: DecodeSpec, name: str) -> np.ndarray:
    """One image to predict on as ``uint8`` (C, H, W) under ``spec``, decoded as training decoded its files."""
    if isinstance(item, str):
        return ImageFiles([item]).decode(0, spec)
    from PIL import Image

    if isinstance(item, Image.Image):
        return pil_to_array(item, spec)
    a = np.asarray(item)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise DataError(f"{name}: an image array must be uint8 (H, W) or (H, W, C) with C in 1, 3, 4; "
                        f"got {a.dtype} {list(a.shape)}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return pil_to_array(Image.fromarray(a), spec)


@dataclass
class ImageInputs(Inputs):
    """Images decoded with the run's :class:`DecodeSpec`, then its :class:`PixelTransform`
    (and, for per-task views, each task's fixed quarter turns)."""

    spec: DecodeSpec = field(default_factory=lambda: DecodeSpec(1, (1, 1)))
    pixels: PixelTransform = field(default_factory=PixelTransform)
    image_col: str | None = None
    image_root: str | None = None
    id_col: str | None = None
    views: dict[str, int] = field(default_factory=dict)  # task -> rot90 (per-task views)

    kind = "image"

    def locate(self, data: Any, *, source: str | None = None, root: str | Path | None = None,
               image_col: str | None = None, join_paths: Sequence[str | Path] | str | Path | None = None,
               skip_rows: int | None = None) -> NewExamples:
        self._reject("join_paths (--join-data)", join_paths or None)
        from PIL import Image

        if isinstance(data, pd.DataFrame):
            return self._from_table(data, source or "the data", Path(root) if root else None, image_col, None)
        if isinstance(data, (str, os.PathLike)):
            p = _existing(data)
            source = source or str(p)
            if p.is_dir():
                self._reject("image_col (--image-col)", image_col, f"only for a table of image paths, not {p}")
                from .idx import find_idx_files

                idx = find_idx_files(p, required=False)
                if "test_images" in idx or "train_images" in idx:
                    role = "test_images" if "test_images" in idx else "train_images"
                    return self._from_idx(idx[role], source, "test" if role == "test_images" else "train")
                files = _files_under(p, IMAGE_EXTENSIONS)
                if not files:
                    raise DataError(f"{p}: no image files ({', '.join(IMAGE_EXTENSIONS)}) and no IDX files under it")
                ids = [f.relative_to(p).as_posix() for f in files]
                return NewExamples(pd.DataFrame({"id": ids}), [str(f) for f in files], source)
            if _is_table(p):
                return self._from_table(self._read(p, skip_rows), source, Path(root) if root else None, image_col, p)
            self._reject("image_col (--image-col)", image_col, f"only for a table of image paths, not {p}")
            name = p.name.lower()
            if "idx" in name and "ubyte" in name:
                prefix = "test" if name.startswith("t10k") else ("train" if name.startswith("train") else None)
                return self._from_idx(p, source, prefix)
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                return NewExamples(pd.DataFrame({"image": [str(p)]}), [str(p)], source)
            raise DataError(f"{p}: not an image, a folder of images, an IDX file or a table of image paths")
        self._reject("image_col (--image-col)", image_col, "only for a table of image paths")
        source = source or "the given images"
        if isinstance(data, Image.Image):
            data = [data]
        elif isinstance(data, np.ndarray) and data.ndim in (3, 4) and data.dtype == np.uint8:
            data = list(data)  # a stack (N, H, W) or (N, H, W, C)
        if not isinstance(data, (list, tuple)) or not data:
            raise DataError(f"an image run predicts on a folder, an image or IDX file, a table of image paths, or a "
                            f"non-empty list of paths, Pillow images or uint8 arrays; not {type(data).__name__}")
        items = [str(Path(d).expanduser()) if isinstance(d, (str, os.PathLike)) else d for d in data]
        names = [it if isinstance(it, str) else k for k, it in enumerate(items)]
        return NewExamples(pd.DataFrame({"image": names}), items, source)

    def _from_table(self, frame: pd.DataFrame, source: str, root: Path | None, image_col: str | None,
                    table: Path | None) -> NewExamples:
        from .image_table import _resolve_paths

        col = image_col or self.image_col
        if col is None:
            raise ConfigError(f"{source}: which column holds the image paths? give --image-col (image_col=...)")
        if col not in frame.columns:
            raise DataError(f"{source}: unknown image column {col!r}{close_matches(col, frame.columns)}")
        base = root or (Path(self.image_root) if self.image_root else (table.parent if table else Path.cwd()))
        paths, empty = _resolve_paths(frame, col, base, Path(source))
        if empty:
            raise DataError(empty[0])
        id_col = self.id_col if self.id_col and self.id_col in frame.columns else col
        return NewExamples(frame[[id_col]], list(paths), source, frame)

    def _from_idx(self, path: Path, source: str, prefix: str | None) -> NewExamples:
        from .idx import read_idx

        images = read_idx(path)
        if images.ndim != 3:
            raise DataError(f"{path}: expected a 3-d IDX array of images (N x H x W), found {images.ndim}-d "
                            f"{list(images.shape)}")
        if images.dtype != np.uint8:  # as the IDX source scales them
            a = images.astype(np.float64)
            lo, hi = a.min(), a.max()
            images = ((a - lo) / (hi - lo if hi > lo else 1.0) * 255 + 0.5).astype(np.uint8)
        ids = [f"{prefix}/{i}" if prefix else i for i in range(len(images))]
        return NewExamples(pd.DataFrame({"id": ids}), list(images), source)

    def batch(self, examples: NewExamples, rows: np.ndarray) -> torch.Tensor | dict[str, torch.Tensor]:
        u8 = np.stack([_decode_image(examples.items[int(i)], self.spec, f"image {examples.keep.iloc[int(i), 0]}")
                       for i in rows])
        if not self.views or not any(self.views.values()):
            return self.pixels(u8)
        return {task: self.pixels(u8, k) for task, k in self.views.items()}

    def describe(self) -> dict[str, Any]:
        c, (h, w) = self.spec.channels, self.spec.size
        p = self.pixels
        return {
            "input": f"float32 (batch, {c}, {h}, {w})",
            "steps": _steps([f"decode with Pillow, convert to {'grey (L)' if c == 1 else 'RGB'}",
                      f"resize to {h}x{w} (height x width) with {self.spec.resample or 'area when shrinking, bilinear when enlarging'}",
                      "x = uint8 / 255", "x = 1 - x" if p.invert else None,
                      "x = (x - mean) / std per channel" if p.mean is not None else None,
                      f"per task, counter-clockwise quarter turns (rot90): {self.views}" if any(self.views.values()) else None]),
            "decode": self.spec.key(), **p.to_dict(), "views": self.views,
        }


# ----------------------------------------------------------------- volumes


@dataclass
class VolumeInputs(Inputs):
    """Volumes read as training read them and put through the run's :class:`Preprocess`."""

    prep: Any = None  # volume.Preprocess
    id_col: str | None = None
    pattern: str | None = None
    column: str | None = None
    volume_root: str | None = None

    kind = "volume"

    def locate(self, data: Any, *, source: str | None = None, root: str | Path | None = None,
               image_col: str | None = None, join_paths: Sequence[str | Path] | str | Path | None = None,
               skip_rows: int | None = None) -> NewExamples:
        self._reject("image_col (--image-col)", image_col)
        self._reject("join_paths (--join-data)", join_paths or None)
        if isinstance(data, pd.DataFrame):
            return self._from_table(data, source or "the data", Path(root) if root else None, None)
        if isinstance(data, (str, os.PathLike)):
            p = _existing(data)
            source = source or str(p)
            if p.is_dir():
                files = _files_under(p, VOLUME_EXTENSIONS)
                if not files:
                    raise DataError(f"{p}: no volume files ({', '.join(VOLUME_EXTENSIONS)}) under it")
                return NewExamples(pd.DataFrame({"id": [f.relative_to(p).as_posix() for f in files]}),
                                   [str(f) for f in files], source)
            if _is_table(p):
                return self._from_table(self._read(p, skip_rows), source, Path(root) if root else None, p)
            if p.name.lower().endswith(VOLUME_EXTENSIONS):
                return NewExamples(pd.DataFrame({"volume": [str(p)]}), [str(p)], source)
            raise DataError(f"{p}: not a volume file ({', '.join(VOLUME_EXTENSIONS)}), a folder of them or a table")
        source = source or "the given volumes"
        if isinstance(data, np.ndarray) and data.ndim == 5:
            data = list(data)  # a stack (N, C, D, H, W)
        elif not isinstance(data, (list, tuple)):
            data = [data]
        if not data:
            raise DataError("no volume given")
        items = [str(Path(d).expanduser()) if isinstance(d, (str, os.PathLike)) else d for d in data]
        names = [it if isinstance(it, str) else k for k, it in enumerate(items)]
        return NewExamples(pd.DataFrame({"volume": names}), items, source)

    def _from_table(self, frame: pd.DataFrame, source: str, root: Path | None, table: Path | None) -> NewExamples:
        from .volume import locate_by_column, locate_by_pattern

        base = root or (Path(self.volume_root) if self.volume_root else (table.parent if table else Path.cwd()))
        if self.pattern is not None:
            if self.id_col not in frame.columns:
                raise DataError(f"{source}: unknown id column {self.id_col!r} (the volume pattern's {{id}})"
                                f"{close_matches(self.id_col, frame.columns)}")
            paths, _ = locate_by_pattern(frame[self.id_col].tolist(), self.pattern, base)
            key = self.id_col
        else:
            paths = locate_by_column(frame, self.column, base, Path(source))
            key = self.id_col if self.id_col and self.id_col in frame.columns else self.column
        have = np.array([p is not None for p in paths], dtype=bool)
        if not have.any():
            how = f"{self.pattern!r} under {base}" if self.pattern else f"column {self.column!r}"
            raise DataError(f"{source}: no row has a volume ({how})")
        if not have.all():
            example = frame[key].iloc[int(np.flatnonzero(~have)[0])]
            how = f"no file matches {self.pattern!r} under {base}" if self.pattern else f"empty {self.column!r} cell"
            warnings.warn(f"{source}: {int((~have).sum())} of {len(frame)} row(s) have no volume ({how}; e.g. "
                          f"{example!r}); they get no prediction")
        frame = frame.loc[have]
        return NewExamples(frame[[key]], [p for p in paths if p is not None], source, frame)

    def batch(self, examples: NewExamples, rows: np.ndarray) -> torch.Tensor:
        from .volume import as_volume

        out = []
        for i in rows:
            item = examples.items[int(i)]
            name = item if isinstance(item, str) else f"volume {examples.keep.iloc[int(i), 0]}"
            out.append(self.prep(as_volume(item, canonical=self.prep.canonical, name=name), name))
        return torch.from_numpy(np.stack(out)).to(torch.float32)

    def describe(self) -> dict[str, Any]:
        p = self.prep
        return {
            "input": f"float32 (batch, {p.channels}, {', '.join(str(s) for s in p.shape)})",
            "steps": _steps(["NIfTI: scale factors applied, reoriented to the closest RAS+" if p.canonical else "NIfTI: scale factors applied",
                      "NaN voxels -> the volume's minimum",
                      f"mask: {p.mask}" + (f" (> {p.mask_threshold})" if p.mask == "threshold" else ""),
                      f"clip to percentiles {list(p.clip_percentiles)} within the mask" if p.clip_percentiles else None,
                      {"zscore": "(x - mean) / sd within the mask, per channel",
                       "minmax": "(x - min) / (max - min) within the mask, per channel", "none": None}[p.normalize],
                      f"{p.fit} to {list(p.shape)} (D, H, W)" + (f", resample {p.resample}" if p.fit == "resize" else "")]),
            "preprocessing": p.key(),
        }


# ----------------------------------------------------------------- the pipeline of a run


def input_pipeline(state: dict[str, Any], cfg: Config, *, what: str) -> Inputs:
    """The inputs pipeline of a run from its ``data_state.json`` and config (``what`` names the
    run or the exported file in errors)."""
    kind = state.get("kind")
    opts = cfg.data.options
    read_cfg = cfg.data.model_copy()
    if kind == "table" and state.get("features"):
        shape = tuple(state["input_spec"]["shape"])
        return TableInputs(read_cfg, FeatureEncoder.from_dict(state["features"]), dict(state.get("value_map") or {}),
                           list(cfg.data.join), cfg.data.id_col, shape)
    if kind == "images" and state.get("preprocessing"):
        pre = state["preprocessing"]
        views = {name: int(v.get("rot90", 0)) for name, v in (opts.get("task_views") or {}).items()}
        id_col = cfg.data.id_col or (state.get("image_col") if state.get("source") == "image_table" else None)
        return ImageInputs(read_cfg, DecodeSpec.from_key(pre["decode"]), PixelTransform.from_dict(pre),
                           state.get("image_col") or opts.get("image_col"), opts.get("image_root"), id_col, views)
    if kind == "volumes" and state.get("preprocessing"):
        from .volume import Preprocess

        return VolumeInputs(read_cfg, Preprocess.from_key(state["preprocessing"]), cfg.data.id_col,
                            opts.get("volume_pattern"), opts.get("volume_col"), opts.get("volume_root"))
    source = state.get("source") or kind
    raise DataError(f"{what}: predict takes runs trained on tables, images or volumes; this run's data is {source}")


# ----------------------------------------------------------------- running a model and decoding


def predict_scores(forward: Callable[..., dict[str, torch.Tensor]], tasks: Sequence[Task], inputs: Inputs,
                   examples: NewExamples, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per task the scores of :meth:`Task.predict` (class probabilities, values in the target's
    units, label probabilities) for every located example, in order. ``forward(x, tasks=None)``
    is the model; per-task views call it once per task with that task's input."""
    scores: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    by_name = {t.name: t for t in tasks}
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            x = inputs.batch(examples, np.arange(start, min(start + batch_size, len(examples))))
            if isinstance(x, dict):
                out = {t: forward(x[t], tasks=[t])[t] for t in by_name}
            else:
                out = forward(x)
            for name, task in by_name.items():
                scores[name].append(task.predict(out[name]))
    return {name: np.concatenate(parts) if parts else np.zeros((0,)) for name, parts in scores.items()}


def decode_predictions(tasks: Sequence[Task], scores: dict[str, np.ndarray], keep: pd.DataFrame) -> pd.DataFrame:
    """One row per example: ``keep``'s columns (ids), then per task the prediction in the target's
    own terms: categorical ``<task>`` (the class label) and ``<task>:p[<class>]`` per class;
    numerical ``<task>`` in the target's units; multilabel ``<task>:p[<label>]`` per label."""
    result = keep.copy()
    columns: dict[str, Any] = {}
    for t in tasks:
        s = scores[t.name]
        if t.kind == "categorical":
            columns[t.name] = [t.classes[i] for i in s.argmax(1)] if len(s) else []
            for k, c in enumerate(t.classes):
                columns[f"{t.name}:p[{c}]"] = s[:, k] if len(s) else []
        elif t.kind == "numerical":
            columns[t.name] = s
        else:
            for k, c in enumerate(t.classes):
                columns[f"{t.name}:p[{c}]"] = s[:, k]
    new = pd.DataFrame(columns, index=result.index)
    return pd.concat([result.drop(columns=[c for c in new.columns if c in result.columns]), new], axis=1)
