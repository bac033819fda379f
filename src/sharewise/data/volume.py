"""Volumes: a phenotype table (CSV/TSV/Parquet) with one 3-D image per subject (NIfTI or ``.npy``).

``data.source: volumes``. Targets, masks, splits and encoders come from the table through
:func:`~sharewise.data.table.prepare_table` (``inputs_from_frame=False``); the inputs are the
volumes, float32 tensors (C, D, H, W). A subject's volume is found

- through ``data.volume_pattern`` and the id column (``data.id_col``): ``{id}_T1.nii.gz``,
  ``t1/{id}-*_T1.nii.gz`` (glob characters after ``{id}``), ``sub-{id}/anat/T1w.nii.gz``; each
  directory the pattern names is listed once and its file names go into a dictionary, so matching
  costs one listing, not a search per subject; an id that matches two files is an error;
- or through ``data.volume_col``, a column of paths.

Relative patterns and paths are relative to ``data.volume_root`` (default: the table's folder).

Formats: NIfTI-1/2 (``.nii``, ``.nii.gz``; through nibabel, scale factors ``scl_slope`` /
``scl_inter`` applied, reoriented to the closest RAS+ orientation unless ``canonical: false``)
and NumPy ``.npy`` (3-D, or 4-D channels-first). A 4-D NIfTI's 4th axis becomes the channels.

Preprocessing (once per volume, then cached): NaN voxels become the volume's minimum (the
background; infinite values are an error); per channel, an optional brain ``mask`` (voxels
``!= 0``, ``> mask_threshold``, or above Otsu's threshold) chooses the voxels whose statistics
normalise the whole volume: ``zscore`` ``(x − mean) / sd``, ``minmax`` ``(x − min) / (max − min)``
(after optional percentile clipping); then ``fit`` brings it to ``volume_shape``: ``resize``
(``F.interpolate``; area averaging when shrinking, trilinear when enlarging) or ``crop_pad``
(centred, padding with the volume's minimum). Training batches may then be augmented
(:class:`VolumeAugment`: flips, small rotations/scalings/shifts through ``F.affine_grid`` +
``F.grid_sample``), driven by the generator the engine passes.

The cache (``cache: memory``, default; ``disk``: one ``.npy`` per volume under ``cache_dir``,
reused by later runs; ``none``) is keyed by each file's (path, size, mtime) and the preprocessing
settings, so an epoch never re-decodes a file and a changed file or setting is never served stale.

Lost subjects are counted, never silently dropped: rows without a volume (no file matches, empty
path cell) and rows without any known target are dropped with a warning; unreadable files (missing,
corrupt, wrong dimensionality, or holding fewer bytes than the header promises: checked for every
volume when the source is built, before a run writes anything) raise a
:class:`~sharewise.errors.DataError` naming the file, or, with ``skip_bad_volumes: true``, are
dropped with a warning. The counts are in ``data.meta`` and
``data_state.json`` (``volumes``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import Config
from ..errors import ConfigError, DataError, close_matches, first_line
from .base import InputSpec
from .sources import LoadedData, data_path, register_source
from .table import prepare_table, read_table

ITEM = "__volume__"
CACHE_VERSION = 1
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".npy")
_GLOB = re.compile(r"[*?\[]")


# ----------------------------------------------------------------- options


class VolumeAugmentOptions(BaseModel):
    """Light training-only augmentation (``data.augment``); everything off by default."""

    model_config = ConfigDict(extra="forbid")
    flip: list[int] = Field(default_factory=list, description="spatial axes (0, 1, 2) each flipped with probability 0.5")
    rotate: float = Field(0.0, ge=0, le=45, description="degrees; about each axis uniform in [-rotate, rotate]")
    scale: float = Field(0.0, ge=0, lt=1, description="isotropic zoom uniform in [1 - scale, 1 + scale]")
    shift: float = Field(0.0, ge=0, description="voxels; per axis uniform in [-shift, shift]")

    @field_validator("flip")
    @classmethod
    def _axes(cls, v: list[int]) -> list[int]:
        if any(a not in (0, 1, 2) for a in v) or len(set(v)) != len(v):
            raise ValueError("flip lists distinct spatial axes among 0, 1, 2")
        return v

    @property
    def active(self) -> bool:
        return bool(self.flip or self.rotate or self.scale or self.shift)

    @property
    def affine(self) -> bool:
        return bool(self.rotate or self.scale or self.shift)


class VolumeOptions(BaseModel):
    """``data.*`` keys of the ``volumes`` source (besides the table keys of every source)."""

    model_config = ConfigDict(extra="forbid")
    volume_pattern: str | None = None  # e.g. "t1/{id}_T1.nii.gz" or "t1/{id}-*_T1.nii.gz"; needs data.id_col
    volume_col: str | None = None  # or a column of volume paths
    volume_root: str | None = None  # base of relative patterns/paths (default: the table's folder)
    volume_shape: list[int] | None = None  # (D, H, W) after preprocessing; default: the first volume's shape
    fit: Literal["resize", "crop_pad"] = "resize"
    resample: Literal["auto", "area", "trilinear", "nearest"] = "auto"  # auto: area when shrinking, else trilinear
    canonical: bool = True  # NIfTI: reorient to the closest RAS+ (axis 0 = left to right)
    normalize: Literal["zscore", "minmax", "none"] = "zscore"
    mask: Literal["none", "nonzero", "threshold", "otsu"] = "none"  # voxels whose statistics normalise
    mask_threshold: float = 0.0  # mask: threshold keeps voxels > this (intensity after scale factors)
    clip_percentiles: tuple[float, float] | None = None  # e.g. [0.5, 99.5], within the mask, before normalising
    augment: VolumeAugmentOptions = Field(default_factory=VolumeAugmentOptions)
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None  # default $SHAREWISE_CACHE/volumes or ~/.cache/sharewise/volumes
    cache_dtype: Literal["float32", "float16"] = "float32"
    verify_volumes: Literal["header", "decode"] = "header"  # decode: read every volume up front (fills the cache)
    skip_bad_volumes: bool = False

    @field_validator("volume_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 3 or min(v) < 1):
            raise ValueError("volume_shape needs three positive sizes (D, H, W)")
        return v

    @field_validator("clip_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0 <= v[0] < v[1] <= 100):
            raise ValueError("clip_percentiles needs 0 <= low < high <= 100")
        return v

    @model_validator(mode="after")
    def _one_locator(self) -> VolumeOptions:
        if (self.volume_pattern is None) == (self.volume_col is None):
            raise ValueError("give exactly one of volume_pattern (with data.id_col) and volume_col")
        return self


# ----------------------------------------------------------------- reading one file


def volume_format(path: str) -> str:
    name = path.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    raise DataError(f"{path}: unsupported volume format (use .nii, .nii.gz or .npy)")


def volume_header(path: str, *, canonical: bool = True) -> tuple[int, tuple[int, int, int]]:
    """(channels, spatial shape after reorientation) from the header alone."""
    fmt = volume_format(path)
    try:
        if fmt == "npy":  # the memory map checks that the file holds the array its header describes
            stored = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_dtype(stored.dtype, path)
            return _channels_first_shape(stored.shape, path, channels_axis=0)
        import nibabel as nib

        img = nib.load(path)
        _check_nifti_size(img, path)
        shape = tuple(int(s) for s in img.shape)
        if canonical and len(shape) >= 3:
            ornt = nib.io_orientation(img.affine)
            spatial = [0, 0, 0]
            for axis in range(3):
                spatial[int(ornt[axis, 0])] = shape[axis]
            shape = (*spatial, *shape[3:])
        return _channels_first_shape(shape, path, channels_axis=-1)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"volume file not found: {path}") from None
    except Exception as err:  # nibabel and numpy raise many types for damaged files
        raise DataError(f"{path}: cannot read the volume header ({type(err).__name__}: {_first_line(err)})") from None


def _check_dtype(dtype: np.dtype, path: str) -> None:
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: a volume needs numbers, got dtype {dtype}")


def _check_nifti_size(img: Any, path: str) -> None:
    """Raise unless the file holds the ``vox_offset + prod(shape) · itemsize`` bytes its header
    promises (a truncated copy has a valid header). Uncompressed: the file size. Gzipped: the
    trailer's length (mod 2³²) when it agrees, else the length found by decompressing, stopping
    once enough bytes came out (a truncated file's trailer is noise)."""
    proxy = img.dataobj
    dtype = np.dtype(img.header.get_data_dtype())
    _check_dtype(dtype, path)
    offset = getattr(proxy, "offset", None)
    if offset is None:
        return
    need = int(offset) + math.prod(int(s) for s in proxy.shape) * dtype.itemsize
    have = _nifti_bytes(path, need)
    if have < need:
        raise DataError(f"{path}: truncated volume: {have} of the {need} bytes its header promises "
                        f"(shape {list(proxy.shape)}, {dtype}); data.skip_bad_volumes: true skips such files")


def _nifti_bytes(path: str, need: int) -> int:
    """The file's data length (uncompressed), counted up to ``need``."""
    if not path.lower().endswith(".gz"):
        return os.path.getsize(path)
    import gzip

    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == need % 2**32:
                return need
    have = 0
    try:
        with gzip.open(path, "rb") as g:
            while have < need:
                chunk = g.read(min(1 << 20, need - have))
                if not chunk:
                    break
                have += len(chunk)
    except EOFError:
        pass  # gzip's "compressed file ended before the end-of-stream marker": what came out counts
    return have


def _channels_first_shape(shape: tuple[int, ...], path: str, *, channels_axis: int) -> tuple[int, tuple[int, int, int]]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 3:
        return 1, shape  # type: ignore[return-value]
    if len(shape) == 4:
        if channels_axis == 0:
            return shape[0], shape[1:]  # type: ignore[return-value]
        return shape[3], shape[:3]  # type: ignore[return-value]
    raise DataError(f"{path}: a volume needs 3 dimensions (or 4 with channels), got shape {list(shape)}")


def read_volume(path: str, *, canonical: bool = True) -> np.ndarray:
    """The volume as float32 (C, D, H, W): NIfTI intensities with ``scl_slope``/``scl_inter``
    applied (``get_fdata``) and reoriented to RAS+ when ``canonical``; ``.npy`` as stored."""
    fmt = volume_format(path)
    try:
        if fmt == "npy":
            a = np.load(path, allow_pickle=False)
            if a.dtype.kind not in "biuf":
                raise DataError(f"{path}: a volume needs numbers, got dtype {a.dtype}")
            a = a.astype(np.float32, copy=False)
            channels, spatial = _channels_first_shape(a.shape, path, channels_axis=0)
            return a.reshape(channels, *spatial)
        import nibabel as nib

        return _nifti_array(nib.load(path), path, canonical=canonical)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"volume file not found: {path}") from None
    except Exception as err:
        raise DataError(f"{path}: cannot read the volume ({type(err).__name__}: {_first_line(err)}); "
                        "data.skip_bad_volumes: true with data.verify_volumes: decode skips such files") from None


