"""Task families: several sources as one per-task dataset at 3×32×32 (parameter-allocation spec §7.3).

The three-task-clusters experiment asks whether tasks of the same source get similar allocations
without being told their source. ``data.source: task_families`` builds its tasks from a list of
families, each through the source that reads it, every image resized to ``image_size`` (32),
replicated to 3 channels, pixel values in [0, 1], training images augmented by zero-padding to
40×40 and a random 32×32 crop (``data.crop_padding``: 4; evaluation without augmentation):

- ``omniglot``: one task per alphabet of ``data.alphabets`` (default the 20 of §7.2), the
  per-character 50/20/30 split of the Omniglot source, 105 → 32 by area interpolation, strokes 1;
- ``mnist``, ``fashion``: 10 leave-one-out tasks from IDX files (``data.mnist``, ``data.fashion``):
  task k = 9-way classification of every image but those of class k, labels above k shifted down
  by one (the IDX source's ``task_views`` with ``drop_class``); a seeded 10 % validation set
  carved from the training images, shared by the family's ten tasks; the t10k files are the test
  split; bilinear 28 → 32;
- ``digits``: the same construction on scikit-learn's bundled 8×8 digits (1 797 images, no
  download; the digits source's ``task_views``), with a seeded 60/20/20 image-level split shared
  by its ten tasks; bilinear 8 → 32;
- ``cifar100``: 20 superclass tasks from the CIFAR-100 python pickles (``data.cifar100``,
  :mod:`sharewise.data.cifar`).

Presets (``data.preset``): ``offline`` (default) = omniglot, mnist and fashion when
``data.fashion`` is set, otherwise digits; ``paper`` = cifar100, mnist, fashion (the published
construction; CIFAR-100 and Fashion-MNIST are files the user supplies). ``data.families`` lists
the families explicitly instead. The family of every task is kept in the data's ``meta``
(``families``: task → family) for the allocation plots and the separation score, never given to
the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import Config
from ..errors import ConfigError, DataError
from ..tasks import Task
from .base import InputSpec, PerTaskData
from .image_ops import json_ready
from .sources import LoadedData, register_source

Family = Literal["omniglot", "mnist", "fashion", "digits", "cifar100"]
PRESETS: dict[str, tuple[Family, ...]] = {"offline": ("omniglot", "mnist", "fashion"), "paper": ("cifar100", "mnist",
                                                                                                  "fashion")}
PATH_KEYS = {"omniglot": "omniglot", "mnist": "mnist", "fashion": "fashion", "cifar100": "cifar100"}


class TaskFamiliesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: Literal["offline", "paper"] = "offline"
    families: list[Family] | None = Field(None, description="the families, in order (default: the preset's)")
    omniglot: str | None = Field(None, description="folder with images_background(.zip) and images_evaluation(.zip)")
    alphabets: str | list[str] = "parameter_allocation"
    mnist: str | None = Field(None, description="folder with the four MNIST IDX files (+ .gz)")
    fashion: str | None = Field(None, description="folder with the four Fashion-MNIST IDX files (+ .gz)")
    cifar100: str | None = Field(None, description="folder with the CIFAR-100 python pickles train, test, meta")
    image_size: int = Field(32, ge=8)
    crop_padding: int = Field(4, ge=0, description="training: zero-pad by this much, random crop of image_size")
    idx_val_fraction: float = Field(0.1, gt=0, lt=1, description="mnist, fashion: validation share of the training "
                                                                  "images")
    digits_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    cifar_val_fraction: float = Field(0.2, gt=0, lt=1, description="cifar100: validation share per fine class")


def resolve_families(opts: TaskFamiliesOptions) -> list[Family]:
    if opts.families is not None:
        if not opts.families:
            raise ConfigError("data.families: the list is empty")
        dupes = sorted({f for f in opts.families if opts.families.count(f) > 1})
        if dupes:
            raise ConfigError(f"data.families: {dupes[0]!r} is listed twice")
        return list(opts.families)
    if opts.preset == "offline":
        return ["omniglot", "mnist", "fashion" if opts.fashion else "digits"]
    return list(PRESETS["paper"])


def _image_options(resample: str) -> dict[str, Any]:
    return {"color": "rgb", "resample": resample, "normalize": "none"}


def _sub_config(cfg: Config, path: str | None, ratios: list[float] | None) -> Config:
    sub = cfg.model_copy(deep=True)
    sub.tasks = []
    sub.data.path = path
    sub.data.test_path = None
    sub.data.source = None
    sub.split.ratios = ratios
    return sub


def _loo_views(family: str) -> dict[str, dict[str, int]]:
    return {f"{family}_loo{k}": {"drop_class": k} for k in range(10)}


def build_family(family: Family, cfg: Config, opts: TaskFamiliesOptions) -> PerTaskData:
    """One family's tasks at ``image_size`` × ``image_size``, 3 channels, [0, 1]."""
    size, augment = opts.image_size, {"crop_padding": opts.crop_padding}
    path = getattr(opts, PATH_KEYS[family]) if family in PATH_KEYS else None
    if family in PATH_KEYS and not path:
        raise ConfigError(f"data.{PATH_KEYS[family]}: the {family} family needs its files; set data."
                          f"{PATH_KEYS[family]} (or leave {family} out of data.families)")
    if path and not Path(path).exists():
        raise DataError(f"data.{PATH_KEYS[family]}: not found: {path}")
    if family == "omniglot":
        from .omniglot import OmniglotOptions, build_omniglot

        o = OmniglotOptions(alphabets=opts.alphabets, image_size=size, augment=augment, invert=True,
                            **_image_options("area"))
        return build_omniglot(_sub_config(cfg, path, None), o).data
    if family in ("mnist", "fashion"):
        from .idx import IdxOptions, build_idx

        o = IdxOptions(task_views=_loo_views(family), image_size=size, augment=augment, **_image_options("bilinear"))
        return build_idx(_sub_config(cfg, path, [1 - opts.idx_val_fraction, opts.idx_val_fraction, 0.0]), o).data
    if family == "digits":
        from ._table_source import DigitsOptions, build_digits

        o = DigitsOptions(task_views=_loo_views("digits"), image_size=size, augment=augment,
                          **_image_options("bilinear"))
        return build_digits(_sub_config(cfg, None, list(opts.digits_ratios)), o).data
    from .cifar import cifar100_superclasses

    return cifar100_superclasses(Path(path), cfg, size=size, crop_padding=opts.crop_padding,
                                 val_fraction=opts.cifar_val_fraction)


