"""What every image source shares: preprocessing options, decoding, the decoded-image cache, the
lazy :class:`ImageStore` (an ``InputStore``), training-split statistics and augmentation.

The pipeline has two stages so that an epoch never re-decodes a file:

1. *decode* (once per image, cached): file bytes → Pillow → grey (``L``) or ``RGB`` → resize to
   ``image_size`` → ``uint8`` array (C, H, W). Kept in memory (``cache: memory``, default), in a
   ``.npy`` memory map under ``cache_dir`` keyed by the files and the decode options
   (``cache: disk``, reused by later runs), or not at all (``cache: none``: decoded per batch).
2. *per batch* (cheap tensor ops): ``x = u8 / 255``, ``x = 1 − x`` when ``invert``, a fixed
   per-task ``rot90``, then ``x = (x − mean) / std`` per channel (statistics of the training split
   when ``normalize: train``). Training batches then go through :class:`Augment` (random crop with
   padding, flips, small rotations; torch ops driven by the batch's ``torch.Generator``).

Bad files: missing or unidentifiable images are found when the source opens every header
(``verify_images: header``, default); ``verify_images: decode`` decodes every image up front
(filling the cache), which also finds files that are truncated after a valid header. Either
raises a :class:`~sharewise.errors.DataError` naming the file, or, with ``skip_bad_images: true``,
drops those images with one warning that counts them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
CACHE_VERSION = 1


# ----------------------------------------------------------------- options


class AugmentOptions(BaseModel):
    """Light training-only augmentation (``data.augment``); everything off by default."""

    model_config = ConfigDict(extra="forbid")
    crop_padding: int = Field(0, ge=0, description="random crop of the original size after padding by this many pixels")
    hflip: bool = False
    vflip: bool = False
    rotate: float = Field(0.0, ge=0, le=180, description="degrees; uniform in [-rotate, rotate]")

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.vflip or self.rotate)


class ImageOptions(BaseModel):
    """``data.*`` keys shared by the image sources (each source's options extend these)."""

    model_config = ConfigDict(extra="forbid")
    image_size: int | tuple[int, int] | None = None  # (height, width); default: the files' own size
    # default: area when shrinking, bilinear when enlarging
    resample: Literal["area", "bilinear", "bicubic", "nearest", "lanczos"] | None = None
    color: Literal["auto", "grey", "rgb"] = "auto"  # auto: grey when the first image is grey, else rgb
    invert: bool = False  # x -> 1 - x (Omniglot: strokes become 1)
    normalize: Literal["train", "none"] = "train"  # per-channel (x - mean) / std, statistics of the training split
    mean: list[float] | None = None  # explicit statistics (override normalize: train)
    std: list[float] | None = None
    stats_sample: int = Field(10000, ge=1)  # at most this many training images for the statistics (seeded sample)
    augment: AugmentOptions = Field(default_factory=AugmentOptions)
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None  # default $SHAREWISE_CACHE or ~/.cache/sharewise/images
    verify_images: Literal["header", "decode"] = "header"
    skip_bad_images: bool = False

    @field_validator("image_size")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        size = (v, v) if isinstance(v, int) else v
        if size is not None and min(size) < 1:
            raise ValueError("image sizes must be >= 1")
        return v

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) or None."""
        if self.image_size is None:
            return None
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)


_RESAMPLE = {"area": "BOX", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "LANCZOS"}


@dataclass(frozen=True)
class DecodeSpec:
    """Stage 1 of the pipeline: colour mode and output size of the cached ``uint8`` images."""

    channels: int  # 1 (grey) or 3 (RGB)
    size: tuple[int, int]  # (height, width)
    resample: str | None = None

    def key(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": list(self.size), "resample": self.resample}

    @classmethod
    def from_key(cls, key: dict[str, Any]) -> DecodeSpec:
        return cls(int(key["channels"]), tuple(int(s) for s in key["size"]), key.get("resample"))


def decode_spec(opts: ImageOptions, first_mode: str, native_size: tuple[int, int]) -> DecodeSpec:
    """Resolve ``color: auto`` and the default size from the first image (``native_size`` = (H, W))."""
    channels = {"grey": 1, "rgb": 3}.get(opts.color) or (1 if first_mode in GREY_MODES else 3)
    return DecodeSpec(channels, opts.size or native_size, opts.resample)


def _resample_filter(spec: DecodeSpec, src_hw: tuple[int, int]):
    from PIL import Image

    name = spec.resample or ("area" if spec.size[0] * spec.size[1] <= src_hw[0] * src_hw[1] else "bilinear")
    return getattr(Image.Resampling, _RESAMPLE[name])


def pil_to_array(img: Any, spec: DecodeSpec) -> np.ndarray:
    """A Pillow image as ``uint8`` (C, H, W) in the spec's colour mode and size."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F") and spec.channels == 1:
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    img = img.convert("L" if spec.channels == 1 else "RGB")
    h, w = spec.size
    if img.size != (w, h):
        img = img.resize((w, h), _resample_filter(spec, (img.size[1], img.size[0])))
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def array_to_decoded(images: np.ndarray, spec: DecodeSpec) -> np.ndarray:
    """(N, H, W) ``uint8`` (IDX) to (N, C, H', W') under ``spec`` (resizing with Pillow when needed)."""
    n, h, w = images.shape
    if spec.size == (h, w) and spec.channels == 1:
        return images[:, None]
    from PIL import Image

    out = np.empty((n, spec.channels, *spec.size), dtype=np.uint8)
    for i in range(n):
        out[i] = pil_to_array(Image.fromarray(images[i], "L"), spec)
    return out