def _nifti_array(img: Any, name: str, *, canonical: bool) -> np.ndarray:
    """A nibabel image as float32 (C, D, H, W), reoriented to the closest RAS+ when ``canonical``."""
    import nibabel as nib

    if canonical:
        img = nib.as_closest_canonical(img)
    a = img.get_fdata(dtype=np.float32)
    channels, spatial = _channels_first_shape(a.shape, name, channels_axis=-1)
    return np.ascontiguousarray(np.moveaxis(a.reshape(*spatial, channels), -1, 0))


def as_volume(item: Any, *, canonical: bool = True, name: str = "volume") -> np.ndarray:
    """One volume to predict on as float32 (C, D, H, W), read as training read its files: a path
    (:func:`read_volume`), a nibabel image (reoriented like a file), or a NumPy array (D, H, W) or
    channels-first (C, D, H, W), taken to be in the orientation the model was trained on."""
    if isinstance(item, (str, os.PathLike)):
        return read_volume(str(item), canonical=canonical)
    if hasattr(item, "affine") and hasattr(item, "get_fdata"):
        try:
            return _nifti_array(item, name, canonical=canonical)
        except DataError:
            raise
        except Exception as err:  # nibabel raises many types for damaged images
            raise DataError(f"{name}: cannot read the volume ({type(err).__name__}: {_first_line(err)})") from None
    a = np.asarray(item)
    _check_dtype(a.dtype, name)
    if a.ndim not in (3, 4):
        raise DataError(f"{name}: a volume array needs 3 dimensions (D, H, W) or 4 (C, D, H, W), got shape {list(a.shape)}")
    return np.ascontiguousarray(a.reshape(1, *a.shape) if a.ndim == 3 else a, dtype=np.float32)


