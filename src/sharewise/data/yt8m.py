"""Youtube-8M video-level features (``data.source: yt8m``), read from TFRecord shards without TensorFlow.

Each record is a ``tf.train.Example`` with ``id`` (bytes), ``labels`` (int64 indices into
``vocabulary.csv``), ``mean_rgb`` (1 024 floats) and ``mean_audio`` (128 floats). The input is
``[mean_rgb, mean_audio]`` ∈ R^1152, raw (``data.standardize: true`` standardises it with the
training split's mean and sd).

Tasks (TAAN specification §5.2): by default the 16 top-level verticals of the reference
(``Vertical1`` of ``vocabulary.csv``), in the reference order; ``data.verticals: all`` takes every
value of ``data.group_column``, a list names some, and ``data.grouping`` gives a custom grouping
(``{task: [class index, ...]}`` or a CSV with columns ``Index`` and ``task``). Task t is
**multilabel** over its C_t classes (every vocabulary entry of the group, in ascending ``Index``
order; ``Task.classes`` holds those indices); a video belongs to task t iff it has a label in
the group. Loss per task (§5.4): ``C_t · mean-over-classes BCE`` averaged over the task's videos,
total ``(1/T) Σ_t``, carried by ``Task.weight = C_t / T`` (``task_loss_reduction: mean_classes``:
``1/T``).

Layout: ``per_task`` (default; every task its own videos, one batch per task per step, as the
reference trains) or ``shared`` (one batch of videos, a task's mask says whether the video is in it).

Splits (§5.3): by video id, seeded, so a video is in the same split for every task:
``split.ratios`` (default 70/15/15) of the videos sorted by id; or file-wise with
``data.files: {train: [...], val: [...], test: [...]}`` (paths or globs), e.g. the official
train shards for train and the validate shards halved. Per-task video counts per split are in
``data.meta["videos"]`` (small verticals have very few videos in the sample).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, field_validator

from ..config import Config
from ..errors import ConfigError, DataError, close_matches
from ..tasks import Task
from .base import ExampleSet, InputSpec, PerTaskData, SharedInputData
from .sources import LoadedData, register_source
from .splits import _allocate, carve_train, check_ratios
from .tfrecord import expand_paths, read_examples

RGB, AUDIO = 1024, 128
DEFAULT_RATIOS = (0.7, 0.15, 0.15)

# §5.2: the reference's 16 verticals, in its order, with their class counts in the 2018 vocabulary
REFERENCE_VERTICALS = [
    ("Arts & Entertainment", 525), ("Games", 734), ("Autos & Vehicles", 466), ("Sports", 167),
    ("Food & Drink", 278), ("Computers & Electronics", 302), ("Business & Industrial", 259),
    ("Pets & Animals", 150), ("Hobbies & Leisure", 132), ("Beauty & Fitness", 86), ("Shopping", 116),
    ("Internet & Telecom", 26), ("Home & Garden", 120), ("Science", 116), ("Travel", 48),
    ("Law & Government", 32),
]


class Yt8mOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocabulary: str | None = None  # default: vocabulary.csv beside the shards
    files: dict[Literal["train", "val", "test"], list[str]] | None = None  # file-wise split
    verticals: Literal["reference", "all"] | list[str] = "reference"
    group_column: str = "Vertical1"
    grouping: str | dict[str, list[int]] | None = None  # custom grouping: {task: [class index]} or a CSV
    drop_unseen_classes: bool = False
    task_loss_reduction: Literal["sum_classes", "mean_classes"] = "sum_classes"
    layout: Literal["per_task", "shared"] = "per_task"
    standardize: bool = False
    verify_crc: bool = True
    cache: Literal["none", "disk"] = "none"  # disk: parsed shards as .npz keyed by the file's SHA-256
    cache_dir: str | None = None  # default $SHAREWISE_CACHE/yt8m or ~/.cache/sharewise/yt8m

    @field_validator("verticals", mode="before")
    @classmethod
    def _one_name(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) and v not in ("reference", "all") else v


def task_slug(name: str) -> str:
    """A task name for a group (``"Arts & Entertainment"`` -> ``arts_entertainment``)."""
    slug = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    return slug or "group"


# ----------------------------------------------------------------- reading


CACHE_VERSION = 1


def read_videos(paths: list[Path], *, verify: bool = True, cache_dir: Path | None = None
                ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Ids (n,) str, label index arrays, features (n, 1152) float32 and the file number (n,) of
    every video in ``paths``; with ``cache_dir`` each shard's parsed arrays are kept there as
    ``<sha256 of the file>.npz`` and reused by later reads."""
    parts = [_read_shard(p, verify, cache_dir) for p in paths]
    ids_arr = np.concatenate([q[0] for q in parts])
    labels = [lab for q in parts for lab in q[1]]
    x = np.concatenate([q[2] for q in parts])
    origin = np.concatenate([np.full(len(q[0]), i, dtype=np.int64) for i, q in enumerate(parts)])
    if not len(ids_arr):
        raise DataError(f"{', '.join(map(str, paths[:3]))}{' ...' if len(paths) > 3 else ''}: no records")
    uniq, counts = np.unique(ids_arr.astype(str), return_counts=True)
    if (counts > 1).any():
        raise DataError(f"video id {uniq[counts > 1][0]!r} occurs {counts[counts > 1][0]} times in the shards; "
                        "give each shard once")
    return ids_arr, labels, x, origin