# ----------------------------------------------------------------- where the bytes are


class ImageFiles:
    """The images of a set, each a file path or a member of a zip archive (``(zip, member)``).

    Names in errors are the file path, or ``archive.zip:member``. Zip handles are opened lazily,
    once per process.
    """

    def __init__(self, locations: Sequence[str | tuple[str, str]]) -> None:
        self.locations = list(locations)
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.locations)

    def name(self, i: int) -> str:
        loc = self.locations[i]
        return loc if isinstance(loc, str) else f"{loc[0]}:{loc[1]}"

    def _zip(self, path: str) -> zipfile.ZipFile:
        if self._pid != os.getpid():
            self._zips, self._pid = {}, os.getpid()
        if path not in self._zips:
            try:
                self._zips[path] = zipfile.ZipFile(path)
            except (OSError, zipfile.BadZipFile) as err:
                raise DataError(f"{path}: cannot open the zip archive ({err})") from None
        return self._zips[path]

    def read(self, i: int) -> bytes:
        loc = self.locations[i]
        try:
            if isinstance(loc, str):
                with open(loc, "rb") as fh:
                    return fh.read()
            return self._zip(loc[0]).read(loc[1])
        except FileNotFoundError:
            raise DataError(f"image file not found: {self.name(i)}") from None
        except KeyError:
            raise DataError(f"image not found in the archive: {self.name(i)}") from None
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{self.name(i)}: cannot read the image file ({err})") from None

    def open(self, i: int):
        """The image as a lazily decoded Pillow image (header read only)."""
        from PIL import Image, UnidentifiedImageError

        data = self.read(i)
        if not data:
            raise DataError(f"{self.name(i)}: the image file is empty")
        try:
            return Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise DataError(f"{self.name(i)}: not an image Pillow can read (corrupt or unsupported format)") from None
        except Exception as err:  # Pillow raises many types for damaged headers
            raise DataError(f"{self.name(i)}: corrupt image header ({type(err).__name__}: {err})") from None

    def decode(self, i: int, spec: DecodeSpec) -> np.ndarray:
        img = self.open(i)
        try:
            img.load()
            return pil_to_array(img, spec)
        except Exception as err:
            raise DataError(f"{self.name(i)}: cannot decode the image ({type(err).__name__}: {err}); set "
                            "data.skip_bad_images: true with data.verify_images: decode to skip such files") from None

    def identity(self) -> list[Any]:
        """What the disk cache key depends on: each file's (path, size, mtime), each archive's."""
        out: list[Any] = []
        archives: dict[str, Any] = {}
        for loc in self.locations:
            path = loc if isinstance(loc, str) else loc[0]
            if isinstance(loc, str):
                st = _stat(path)
                out.append([os.path.abspath(path), st])
            else:
                if path not in archives:
                    archives[path] = [os.path.abspath(path), _stat(path)]
                out.append(loc[1])
        return [sorted(archives.values()), out]