@register_source("task_families", "task families from several sources as one per-task set at 3x32x32 (the "
                 "three task clusters: Omniglot alphabets, MNIST/Fashion/digits leave-one-out, CIFAR-100 superclasses)",
                 "Omniglot zips, IDX files, CIFAR-100 python pickles, scikit-learn digits", TaskFamiliesOptions)
def build_task_families(cfg: Config, opts: TaskFamiliesOptions) -> LoadedData:
    if cfg.data.path or cfg.data.test_path:
        raise ConfigError("data.path is not used by task_families: give each family's files (data.omniglot, "
                          "data.mnist, data.fashion, data.cifar100)")
    families = resolve_families(opts)
    tasks: list[Task] = []
    examples, splits, family_of, state = {}, {}, {}, {}
    specs = {s.name: s for s in cfg.tasks}
    for family in families:
        part = build_family(family, cfg, opts)
        shape = tuple(part.input_spec.shape)
        if shape != (3, opts.image_size, opts.image_size):
            raise DataError(f"task_families: the {family} family gives images of shape {shape}, expected "
                            f"(3, {opts.image_size}, {opts.image_size})")
        for t in part.tasks:
            if t.name in examples:
                raise ConfigError(f"task_families: task {t.name!r} appears in two families")
            spec = specs.get(t.name)
            tasks.append(Task(t.name, "categorical", classes=t.classes, weight=spec.weight if spec else 1.0,
                              loss=spec.loss if spec else None))
            examples[t.name] = part.examples[t.name]
            splits[t.name] = part.splits[t.name]
            family_of[t.name] = family
        state[family] = part.meta.get("source", family)
    unknown = [name for name in specs if name not in examples]
    if unknown:
        raise ConfigError(f"tasks: {unknown[0]!r} is not a task of the families {families}")
    meta = {"source": "task_families (" + ", ".join(families) + ")", "families": family_of,
            "family_list": families, "tasks_per_family": {f: sum(v == f for v in family_of.values()) for f in families}}
    shape = (3, opts.image_size, opts.image_size)
    return LoadedData(PerTaskData(tasks, examples, splits, InputSpec("image", shape), meta),
                      json_ready({"kind": "images", "source": "task_families", "families": families, "sources": state,
                                  "tasks": [t.to_dict() for t in tasks]}))
