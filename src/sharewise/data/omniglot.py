"""Omniglot source: alphabets become tasks (per-task data), an alphabet's characters its classes.

Reads the official layout ``images_background/<Alphabet>/characterNN/IIII_DD.png`` and
``images_evaluation/...``, from the two zips or their extracted folders (a folder wins over a
zip of the same set). ``data.path`` is the folder holding them, or one zip or set folder; or give
``data.background`` / ``data.evaluation``. Only these two sets are read, never the ``small1``/
``small2`` subsets, whose images duplicate background ones (parameter-allocation spec §8.2).

``data.alphabets`` picks the tasks and their order: a list of official folder names, or a preset:

- ``parameter_allocation`` (alias ``first20``): the 20 alphabets of the Gumbel-matrix paper's
  Omniglot experiment, in the prior work's order (parameter-allocation spec §7.2; 668 characters);
- ``taan``: all 50 alphabets, the 30 background ones then the 20 evaluation ones, each
  alphabetically. The TAAN experiment (TAAN spec §6) uses all 50 (official ``images_background``
  + ``images_evaluation``) and states no order; the reference took ``os.listdir`` of one folder
  holding all 50 (file-system order, undefined), so this order is ours (it changes task indices
  and names only: TAAN treats the tasks symmetrically, and the split seeds use each alphabet's
  index among the sorted names, not its position here). Classes are the characters in the order
  of their folder number, as the reference's labels (``characterNN`` → NN − 1);
- ``all`` (default): every alphabet found, the official ones in the ``taan`` order, then any
  other (a home-made set in the same layout) alphabetically;
- ``background`` / ``evaluation``: the 30 or 20 alphabets of one set, alphabetically.

Splits are per character: its drawings (20, checked: ``drawings_per_character``) are sorted by
drawer, shuffled by a generator seeded with the run seed, the alphabet's index among the sorted
alphabet names (the 50 official ones and any other found) and the character's index, and cut by
``split.ratios``; the default here is **50/20/30** = 10/4/6 drawings (spec §7.2); the TAAN
experiment sets 0.8/0.1/0.1 = 16/2/2. No drawing is in two splits. Pixels: grey, ``invert: true``
by default (strokes 1, background 0, spec §7.2); ``invert: false`` keeps the files' values
(background 1, TAAN spec §6). ``task_weights: mean`` divides every task's loss weight by the
number of tasks (the mean of the alphabets' losses, TAAN spec §6; default ``sum``).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..config import Config
from ..errors import ConfigError, DataError, close_matches
from ..seeding import np_rng
from ..tasks import Task
from .base import ExampleSet, InputSpec, PerTaskData
from .image_ops import (ImageFiles, ImageOptions, ImageStore, json_ready, make_augment, open_image_files,
                        pixel_transform)
from .sources import LoadedData, register_source
from .splits import _allocate, carve_train, check_ratios

OMNIGLOT_SETS = ("images_background", "images_evaluation")
DEFAULT_RATIOS = (0.5, 0.2, 0.3)

BACKGROUND = (
    "Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Armenian", "Asomtavruli_(Georgian)", "Balinese",
    "Bengali", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Burmese_(Myanmar)", "Cyrillic",
    "Early_Aramaic", "Futurama", "Grantha", "Greek", "Gujarati", "Hebrew", "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Japanese_(hiragana)", "Japanese_(katakana)", "Korean", "Latin", "Malay_(Jawi_-_Arabic)", "Mkhedruli_(Georgian)",
    "N_Ko", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "Sanskrit", "Syriac_(Estrangelo)", "Tagalog", "Tifinagh",
)
EVALUATION = (
    "Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Avesta", "Ge_ez", "Glagolitic", "Gurmukhi",
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Sylheti",
    "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)
PARAMETER_ALLOCATION_20 = (
    "Gujarati", "Sylheti", "Arcadian", "Tibetan", "Old_Church_Slavonic_(Cyrillic)", "Angelic", "Malay_(Jawi_-_Arabic)",
    "Sanskrit", "Cyrillic", "Anglo-Saxon_Futhorc", "Syriac_(Estrangelo)", "Ge_ez", "Japanese_(katakana)", "Keble",
    "Manipuri", "Alphabet_of_the_Magi", "Gurmukhi", "Korean", "Early_Aramaic", "Atemayar_Qelisayer",
)
PRESETS = {
    "parameter_allocation": PARAMETER_ALLOCATION_20,
    "first20": PARAMETER_ALLOCATION_20,
    "all": BACKGROUND + EVALUATION,
    "taan": BACKGROUND + EVALUATION,
    "background": BACKGROUND,
    "evaluation": EVALUATION,
}


class OmniglotOptions(ImageOptions):
    color: Literal["auto", "grey", "rgb"] = "grey"
    invert: bool = True
    alphabets: str | list[str] = "all"
    background: str | None = None  # images_background.zip or its folder
    evaluation: str | None = None
    drawings_per_character: int | None = Field(20, ge=1)  # None: accept any count
    # "mean": each task's loss weight divided by the number of tasks, so the training loss is the mean
    # of the alphabets' losses (TAAN spec §6) rather than their sum
    task_weights: Literal["sum", "mean"] = "sum"


def find_sets(cfg: Config, opts: OmniglotOptions) -> dict[str, Path]:
    """``{set name: zip or folder}`` for the sets available."""
    found: dict[str, Path] = {}
    if cfg.data.path:
        p = Path(cfg.data.path)
        if not p.exists():
            raise DataError(f"Omniglot path not found: {p}")
        if p.is_file():
            found[p.stem if p.stem in OMNIGLOT_SETS else "images_background"] = p
        elif p.name in OMNIGLOT_SETS:
            found[p.name] = p
        else:
            for s in OMNIGLOT_SETS:
                if (p / s).is_dir():
                    found[s] = p / s
                elif (p / f"{s}.zip").is_file():
                    found[s] = p / f"{s}.zip"
            if not found:
                raise DataError(f"{p}: no images_background/images_evaluation (zip or folder) found")
    for key, s in (("background", "images_background"), ("evaluation", "images_evaluation")):
        v = getattr(opts, key)
        if v:
            if not Path(v).exists():
                raise DataError(f"data.{key}: not found: {v}")
            found[s] = Path(v)
    if not found:
        raise ConfigError("Omniglot: set data.path to the folder with images_background(.zip) and "
                          "images_evaluation(.zip), or data.background / data.evaluation")
    return found


_DRAWING = re.compile(r"^(?:(\d+)_)?(\d+)\.png$", re.IGNORECASE)


def list_set(path: Path) -> list[tuple[str, str, str, str | tuple[str, str]]]:
    """``(alphabet, character, file name, location)`` of every PNG in one set (zip or folder)."""
    out = []
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: not a readable zip archive ({err})") from None
        for name in names:
            parts = [q for q in name.split("/") if q]
            if name.endswith("/") or len(parts) < 3 or not parts[-1].lower().endswith(".png"):
                continue
            out.append((parts[-3], parts[-2], parts[-1], (str(path), name)))
    else:
        for f in path.glob("*/*/*"):
            if f.is_file() and f.suffix.lower() == ".png" and not f.name.startswith("."):
                out.append((f.parts[-3], f.parts[-2], f.name, str(f)))
    if not out:
        raise DataError(f"{path}: no <Alphabet>/<character>/<drawing>.png images found")
    return out


def resolve_alphabets(spec: str | list[str], available: list[str]) -> list[str]:
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigError(f"data.alphabets: unknown preset {spec!r}{close_matches(spec, PRESETS)} "
                              f"(presets: {', '.join(PRESETS)}; or give a list of alphabet folder names)")
        names = list(PRESETS[spec])
        if spec == "all":  # every alphabet found: the official ones in this order, then any other
            names = [a for a in names if a in available] + sorted(set(available) - set(names))
    else:
        names = list(spec)
        if not names:
            raise ConfigError("data.alphabets: the list is empty")
    dupes = sorted({a for a in names if names.count(a) > 1})
    if dupes:
        raise ConfigError(f"data.alphabets: {dupes[0]!r} is listed twice")
    missing = [a for a in names if a not in available]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConfigError(f"data.alphabets: alphabet {missing[0]!r}{more} not found in the Omniglot files"
                          f"{close_matches(missing[0], available)} (found: {', '.join(available[:8])}"
                          f"{', ...' if len(available) > 8 else ''})")
    return names


def _char_key(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


@register_source("omniglot", "Omniglot: one task per alphabet (per-task data), its characters the classes",
                 "Omniglot zips or folders", OmniglotOptions)
def build_omniglot(cfg: Config, opts: OmniglotOptions) -> LoadedData:
    if cfg.data.test_path:
        raise ConfigError("data.test_path is not used by Omniglot: splits are per character (split.ratios)")
    sets = find_sets(cfg, opts)
    by_alphabet: dict[str, list[tuple[str, str, str | tuple[str, str]]]] = {}
    origin: dict[str, str] = {}
    for set_name, path in sets.items():
        for alphabet, char, fname, loc in list_set(path):
            if alphabet in origin and origin[alphabet] != set_name:
                raise DataError(f"{path}: alphabet {alphabet!r} is also in {sets[origin[alphabet]]}; "
                                "read each alphabet from one set only")
            origin[alphabet] = set_name
            by_alphabet.setdefault(alphabet, []).append((char, fname, loc))
    available = sorted(by_alphabet)
    alphabets = resolve_alphabets(opts.alphabets, available)
    specs = {s.name: s for s in cfg.tasks}
    for name, s in specs.items():
        if name not in alphabets:
            raise ConfigError(f"tasks: Omniglot tasks are its alphabets (data.alphabets); {name!r} is not one"
                              f"{close_matches(name, alphabets)}")
        if s.kind != "categorical":
            raise ConfigError(f"tasks.{name}: an Omniglot task is categorical")

    ratios = check_ratios(cfg.split.ratios or DEFAULT_RATIOS)
    seed = cfg.split.seed if cfg.split.seed is not None else cfg.train.seed
    locations: list[str | tuple[str, str]] = []
    items: list[tuple[str, int, int, str]] = []  # (alphabet, class index, character drawing slot, id)
    classes: dict[str, list[str]] = {}
    for alphabet in alphabets:
        chars: dict[str, list[tuple[str, str | tuple[str, str]]]] = {}
        for char, fname, loc in by_alphabet[alphabet]:
            chars.setdefault(char, []).append((fname, loc))
        classes[alphabet] = sorted(chars, key=_char_key)
        for ci, char in enumerate(classes[alphabet]):
            drawings = sorted(chars[char])
            if opts.drawings_per_character is not None and len(drawings) != opts.drawings_per_character:
                raise DataError(f"{sets[origin[alphabet]]}: {alphabet}/{char} has {len(drawings)} drawings, expected "
                                f"{opts.drawings_per_character} (set data.drawings_per_character: null to accept any)")
            for fname, loc in drawings:
                items.append((alphabet, ci, len(locations), f"{alphabet}/{char}/{fname}"))
                locations.append(loc)
    files = ImageFiles(locations)
    decoded, ok = open_image_files(files, opts, "Omniglot")
    # the split seed uses the alphabet's index among the 50 official names (and any other found),
    # sorted: the same whichever sets are read
    alpha_index = {a: i for i, a in enumerate(sorted(set(available) | set(BACKGROUND) | set(EVALUATION)))}
    tasks, examples, splits = [], {}, {}
    train_rows_all = []
    per_task_rows = {}
    for alphabet in alphabets:
        mine = [it for it in items if it[0] == alphabet and ok[it[2]]]
        rows = np.array([it[2] for it in mine], dtype=np.int64)
        labels = np.array([it[1] for it in mine], dtype=np.int64)
        ids = np.array([it[3] for it in mine], dtype=object)
        assign = np.empty(len(mine), dtype=np.int64)
        for ci in range(len(classes[alphabet])):
            pos = np.flatnonzero(labels == ci)
            pos = pos[np_rng(seed, "split", alpha_index[alphabet], ci).permutation(len(pos))]
            start = 0
            for k, count in enumerate(_allocate(len(pos), ratios)):
                assign[pos[start:start + count]] = k
                start += count
        task_splits = {name: np.flatnonzero(assign == k) for k, name in enumerate(("train", "val", "test"))}
        for name, r in zip(("train", "val", "test"), ratios):
            if r > 0 and len(task_splits[name]) == 0:
                raise ConfigError(f"split.ratios: the {name} split of {alphabet!r} would be empty "
                                  f"(ratios {list(ratios)})")
        task_splits.update(carve_train(task_splits["train"], seed, 1 - cfg.split.train2_fraction))
        splits[alphabet] = task_splits
        per_task_rows[alphabet] = (rows, labels, ids)
        train_rows_all.append(rows[task_splits["train"]])
        spec = specs.get(alphabet)
        weight = (spec.weight if spec else 1.0) / (len(alphabets) if opts.task_weights == "mean" else 1)
        tasks.append(Task(alphabet, "categorical", classes=classes[alphabet], weight=weight,
                          loss=spec.loss if spec else None))
    pixels = pixel_transform(opts, decoded, np.concatenate(train_rows_all), seed)
    augment = make_augment(opts, pixels, background=0.0 if opts.invert else 1.0)
    for alphabet in alphabets:
        rows, labels, ids = per_task_rows[alphabet]
        examples[alphabet] = ExampleSet(ImageStore(decoded, rows, pixels), {alphabet: torch.from_numpy(labels)},
                                        {alphabet: torch.ones(len(rows), dtype=torch.bool)}, ids, transform=augment)
    source = ", ".join(str(sets[s]) for s in sorted(sets))
    meta = {"source": f"omniglot ({source})", "alphabets": alphabets,
            "images": int(sum(len(r[0]) for r in per_task_rows.values())),
            "characters": int(sum(len(c) for c in classes.values())), "ratios": list(ratios)}
    state = {"kind": "images", "source": "omniglot", "sets": {k: str(v) for k, v in sets.items()},
             "alphabets": alphabets, "tasks": [t.to_dict() for t in tasks],
             "preprocessing": {"decode": decoded.spec.key(), **pixels.to_dict()}}
    return LoadedData(PerTaskData(tasks, examples, splits, InputSpec("image", decoded.shape), meta), json_ready(state))