def _stat(path: str) -> list[int]:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, -1]


def inspect_images(files: ImageFiles, opts: ImageOptions, what: str) -> tuple[np.ndarray, str, tuple[int, int]]:
    """Open every header (``verify_images: header``) and return the usable mask, the first image's
    mode and size (H, W). Bad images raise :class:`DataError`, or are skipped with one warning.

    Without ``image_size``, every image must have the first one's size."""
    ok = np.ones(len(files), dtype=bool)
    bad: list[str] = []
    first: tuple[str, tuple[int, int]] | None = None
    for i in range(len(files)):
        try:
            img = files.open(i)
            hw = (img.size[1], img.size[0])
        except DataError as err:
            if not opts.skip_bad_images:
                raise
            ok[i] = False
            bad.append(str(err))
            continue
        if first is None:
            first = (img.mode, hw)
        elif opts.size is None and hw != first[1]:
            raise DataError(f"{files.name(i)}: image size {hw[1]}x{hw[0]} differs from the first image's "
                            f"{first[1][1]}x{first[1][0]}; set data.image_size to resize every image")
    if first is None:
        raise DataError(f"{what}: no readable image" + (f" ({len(bad)} bad file(s), e.g. {bad[0]})" if bad else ""))
    if bad:
        warn_skipped(what, bad)
    return ok, first[0], first[1]


def warn_skipped(what: str, bad: Sequence[str]) -> None:
    warnings.warn(f"{what}: skipped {len(bad)} bad image(s) (data.skip_bad_images); first: {bad[0]}")


# ----------------------------------------------------------------- the decoded-image cache