def _read_shard(path: Path, verify: bool, cache_dir: Path | None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    cached = None
    if cache_dir is not None:
        import hashlib

        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as err:
            raise DataError(f"{path}: cannot read the file: {err.strerror or err}") from None
        cached = cache_dir / f"v{CACHE_VERSION}-{digest}.npz"
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as z:
                    ids, flat, ends, x = z["ids"], z["labels"], z["ends"], z["x"]
                return ids.astype(object), np.split(flat, ends[:-1]), x
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is rebuilt
    ids, labels, x = _parse_shard(path, verify)
    if cached is not None:
        import io

        from ..files import atomic_write_bytes

        buf = io.BytesIO()
        ends = np.cumsum([len(a) for a in labels]).astype(np.int64)
        np.savez(buf, ids=ids.astype(str), labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
                 ends=ends, x=x)
        atomic_write_bytes(cached, buf.getvalue())
    return ids, labels, x


def _parse_shard(path: Path, verify: bool) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    ids: list[str] = []
    labels: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    for path, offset, f in read_examples([path], verify=verify):
        where = f"{path}: the record at byte {offset}"
        for name, kind, size in (("id", "bytes", None), ("labels", "int64", None), ("mean_rgb", "float", RGB),
                                 ("mean_audio", "float", AUDIO)):
            got = f.get(name)
            if got is None or (got[0] != kind and not (got[0] == "empty" and name == "labels")):
                raise DataError(f"{where} has no {kind} feature {name!r} (a Youtube-8M video-level record has "
                                "id, labels, mean_rgb and mean_audio)")
            if size is not None and len(got[1]) != size:  # type: ignore[arg-type]
                raise DataError(f"{where}: {name} has {len(got[1])} values, expected {size}")  # type: ignore[arg-type]
        ids.append(f["id"][1][0].decode("utf-8", "replace"))  # type: ignore[index]
        lab = f["labels"][1]
        labels.append(np.zeros(0, np.int64) if lab is None else np.asarray(lab))
        feats.append(np.concatenate([f["mean_rgb"][1], f["mean_audio"][1]]))  # type: ignore[list-item]
    x = np.stack(feats).astype(np.float32, copy=False) if feats else np.zeros((0, RGB + AUDIO), np.float32)
    return np.array(ids, dtype=object), labels, x


def read_vocabulary(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"data.vocabulary: file not found: {path}")
    try:
        vocab = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001  (pandas raises many kinds)
        raise DataError(f"{path}: cannot read the vocabulary: {str(err).splitlines()[0]}") from None
    if "Index" not in vocab.columns:
        raise DataError(f"{path}: no 'Index' column (a Youtube-8M vocabulary.csv has Index, Name, Vertical1, ...)")
    return vocab


def build_groups(vocab, opts: Yt8mOptions, source: Path) -> dict[str, tuple[str, np.ndarray]]:
    """``{task name: (group name, class indices ascending)}`` in task order."""
    index = vocab["Index"].to_numpy(dtype=np.int64)
    if opts.grouping is not None:
        if isinstance(opts.grouping, str):
            import pandas as pd

            gpath = Path(opts.grouping)
            if not gpath.is_file():
                raise DataError(f"data.grouping: file not found: {gpath}")
            table = pd.read_csv(gpath)
            if not {"Index", "task"} <= set(table.columns):
                raise DataError(f"{gpath}: a grouping file needs the columns Index and task")
            mapping: dict[str, list[int]] = {}
            for t, i in zip(table["task"].astype(str), table["Index"].astype(int)):
                mapping.setdefault(t, []).append(int(i))
        else:
            mapping = opts.grouping
        known = set(index.tolist())
        out = {}
        for name, classes in mapping.items():
            bad = [c for c in classes if c not in known]
            if bad:
                raise ConfigError(f"data.grouping: task {name!r} names class {bad[0]} not in {source}")
            if not classes:
                raise ConfigError(f"data.grouping: task {name!r} has no classes")
            out[task_slug(name)] = (name, np.unique(np.asarray(classes, dtype=np.int64)))
        return out
    col = opts.group_column
    if col not in vocab.columns:
        raise ConfigError(f"data.group_column: no column {col!r} in {source}{close_matches(col, vocab.columns)}")
    values = vocab[col].fillna("(none)").astype(str).to_numpy()
    available = sorted(set(values))
    if opts.verticals == "reference":
        wanted = [v for v, _ in REFERENCE_VERTICALS]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ConfigError(f"data.verticals: the reference vertical {missing[0]!r} is not in column {col!r} of "
                              f"{source}; set data.verticals: all or list the groups")
    elif opts.verticals == "all":
        wanted = available
    else:
        wanted = list(opts.verticals)
        for v in wanted:
            if v not in available:
                raise ConfigError(f"data.verticals: unknown vertical {v!r} in column {col!r}"
                                  f"{close_matches(v, available)}")
    out = {}
    for v in wanted:
        slug = task_slug(v)
        if slug in out:
            raise ConfigError(f"data.verticals: {v!r} and {out[slug][0]!r} give the same task name {slug!r}")
        out[slug] = (v, np.sort(index[values == v]))
    return out


# ----------------------------------------------------------------- the source


def _split_by_video(ids: np.ndarray, ratios: tuple[float, ...], seed: int) -> np.ndarray:
    """Split number (0 train, 1 val, 2 test) of every video: a seeded permutation of the videos
    sorted by id (the same whatever the order of the shards)."""
    from ..seeding import np_rng

    by_id = np.argsort(ids.astype(str), kind="stable")
    perm = by_id[np_rng(seed, "split", 0).permutation(len(ids))]
    assign = np.empty(len(ids), dtype=np.int64)
    start = 0
    for k, count in enumerate(_allocate(len(ids), ratios)):
        assign[perm[start:start + count]] = k
        start += count
    return assign


class _Rows:
    """A task's videos as a view of the shared feature matrix (no copy per task)."""

    def __init__(self, x: torch.Tensor, rows: np.ndarray):
        self.x, self.rows = x, torch.as_tensor(rows, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: np.ndarray) -> torch.Tensor:
        return self.x[self.rows[torch.as_tensor(index, dtype=torch.long)]]


@register_source("yt8m", "Youtube-8M video-level features (TFRecord shards + vocabulary.csv); tasks = verticals",
                 ".tfrecord (folder, files or globs) + vocabulary.csv", Yt8mOptions)
def build_yt8m(cfg: Config, opts: Yt8mOptions) -> LoadedData:
    if cfg.tasks:
        raise ConfigError("tasks: the Youtube-8M tasks come from the vocabulary (data.verticals or data.grouping); "
                          "remove the tasks section")
    if cfg.data.test_path:
        raise ConfigError("data.test_path is not used by yt8m: give data.files: {train: [...], val: [...], test: [...]}")
    seed = cfg.split.seed if cfg.split.seed is not None else cfg.train.seed
    if opts.files is not None:
        if cfg.data.path:
            raise ConfigError("give either data.path (split by video id) or data.files (split by file), not both")
        if not opts.files.get("train"):
            raise ConfigError("data.files: the train files are required")
        if cfg.split.ratios is not None:
            raise ConfigError("split.ratios: not used with data.files (the files give the split); remove one of them")
        parts = {s: expand_paths(opts.files[s], key=f"data.files.{s}") for s in opts.files if opts.files[s]}
        paths = [p for s in ("train", "val", "test") for p in parts.get(s, [])]
        first = paths[0]
    else:
        if not cfg.data.path:
            raise ConfigError("data.path is not set: give the folder of the TFRecord shards, a file or a glob")
        root = Path(cfg.data.path)
        if root.is_dir():
            paths = sorted(root.glob("*.tfrecord"))
            if not paths:
                raise DataError(f"data.path: no *.tfrecord files in {root}")
        else:
            paths = expand_paths(cfg.data.path)
        first = paths[0]
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            raise ConfigError(f"{'data.files' if opts.files is not None else 'data.path'}: the shard {p} is given twice")
        seen.add(p.resolve())
    vocab_path = Path(opts.vocabulary) if opts.vocabulary else first.parent / "vocabulary.csv"
    if not opts.vocabulary and not vocab_path.is_file():
        raise DataError(f"no vocabulary.csv beside {first}: set data.vocabulary")
    vocab = read_vocabulary(vocab_path)
    groups = build_groups(vocab, opts, vocab_path)

    cache_dir = None
    if opts.cache == "disk":
        import os

        cache_dir = Path(opts.cache_dir) if opts.cache_dir else (
            Path(os.environ["SHAREWISE_CACHE"]) / "yt8m" if os.environ.get("SHAREWISE_CACHE")
            else Path.home() / ".cache" / "sharewise" / "yt8m")
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"data.cache_dir: cannot create {cache_dir}: {err.strerror or err}") from None
    ids, labels, x, origin = read_videos(paths, verify=opts.verify_crc, cache_dir=cache_dir)
    n = len(ids)
    if opts.files is not None:
        split_of_file = np.array([k for k, s in enumerate(("train", "val", "test")) for _ in parts.get(s, [])])
        assign = split_of_file[origin]
        ratios = None
    else:
        ratios = check_ratios(cfg.split.ratios or DEFAULT_RATIOS)
        assign = _split_by_video(ids, ratios, seed)

    # multi-hot targets per group
    vocab_size = int(vocab["Index"].max()) + 1
    label_rows = np.repeat(np.arange(n), [len(a) for a in labels])
    label_cols = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(label_cols) and (label_cols.min() < 0 or label_cols.max() >= vocab_size):
        bad = label_cols[(label_cols < 0) | (label_cols >= vocab_size)][0]
        raise DataError(f"label {bad} is outside the vocabulary {vocab_path} (0..{vocab_size - 1})")
    train_rows = np.flatnonzero(assign == 0)
    tasks: list[Task] = []
    targets: dict[str, torch.Tensor] = {}
    members: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for name, (group, classes) in groups.items():
        col_of = np.full(vocab_size, -1, dtype=np.int64)
        col_of[classes] = np.arange(len(classes))
        keep = col_of[label_cols] >= 0
        multi_hot = np.zeros((n, len(classes)), dtype=bool)
        multi_hot[label_rows[keep], col_of[label_cols[keep]]] = True
        if opts.drop_unseen_classes:
            seen_cls = multi_hot[train_rows].any(0)
            dropped[name] = int((~seen_cls).sum())
            classes, multi_hot = classes[seen_cls], multi_hot[:, seen_cls]
            if not len(classes):
                raise DataError(f"task {name!r} ({group}): no class of the group occurs in the training split")
        targets[name] = torch.from_numpy(multi_hot)
        members[name] = multi_hot.any(1)
        tasks.append(Task(name, "multilabel", classes=[int(c) for c in classes], loss="bce"))
    num_tasks = len(tasks)
    for t in tasks:
        t.weight = (len(t.classes) if opts.task_loss_reduction == "sum_classes" else 1.0) / num_tasks

    stats = None
    if opts.standardize:
        mean = x[train_rows].mean(0)
        sd = x[train_rows].std(0)
        sd = np.where(sd > 0, sd, 1.0).astype(np.float32)
        x = (x - mean) / sd
        stats = {"mean": mean.tolist(), "sd": sd.tolist()}
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    split_names = ("train", "val", "test")
    videos = {t.name: {s: int((members[t.name] & (assign == k)).sum()) for k, s in enumerate(split_names)}
              for t in tasks}
    for t in tasks:
        if videos[t.name]["train"] == 0:
            raise DataError(f"task {t.name!r} ({groups[t.name][0]}): no training video has a label in it; "
                            "choose other verticals or a larger sample")
    spec = InputSpec("vector", (RGB + AUDIO,))
    if opts.layout == "shared":
        masks = {t.name: torch.from_numpy(members[t.name]) for t in tasks}
        examples = ExampleSet(features, targets, masks, ids)
        splits = {s: np.flatnonzero(assign == k) for k, s in enumerate(split_names)}
        splits.update(carve_train(splits["train"], seed, 1 - cfg.split.train2_fraction))
        data: SharedInputData | PerTaskData = SharedInputData(tasks, examples, splits, spec)
    else:
        per_examples, per_splits = {}, {}
        for t in tasks:
            rows = np.flatnonzero(members[t.name])
            per_examples[t.name] = ExampleSet(_Rows(features, rows), {t.name: targets[t.name][rows]},
                                              {t.name: torch.ones(len(rows), dtype=torch.bool)}, ids[rows])
            local = {s: np.flatnonzero(assign[rows] == k) for k, s in enumerate(split_names)}
            local.update(carve_train(local["train"], seed, 1 - cfg.split.train2_fraction))
            per_splits[t.name] = local
        data = PerTaskData(tasks, per_examples, per_splits, spec)
    source = f"yt8m ({len(paths)} shard{'s' if len(paths) != 1 else ''} from {first.parent})"
    data.meta.update({"source": source, "videos_total": n, "videos": videos, "groups": {k: g for k, (g, _) in groups.items()},
                      "ratios": list(ratios) if ratios else None, "dropped_classes": dropped})
    state: dict[str, Any] = {"kind": "yt8m", "files": [str(p) for p in paths], "vocabulary": str(vocab_path),
                             "layout": opts.layout, "groups": {k: g for k, (g, _) in groups.items()},
                             "tasks": [t.to_dict() for t in tasks], "standardize": stats}
    return LoadedData(data, state)