def _first_line(err: Exception) -> str:
    return first_line(err, "no detail")


# ----------------------------------------------------------------- preprocessing


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the histogram cut that maximises the between-class variance
    ``w0 · w1 · (μ0 − μ1)²``; the foreground is ``values > threshold``."""
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1]))
    return float(edges[k + 1])


@dataclass(frozen=True)
class Preprocess:
    """The per-volume pipeline: mask → clip → normalise → fit to ``shape``; part of the cache key."""

    shape: tuple[int, int, int]
    channels: int
    fit: str = "resize"
    resample: str = "auto"
    canonical: bool = True
    normalize: str = "zscore"
    mask: str = "none"
    mask_threshold: float = 0.0
    clip_percentiles: tuple[float, float] | None = None
    dtype: str = "float32"

    def key(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "channels": self.channels, "fit": self.fit, "resample": self.resample,
                "canonical": self.canonical, "normalize": self.normalize, "mask": self.mask,
                "mask_threshold": self.mask_threshold,
                "clip_percentiles": list(self.clip_percentiles) if self.clip_percentiles else None, "dtype": self.dtype}

    @classmethod
    def from_key(cls, key: dict[str, Any]) -> Preprocess:
        """The pipeline a run recorded (``data_state.json`` → ``preprocessing``)."""
        clip = key.get("clip_percentiles")
        return cls(tuple(key["shape"]), int(key["channels"]), key.get("fit", "resize"), key.get("resample", "auto"),
                   bool(key.get("canonical", True)), key.get("normalize", "zscore"), key.get("mask", "none"),
                   float(key.get("mask_threshold", 0.0)), tuple(clip) if clip else None, key.get("dtype", "float32"))

    def brain_mask(self, channel: np.ndarray) -> np.ndarray | None:
        if self.mask == "none":
            return None
        if self.mask == "nonzero":
            m = channel != 0
        elif self.mask == "threshold":
            m = channel > self.mask_threshold
        else:
            m = channel > otsu_threshold(channel)
        return m if m.any() else None  # an empty mask falls back to the whole volume

    def __call__(self, volume: np.ndarray, name: str = "volume") -> np.ndarray:
        """float32 (C, D, H, W) in, (C, *shape) in ``dtype`` out."""
        if volume.shape[0] != self.channels:
            raise DataError(f"{name}: {volume.shape[0]} channel(s), expected {self.channels} like the first volume")
        if np.isinf(volume).any():
            raise DataError(f"{name}: the volume contains infinite values")
        out = np.empty(volume.shape, dtype=np.float32)
        for c in range(volume.shape[0]):
            x = volume[c].astype(np.float32, copy=True)
            nan = np.isnan(x)
            if nan.any():  # NaN marks "no data" in some pipelines: the background, i.e. the minimum
                if nan.all():
                    raise DataError(f"{name}: channel {c} has no value (every voxel is NaN)")
                x[nan] = x[~nan].min()
            m = self.brain_mask(x)
            inside = x[m] if m is not None else x.ravel()
            if self.clip_percentiles is not None:
                lo, hi = np.percentile(inside, self.clip_percentiles)
                x = np.clip(x, lo, hi)
                inside = x[m] if m is not None else x.ravel()
            if self.normalize == "zscore":
                mean, sd = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
                x = (x - mean) / (sd if sd > 0 else 1.0)
            elif self.normalize == "minmax":
                lo, hi = float(inside.min()), float(inside.max())
                x = (x - lo) / (hi - lo if hi > lo else 1.0)
            out[c] = x
        t = torch.from_numpy(out)
        if tuple(t.shape[1:]) != self.shape:
            t = resize_volume(t, self.shape, self.resample) if self.fit == "resize" else crop_or_pad(t, self.shape)
        return t.numpy().astype(self.dtype, copy=False)


def resize_volume(x: torch.Tensor, shape: Sequence[int], resample: str = "auto") -> torch.Tensor:
    """(C, D, H, W) → (C, *shape) with ``F.interpolate`` (``auto``: area when every axis shrinks)."""
    mode = resample
    if mode == "auto":
        mode = "area" if all(s <= d for s, d in zip(shape, x.shape[1:])) else "trilinear"
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(x[None], size=tuple(int(s) for s in shape), mode=mode, **kwargs)[0]


def crop_or_pad(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centred crop or pad of (C, D, H, W) to (C, *shape); padding takes the volume's minimum."""
    fill = float(x.min())
    for axis, target in enumerate(shape, start=1):
        size = x.shape[axis]
        if size > target:
            x = x.narrow(axis, (size - target) // 2, target)
        elif size < target:
            before = (target - size) // 2
            x = F.pad(x, _pad_arg(x.dim(), axis, before, target - size - before), value=fill)
    return x.contiguous()


def _pad_arg(ndim: int, axis: int, before: int, after: int) -> list[int]:
    """``F.pad`` amounts (last dimension first) that pad ``axis`` of a (C, D, H, W) tensor."""
    pads = [0] * (2 * ndim)
    k = ndim - 1 - axis  # position of `axis` counted from the last dimension
    pads[2 * k], pads[2 * k + 1] = before, after
    return pads


# ----------------------------------------------------------------- the cache and the store


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


class VolumeCache:
    """Preprocessed volumes, read and preprocessed once each (``reads`` counts the decodes).

    ``memory``: one (N, C, D, H, W) array filled on first access; ``disk``: one ``.npy`` per
    volume under ``cache_dir``, named by a hash of (path, size, mtime, preprocessing), written
    atomically and shared by runs and processes; ``none``: decoded on every access. Safe for the
    engine's data-loading threads (``train.workers``): they fill different rows, and a volume
    decoded twice at once gives the same values.
    """

    def __init__(self, paths: Sequence[str], prep: Preprocess, *, cache: str = "memory", cache_dir: str | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.prep = prep
        self.cache = cache
        self.shape = (prep.channels, *prep.shape)
        self.reads = 0
        self._reads_lock = threading.Lock()  # data-loading worker threads decode concurrently
        self._data: np.ndarray | None = None
        self._done: np.ndarray | None = None
        self.root: Path | None = None
        if cache == "memory":
            self._data = np.empty((len(self.paths), *self.shape), dtype=prep.dtype)
            self._done = np.zeros(len(self.paths), dtype=bool)
        elif cache == "disk":
            root = Path(cache_dir or os.environ.get("SHAREWISE_CACHE") or Path.home() / ".cache" / "sharewise")
            root = root / "volumes" if not cache_dir else root
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"data.cache_dir: cannot create {root}: {err.strerror or err}") from None
            self.root = root

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, i: int) -> str:
        path = os.path.abspath(self.paths[i])
        ident = {"v": CACHE_VERSION, "path": path, "stat": list(_stat(path)), **self.prep.key()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def decode(self, i: int) -> np.ndarray:
        with self._reads_lock:
            self.reads += 1
        path = self.paths[i]
        return self.prep(read_volume(path, canonical=self.prep.canonical), path)

    def get_one(self, i: int) -> np.ndarray:
        if self.cache == "memory":
            if not self._done[i]:
                self._data[i] = self.decode(i)
                self._done[i] = True
            return self._data[i]
        if self.cache == "disk":
            file = self.root / f"{self.key(i)}.npy"
            try:
                a = np.load(file, allow_pickle=False)
                if a.shape == self.shape:
                    return a
            except (OSError, ValueError, EOFError):
                pass
            a = self.decode(i)
            tmp = file.with_name(f"{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    np.save(fh, a)
                os.replace(tmp, file)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                warnings.warn(f"volume cache: cannot write {file} ({err.strerror or err}); continuing without it")
            return a
        return self.decode(i)

    def get(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.cache == "memory":
            for i in np.unique(rows[~self._done[rows]]):
                self.get_one(int(i))
            return self._data[rows]
        out = np.empty((len(rows), *self.shape), dtype=self.prep.dtype)
        for k, i in enumerate(rows):
            out[k] = self.get_one(int(i))
        return out

    def fill_shared(self, rows: np.ndarray, rank: int, world_size: int, broadcast) -> None:
        """Decode ``rows`` now, the work shared among ``world_size`` processes (every process passes
        the same rows): this one decodes ``rows[rank::world_size]``. ``memory``: each process's
        block is then sent to the others (``broadcast(tensor, src)`` in place, as
        ``torch.distributed.broadcast``), so a run decodes each file once instead of once per
        process; ``disk``: the others read the files when they need them; ``none``: nothing is kept."""
        if self.cache == "none":
            return
        rows = np.asarray(rows, dtype=np.int64)
        for i in rows[rank::world_size]:
            self.get_one(int(i))
        if self.cache != "memory":
            return
        for src in range(world_size):
            block_rows = rows[src::world_size]
            if not len(block_rows):
                continue
            block = torch.from_numpy(np.ascontiguousarray(self._data[block_rows]))
            broadcast(block, src)
            self._data[block_rows] = block.numpy()
            self._done[block_rows] = True

    def fill(self, rows: Sequence[int], *, skip: bool) -> list[tuple[int, str]]:
        """Decode ``rows`` now (``verify_volumes: decode``); returns the (row, error) of the bad
        ones when ``skip``, else raises on the first."""
        bad = []
        for i in rows:
            try:
                self.get_one(int(i))
            except DataError as err:
                if not skip:
                    raise
                bad.append((int(i), str(err)))
        return bad


class VolumeStore:
    """The lazy ``InputStore`` of a volume set: ``store[index_array]`` → float32 (B, C, D, H, W)."""

    def __init__(self, cache: VolumeCache, rows: np.ndarray) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.cache.shape

    def warm(self, rank: int, world_size: int, broadcast) -> None:
        """Fill the cache now, shared among the processes (:meth:`VolumeCache.fill_shared`); the
        engine calls it before training with several processes."""
        self.cache.fill_shared(np.unique(self.rows), rank, world_size, broadcast)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(np.asarray(self.cache.get(self.rows[index]))).to(torch.float32)


# ----------------------------------------------------------------- augmentation


class VolumeAugment:
    """Training-only augmentation of a batch (B, C, D, H, W), one draw per volume from the batch's
    generator: flips of the chosen axes (probability 0.5 each), then one affine map about the
    centre: rotations about the three axes in ``[-rotate, rotate]`` degrees, an isotropic zoom in
    ``[1 − scale, 1 + scale]`` and a shift in ``[-shift, shift]`` voxels per axis, resampled
    trilinearly (``F.affine_grid``/``F.grid_sample``, in voxel units so that anisotropic shapes
    rotate rigidly), filling with each volume's minimum (its background)."""

    def __init__(self, opts: VolumeAugmentOptions) -> None:
        self.opts = opts

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        o = self.opts
        b = x.shape[0]
        for axis in o.flip:
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1, 1), x.flip(2 + axis), x)
        if not o.affine:
            return x
        angles = (torch.rand(b, 3, generator=generator) * 2 - 1) * math.radians(o.rotate)
        zoom = 1 + (torch.rand(b, generator=generator) * 2 - 1) * o.scale
        shift = (torch.rand(b, 3, generator=generator) * 2 - 1) * o.shift  # voxels, (D, H, W) order
        theta = affine_theta(angles, zoom, shift, tuple(x.shape[2:]))
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        fill = x.amin(dim=(1, 2, 3, 4), keepdim=True)
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def affine_theta(angles: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """``theta`` (B, 3, 4) for ``F.affine_grid`` (output → input, normalised (x, y, z) = (W, H, D)
    coordinates) of a rotation by ``angles`` (B, 3) radians, zoom (B,) and shift (B, 3) voxels
    (D, H, W order) about the centre: ``n_in = N⁻¹ · (R / zoom) · N · n_out − N⁻¹ · t``, with
    ``N = diag(W, H, D) / 2`` converting normalised to voxel units."""
    b = angles.shape[0]
    cx, cy, cz = torch.cos(angles).unbind(1)
    sx, sy, sz = torch.sin(angles).unbind(1)
    one, zero = torch.ones(b), torch.zeros(b)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(b, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(b, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(b, 3, 3)
    rot = rz @ ry @ rx / zoom.view(b, 1, 1)
    half = torch.tensor([size[2], size[1], size[0]], dtype=torch.float32) / 2  # (x, y, z) = (W, H, D)
    lin = rot * half.view(1, 1, 3) / half.view(1, 3, 1)  # N⁻¹ · M · N
    t = -shift.flip(1) / half.view(1, 3)  # (D, H, W) voxels → normalised (x, y, z)
    return torch.cat([lin, t.unsqueeze(2)], dim=2)


# ----------------------------------------------------------------- locating the volumes


def _id_text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, np.generic):
        v = v.item()
    s = str(v).strip()
    return s or None


def _listing(directory: Path, cache: dict[Path, list[str]]) -> list[str]:
    if directory not in cache:
        try:
            cache[directory] = sorted(e.name for e in os.scandir(directory) if not e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            cache[directory] = []
        except OSError as err:
            raise DataError(f"{directory}: cannot list the volume directory ({err.strerror or err})") from None
    return cache[directory]


def locate_by_pattern(ids: Sequence[Any], pattern: str, root: Path) -> tuple[list[str | None], dict[str, Any]]:
    """The file of each id (None where none matches) through ``pattern`` (``{id}`` stands for
    the id; ``*``, ``?``, ``[...]`` globs are allowed after it in the file name). Each directory
    is listed once and its names indexed in a dictionary. Returns the paths and a summary
    (directories listed, files matching the pattern whose id is not in the table)."""
    if "{id}" not in pattern:
        raise ConfigError(f"data.volume_pattern {pattern!r}: must contain {{id}}, e.g. '{{id}}_T1.nii.gz'")
    dir_part, name_part = os.path.split(pattern)
    if _GLOB.search(dir_part):
        raise ConfigError(f"data.volume_pattern {pattern!r}: glob characters are allowed in the file name only")
    if name_part.count("{id}") > 1:
        raise ConfigError(f"data.volume_pattern {pattern!r}: {{id}} may appear once in the file name")
    base = Path(dir_part) if os.path.isabs(dir_part) else root / dir_part
    listings: dict[Path, list[str]] = {}
    texts = [_id_text(v) for v in ids]
    by_dir: dict[Path, set[str]] = {}
    for t in texts:
        if t is not None:
            by_dir.setdefault(Path(str(base).replace("{id}", t)), set()).add(t)
    found: dict[tuple[Path, str], list[str]] = {}
    unclaimed = 0
    if "{id}" in name_part:
        pre, post = name_part.split("{id}")
        if _GLOB.search(pre):
            raise ConfigError(f"data.volume_pattern {pattern!r}: glob characters are allowed after {{id}} only")
        post_re = re.compile(fnmatch.translate(post)) if _GLOB.search(post) else None
        for directory, wanted in by_dir.items():
            names = _listing(directory, listings)
            if post_re is None:  # exact names: one dictionary lookup per id
                present = set(names)
                for t in wanted:
                    if f"{pre}{t}{post}" in present:
                        found[(directory, t)] = [f"{pre}{t}{post}"]
                if "{id}" not in dir_part:
                    unclaimed += sum(1 for n in names if n.startswith(pre) and n.endswith(post)
                                     and len(n) > len(pre) + len(post) and n[len(pre):len(n) - len(post)] not in wanted)
                continue
            for name in names:  # each name: the id candidates are its prefixes after `pre`
                if not name.startswith(pre):
                    continue
                rest = name[len(pre):]
                hit = False
                for k in range(1, len(rest) + 1):
                    cand = rest[:k]
                    if cand in wanted and post_re.match(rest[k:]):
                        found.setdefault((directory, cand), []).append(name)
                        hit = True
                if not hit and any(post_re.match(rest[k:]) for k in range(1, len(rest) + 1)) and "{id}" not in dir_part:
                    unclaimed += 1
    else:  # {id} in the directory only: the file name (or glob) inside each subject's directory
        name_re = re.compile(fnmatch.translate(name_part))
        for directory, wanted in by_dir.items():
            hits = [n for n in _listing(directory, listings) if name_re.match(n)]
            for t in wanted:
                found[(directory, t)] = hits
    paths: list[str | None] = []
    for t in texts:
        if t is None:
            paths.append(None)
            continue
        directory = Path(str(base).replace("{id}", t))
        hits = found.get((directory, t), [])
        if len(hits) > 1:
            raise DataError(f"data.volume_pattern {pattern!r}: id {t!r} matches {len(hits)} files in {directory} "
                            f"({hits[0]}, {hits[1]}); make the pattern specific")
        paths.append(str(directory / hits[0]) if hits else None)
    sample = next((names[0] for names in listings.values() if names), None)
    return paths, {"directories_listed": len(listings), "volumes_without_row": unclaimed, "sample_file": sample}


def locate_by_column(frame: pd.DataFrame, col: str, root: Path, table: Path) -> list[str | None]:
    """Absolute paths of ``col`` (None where the cell is empty)."""
    if col not in frame.columns:
        raise DataError(f"{table}: unknown volume column {col!r} (data.volume_col){close_matches(col, frame.columns)}")
    out: list[str | None] = []
    for v in frame[col].tolist():
        text = _id_text(v)
        if text is None:
            out.append(None)
            continue
        p = Path(text).expanduser()
        out.append(str(p if p.is_absolute() else root / p))
    return out


# ----------------------------------------------------------------- the source


@register_source("volumes", "a phenotype table with one 3-D volume per subject (data.volume_pattern or data.volume_col)",
                 ".nii .nii.gz .npy + CSV/TSV/Parquet", VolumeOptions)
def build_volumes(cfg: Config, opts: VolumeOptions) -> LoadedData:
    path = data_path(cfg.data.path)
    d = cfg.data
    if d.features is not None:
        raise ConfigError("data.features: a volume table's input is the volume only; its other columns are "
                          "targets, ids or ignored")
    if opts.volume_pattern is not None and d.id_col is None:
        raise ConfigError("data.volume_pattern needs data.id_col, the column whose values replace {id}")
    locator = opts.volume_col
    for s in cfg.tasks:
        if locator is not None and (s.column or s.name) == locator:
            raise ConfigError(f"tasks: {locator!r} is the volume column (data.volume_col), not a target")
    root = Path(opts.volume_root) if opts.volume_root else path.parent
    tables = [(path, read_table(path, d))]
    if d.test_path:
        tables.append((Path(d.test_path), read_table(d.test_path, d.for_test_file())))

    counts = {"rows": 0, "no_volume": 0, "bad_volumes": 0, "volumes_without_row": 0}
    sample = None
    notes: list[str] = []
    locations: list[str] = []
    frames: list[pd.DataFrame] = []
    for table, frame in tables:
        counts["rows"] += len(frame)
        if opts.volume_pattern is not None:
            if d.id_col not in frame.columns:
                raise DataError(f"{table}: unknown id column {d.id_col!r}{close_matches(d.id_col, frame.columns)}")
            ids = frame[d.id_col]
            dupes = ids[ids.duplicated() & ids.notna()]
            if len(dupes):
                raise DataError(f"{table}: id column {d.id_col!r} repeats {dupes.iloc[0]!r}; one row per subject")
            paths, info = locate_by_pattern(ids.tolist(), opts.volume_pattern, root)
            counts["volumes_without_row"] += info["volumes_without_row"]
            sample = sample or info["sample_file"]
        else:
            paths = locate_by_column(frame, opts.volume_col, root, table)
        have = np.array([p is not None for p in paths], dtype=bool)
        missing = int((~have).sum())
        if missing:
            counts["no_volume"] += missing
            first = frame.iloc[int(np.flatnonzero(~have)[0])]
            example = first[d.id_col] if d.id_col in frame.columns else f"row {int(np.flatnonzero(~have)[0]) + 1}"
            how = (f"no file matches {opts.volume_pattern!r} under {root}" if opts.volume_pattern
                   else f"empty {opts.volume_col!r} cell")
            notes.append(f"{table}: {missing} of {len(frame)} subject(s) have no volume ({how}; e.g. {example!r}); "
                         "they are dropped")
        frame = frame.loc[have].copy()
        frame[ITEM] = len(locations) + np.arange(int(have.sum()))
        locations += [p for p in paths if p is not None]
        frames.append(frame)
    if not locations:
        where = f"{opts.volume_pattern!r} under {root}" if opts.volume_pattern else f"column {opts.volume_col!r}"
        seen = f"; the directory holds e.g. {sample!r}" if sample else (
            "; the pattern's directory is empty or missing" if opts.volume_pattern else "")
        raise DataError(f"{path}: no subject has a volume ({where}{seen})")
    for note in notes:
        warnings.warn(note)

    ok, bad = _inspect(locations, opts)
    channels, native = ok.pop("first")
    shape = tuple(opts.volume_shape) if opts.volume_shape else native
    prep = Preprocess(shape, channels, opts.fit, opts.resample, opts.canonical, opts.normalize, opts.mask,
                      opts.mask_threshold, tuple(opts.clip_percentiles) if opts.clip_percentiles else None,
                      opts.cache_dtype)
    cache = VolumeCache(locations, prep, cache=opts.cache, cache_dir=opts.cache_dir)
    usable = ok["usable"]
    if opts.verify_volumes == "decode":
        for i, err in cache.fill(np.flatnonzero(usable), skip=opts.skip_bad_volumes):
            usable[i] = False
            bad.append(err)
    if bad:
        counts["bad_volumes"] = len(bad)
        warnings.warn(f"{path}: skipped {len(bad)} unreadable volume(s) (data.skip_bad_volumes); first: {bad[0]}")
    frames = [f[usable[f[ITEM].to_numpy()]] for f in frames]
    for (table, _), f in zip(tables, frames):
        if len(f) == 0:
            raise DataError(f"{table}: no subject left with a readable volume")
    if counts["volumes_without_row"]:
        warnings.warn(f"{path}: {counts['volumes_without_row']} volume file(s) match {opts.volume_pattern!r} but "
                      f"have no row in the table (not used)")

    run_cfg = cfg
    if d.id_col is None:
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.data.id_col = opts.volume_col
    data, full, tprep = prepare_table(frames[0], run_cfg, source=str(path),
                                      test_frame=frames[1] if len(frames) > 1 else None, inputs_from_frame=False)
    rows = full[ITEM].to_numpy().astype(np.int64)
    data.examples.inputs = VolumeStore(cache, rows)
    data.examples.transform = VolumeAugment(opts.augment) if opts.augment.active else None
    data.input_spec = InputSpec("volume", cache.shape)
    counts["dropped_no_target"] = int(data.meta.get("dropped_no_target", 0))
    counts["used"] = len(rows)
    data.meta.update({"volumes": counts, "volume_shape": list(cache.shape)})
    state = {"kind": "volumes", "source": "volumes", **tprep.to_dict(),
             "preprocessing": prep.key(), "volumes": counts,
             "locator": {"pattern": opts.volume_pattern, "column": opts.volume_col, "root": str(root)}}
    return LoadedData(data, state)


def _inspect(locations: list[str], opts: VolumeOptions) -> tuple[dict[str, Any], list[str]]:
    """Read every header: the usable mask, the first readable volume's (channels, shape), and the
    errors of the skipped ones (or raise on the first when not skipping). Without
    ``volume_shape``, every volume must have the first one's shape."""
    usable = np.ones(len(locations), dtype=bool)
    bad: list[str] = []
    first: tuple[int, tuple[int, int, int]] | None = None
    for i, loc in enumerate(locations):
        try:
            channels, spatial = volume_header(loc, canonical=opts.canonical)
            if first is not None and channels != first[0]:
                raise DataError(f"{loc}: {channels} channel(s), but the first volume has {first[0]}")
            if first is not None and opts.volume_shape is None and spatial != first[1]:
                raise DataError(f"{loc}: shape {list(spatial)} differs from the first volume's {list(first[1])}; "
                                "set data.volume_shape to bring every volume to one shape")
        except DataError as err:
            if not opts.skip_bad_volumes:
                raise
            usable[i] = False
            bad.append(str(err))
            continue
        if first is None:
            first = (channels, spatial)
    if first is None:
        raise DataError(f"no readable volume ({len(bad)} bad file(s), e.g. {bad[0]})" if bad else "no readable volume")
    return {"usable": usable, "first": first}, bad