class DecodedImages:
    """``uint8`` (N, C, H, W) images decoded once on first access and kept (memory or disk cache).

    ``get(rows)`` returns the images of ``rows`` (indices into the set), decoding those not yet
    cached. Built from an array (IDX) everything is present from the start.
    """

    def __init__(self, files: ImageFiles | None, spec: DecodeSpec, *, cache: str = "memory",
                 cache_dir: str | None = None, array: np.ndarray | None = None) -> None:
        self.files, self.spec, self.cache = files, spec, cache
        self.shape = (spec.channels, *spec.size)
        self.cache_path: Path | None = None
        if array is not None:
            self._data, self._done = array, None
            self.cache = "memory"
            return
        assert files is not None
        n = len(files)
        if cache == "memory":
            self._data = np.empty((n, *self.shape), dtype=np.uint8)
            self._done = np.zeros(n, dtype=bool)
        elif cache == "disk":
            self._data, self._done = self._open_disk_cache(cache_dir)
        else:
            self._data, self._done = None, None

    def __len__(self) -> int:
        return len(self._data) if self.files is None else len(self.files)

    def _open_disk_cache(self, cache_dir: str | None):
        root = Path(cache_dir or os.environ.get("SHAREWISE_CACHE") or Path.home() / ".cache" / "sharewise" / "images")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"data.cache_dir: cannot create {root}: {err.strerror or err}") from None
        key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "files": self.files.identity(), **self.spec.key()},
                                        sort_keys=True).encode()).hexdigest()[:24]
        data_path, done_path = root / f"{key}.npy", root / f"{key}.done.npy"
        n = len(self.files)
        for path, dtype, shape in ((data_path, np.uint8, (n, *self.shape)), (done_path, np.bool_, (n,))):
            if not path.exists():
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
                try:
                    os.link(tmp, path)  # atomic: a concurrent creator wins, we reuse its file
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink(missing_ok=True)
        data = np.load(data_path, mmap_mode="r+")
        done = np.load(done_path, mmap_mode="r+")
        if data.shape != (n, *self.shape) or done.shape != (n,):
            raise DataError(f"{data_path}: image cache has shape {data.shape}, expected {(n, *self.shape)}; delete it")
        self.cache_path = data_path
        return data, done

    def decode_one(self, i: int) -> np.ndarray:
        return self.files.decode(i, self.spec)

    def get(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._done is None:
            if self._data is not None:
                return self._data[rows]
            out = np.empty((len(rows), *self.shape), dtype=np.uint8)
            for k, i in enumerate(rows):
                out[k] = self.decode_one(int(i))
            return out
        missing = np.unique(rows[~self._done[rows]])
        if len(missing):
            for i in missing:
                self._data[i] = self.decode_one(int(i))
            self._done[missing] = True  # after the pixels, so a reader never sees a half-written image
        return np.asarray(self._data[rows])

    def decode_all(self, rows: np.ndarray, *, skip: bool, what: str) -> np.ndarray:
        """``verify_images: decode``: decode ``rows`` now; return the mask of those that decoded."""
        ok = np.ones(len(rows), dtype=bool)
        bad = []
        for k, i in enumerate(np.asarray(rows, dtype=np.int64)):
            if self._done is not None and self._done[i]:
                continue
            try:
                img = self.decode_one(int(i))
            except DataError as err:
                if not skip:
                    raise
                ok[k] = False
                bad.append(str(err))
                continue
            if self._done is not None:
                self._data[i] = img
                self._done[i] = True
        if bad:
            warn_skipped(what, bad)
        return ok


def open_image_files(files: ImageFiles, opts: ImageOptions, what: str) -> tuple[DecodedImages, np.ndarray]:
    """Check the files (as ``verify_images`` says) and build their cache; returns it and the usable mask."""
    ok, mode, native = inspect_images(files, opts, what)
    spec = decode_spec(opts, mode, native)
    decoded = DecodedImages(files, spec, cache=opts.cache, cache_dir=opts.cache_dir)
    if opts.verify_images == "decode":
        rows = np.flatnonzero(ok)
        ok[rows[~decoded.decode_all(rows, skip=opts.skip_bad_images, what=what)]] = False
    if not ok.any():
        raise DataError(f"{what}: no readable image")
    return decoded, ok


# ----------------------------------------------------------------- per-batch stage and the store


@dataclass
class PixelTransform:
    """Stage 2: ``uint8`` → float in [0, 1] → inversion → ``(x − mean) / std`` per channel."""

    invert: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __call__(self, u8: np.ndarray | torch.Tensor, rot90: int = 0) -> torch.Tensor:
        x = torch.as_tensor(u8).to(torch.float32).div_(255.0)
        if self.invert:
            x = 1.0 - x
        if rot90 % 4:
            x = torch.rot90(x, rot90, dims=(-2, -1)).contiguous()
        if self.mean is not None:
            c = x.shape[-3]
            x = (x - torch.tensor(self.mean).view(c, 1, 1)) / torch.tensor(self.std).view(c, 1, 1)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"invert": self.invert, "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PixelTransform:
        return cls(bool(d.get("invert", False)), tuple(d["mean"]) if d.get("mean") else None,
                   tuple(d["std"]) if d.get("std") else None)


class ImageStore:
    """The lazy ``InputStore`` of an image set: ``store[index_array]`` → float (B, C, H, W).

    ``rows`` maps the example set's positions to images of ``decoded`` (several stores can share
    one cache: the tasks of a per-task set, or a task and its rotated copy); ``rot90`` is a fixed
    counter-clockwise quarter-turn count (``np.rot90(img, k)``) for the whole store.
    """

    def __init__(self, decoded: DecodedImages, rows: np.ndarray, pixels: PixelTransform, rot90: int = 0) -> None:
        self.decoded = decoded
        self.rows = np.asarray(rows, dtype=np.int64)
        self.pixels = pixels
        self.rot90 = int(rot90) % 4

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        c, h, w = self.decoded.shape
        return (c, w, h) if self.rot90 % 2 else (c, h, w)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return self.pixels(self.decoded.get(self.rows[index]), self.rot90)


def channel_stats(decoded: DecodedImages, rows: np.ndarray, invert: bool, *, sample: int, seed: int,
                  chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over ``rows`` (the training images; a seeded sample of at most
    ``sample`` of them), after inversion. A zero std becomes 1."""
    from ..seeding import np_rng

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > sample:
        rows = np.sort(np_rng(seed, "image_stats").choice(rows, size=sample, replace=False))
    c = decoded.shape[0]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(rows), chunk):
        x = decoded.get(rows[start:start + chunk]).astype(np.float64) / 255.0
        if invert:
            x = 1.0 - x
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def pixel_transform(opts: ImageOptions, decoded: DecodedImages, train_rows: np.ndarray, seed: int) -> PixelTransform:
    """The per-batch transform: explicit ``mean``/``std``, training statistics, or none."""
    c = decoded.shape[0]
    if opts.mean is not None or opts.std is not None:
        if opts.mean is None or opts.std is None:
            raise ConfigError("data.mean and data.std go together")
        for key, v in (("mean", opts.mean), ("std", opts.std)):
            if len(v) != c:
                raise ConfigError(f"data.{key}: {len(v)} value(s) for {c} channel(s)")
        if min(opts.std) <= 0:
            raise ConfigError("data.std: every value must be > 0")
        return PixelTransform(opts.invert, tuple(opts.mean), tuple(opts.std))
    if opts.normalize == "none":
        return PixelTransform(opts.invert)
    mean, std = channel_stats(decoded, train_rows, opts.invert, sample=opts.stats_sample, seed=seed)
    return PixelTransform(opts.invert, mean, std)


# ----------------------------------------------------------------- augmentation


class Augment:
    """Training-only augmentation on a normalised batch (B, C, H, W), one draw per image from the
    batch's generator: a random shift of up to ``crop_padding`` pixels (= a random crop of the
    original size from the image padded with the background), flips, a rotation in
    ``[-rotate, rotate]`` degrees. ``fill`` is the background in normalised units per channel.
    """

    def __init__(self, opts: AugmentOptions, fill: Sequence[float]) -> None:
        self.opts = opts
        self.fill = torch.tensor(list(fill), dtype=torch.float32)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        o = self.opts
        b, c, h, w = x.shape
        if o.hflip:
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        if o.vflip:
            flip = torch.rand(b, generator=generator) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-2), x)
        if not (o.crop_padding or o.rotate):
            return x
        p = o.crop_padding
        shift = torch.randint(-p, p + 1, (b, 2), generator=generator).float() if p else torch.zeros(b, 2)
        angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(o.rotate) if o.rotate else torch.zeros(b)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # theta maps output to input coordinates (normalised to [-1, 1]); shifting the content
        # by (dx, dy) pixels samples the input at x - dx.
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
        theta[:, 0, 2] = -2.0 * shift[:, 0] / w
        theta[:, 1, 2] = -2.0 * shift[:, 1] / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        fill = self.fill.view(1, c, 1, 1) if len(self.fill) == c else self.fill.mean().view(1, 1, 1, 1)
        mode = "bilinear" if o.rotate else "nearest"
        return F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill


def make_augment(opts: ImageOptions, pixels: PixelTransform, background: float = 0.0) -> Callable | None:
    """The ``ExampleSet.transform`` for these options, or None when augmentation is off.

    ``background`` is the empty-pixel value in [0, 1] after inversion (0 for MNIST and inverted
    Omniglot, 1 for Omniglot without inversion); padding and rotation fill with it."""
    if not opts.augment.active:
        return None
    c = len(pixels.mean) if pixels.mean else 1
    fill = [(background - (pixels.mean[k] if pixels.mean else 0.0)) / (pixels.std[k] if pixels.std else 1.0)
            for k in range(c)]
    return Augment(opts.augment, fill)


# ----------------------------------------------------------------- helpers for sources


def guess_source(path: Path) -> str | None:
    """The image source for a ``data.path`` without ``data.source``: an IDX folder or file,
    an Omniglot zip/folder, a folder of class folders; None for anything else (a table)."""
    from .idx import find_idx_files
    from .omniglot import OMNIGLOT_SETS

    if path.is_dir():
        if find_idx_files(path, required=False).get("train_images"):
            return "idx"
        if path.name in OMNIGLOT_SETS or any((path / s).exists() or (path / f"{s}.zip").exists()
                                             for s in OMNIGLOT_SETS):
            return "omniglot"
        return "image_folder" if any(p.is_dir() for p in path.iterdir()) else None
    name = path.name.lower()
    if "idx" in name and ("ubyte" in name):
        return "idx"
    if path.suffix.lower() == ".zip" and path.stem in OMNIGLOT_SETS:
        return "omniglot"
    return None


def json_ready(v: Any) -> Any:
    """Numpy scalars and tuples as plain JSON values."""
    if isinstance(v, dict):
        return {str(k): json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v
