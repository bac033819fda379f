"""Table source: CSV, TSV and Parquet files with categorical, numerical and multilabel targets.

Reading checks the file before pandas sees it (missing, empty, binary, wrong format, ragged
rows), so every bad file gets one line that names it. :func:`prepare_table` then selects the
targets, masks missing values per task, splits, and fits the feature and target encoders on the
training split. Image-path tables and phenotype tables for volumes reuse it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import zlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import Config, DataConfig, TaskSpec
from ..errors import ConfigError, DataError, close_matches, first_line
from ..tasks import Task
from .base import ExampleSet, InputSpec, SharedInputData
from .encoders import FeatureEncoder
from .splits import carve_train, split_from_column, strata_from_targets, stratified_split

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in FORMATS:
        raise DataError(
            f"{path}: unsupported file extension {ext or '(none)'!r}; use .csv, .tsv or .parquet, "
            "or set data.format to csv, tsv or parquet"
        )
    return FORMATS[ext]


FRAME_PREFIX = "dataframe:"
_FRAMES: dict[str, pd.DataFrame] = {}


def register_frame(frame: pd.DataFrame) -> str:
    """A name for an in-memory DataFrame that :func:`read_table` (and so ``data.path``) accepts:
    ``dataframe:<hash of its columns, dtypes and values>``, valid in this process. The name is
    what ``config.yaml`` records, so ``--resume`` with another frame is refused as a changed config."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    digest = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    try:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    except TypeError:  # cells pandas cannot hash (lists, dicts): their text
        digest.update(frame.to_csv(index=False).encode())
    name = f"{FRAME_PREFIX}{digest.hexdigest()[:16]}"
    _FRAMES[name] = frame.copy()
    return name


def read_table(path: str | Path, cfg: DataConfig | None = None, *, fmt: str | None = None) -> pd.DataFrame:
    """Read one table file (or a frame named by :func:`register_frame`) into a DataFrame of
    strings/numbers, with clear errors."""
    cfg = cfg or DataConfig()
    if str(path).startswith(FRAME_PREFIX):
        if str(path) not in _FRAMES:
            raise DataError(f"{path}: a pandas DataFrame given to sharewise.fit in another process; pass the frame "
                            "again (sharewise.fit(frame, ...))")
        return _checked_frame(_FRAMES[str(path)].copy(), str(path), cfg)
    p = Path(path)
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise DataError(f"data file not found: {p}{where}")
    if p.is_dir():
        raise DataError(f"data path is a directory, not a table file: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    fmt = detect_format(p, fmt or cfg.format)
    try:
        with p.open("rb") as fh:
            head = fh.read(4096)
    except OSError as err:
        raise DataError(f"{p}: cannot read the file: {err.strerror or err}") from None
    if fmt == "parquet":
        if not head.startswith(b"PAR1"):
            raise DataError(f"{p}: not a Parquet file (no PAR1 magic); is it a CSV with the wrong extension?")
        if cfg.columns is None:
            _check_header(p, _parquet_column_names(p))
        try:
            frame = pd.read_parquet(p)
        except Exception as err:  # pyarrow raises many types
            reason = re.sub(r"^Could not open Parquet input source '[^']*': ", "", str(err).splitlines()[0])
            raise DataError(f"{p}: unreadable Parquet file (corrupted or truncated?): {reason}") from None
    else:
        if head.startswith(b"PAR1"):
            raise DataError(f"{p}: looks like a Parquet file, not {fmt.upper()}; rename it to .parquet or set data.format")
        if head.startswith(b"\x1f\x8b") and not str(p).endswith(".gz"):
            raise DataError(f"{p}: gzip-compressed content; name it with a .gz suffix")
        if not head.startswith(b"\x1f\x8b") and _looks_binary(head):
            raise DataError(f"{p}: binary content, not a {fmt.upper()} text file")
        frame = _read_text_table(p, fmt, cfg)
    frame.columns = [str(c).strip() for c in frame.columns]
    if cfg.columns is not None and fmt == "parquet":
        frame.columns = cfg.columns
    return _checked_frame(frame, p, cfg)


def _checked_frame(frame: pd.DataFrame, p: Path | str, cfg: DataConfig) -> pd.DataFrame:
    """The checks and clean-ups every table gets, from a file or from memory."""
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.shape[1] == 0:
        raise DataError(f"{p}: no columns found")
    if len(frame) == 0:
        what = "the DataFrame has no rows" if str(p).startswith(FRAME_PREFIX) else "the file has a header but no data rows"
        raise DataError(f"{p}: {what}")
    dupes = frame.columns[frame.columns.duplicated()].tolist()
    if dupes:
        raise DataError(f"{p}: duplicate column name(s) {dupes}")
    frame = frame.apply(_strip_text)
    if cfg.na_values:
        frame = frame.replace({v: np.nan for v in cfg.na_values})
        frame = frame.apply(_reinfer_numeric)
    return frame


def _check_header(p: Path, names: Sequence[Any]) -> None:
    """Refuse a header that names a column twice: pandas would rename the copy (``sex.1``) and
    use it as a feature, so a duplicated target would leak into the inputs."""
    names = [str(n).strip() for n in names]
    for name in dict.fromkeys(names):
        where = [i + 1 for i, n in enumerate(names) if n == name]
        if len(where) > 1:
            cols = ", ".join(str(i) for i in where[:-1]) + f" and {where[-1]}"
            raise DataError(f"{p}: column {name!r} appears {len(where)} times in the header (columns {cols})")


def _parquet_column_names(p: Path) -> list[str]:
    """The column names in a Parquet file's schema, as written (none when it cannot be read:
    reading the file then reports what is wrong)."""
    try:
        import pyarrow.parquet as pq

        return list(pq.read_schema(p).names)
    except Exception:  # pyarrow raises many types; pd.read_parquet reports them
        return []


_UNDEFINED_CP1252 = frozenset(b"\x81\x8d\x8f\x90\x9d")


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a multi-byte character cut at the buffer end
            try:
                head.decode("latin-1")
            except UnicodeDecodeError:
                return True
            # control bytes, and bytes that no Windows-1252 text contains (C1 controls)
            control = sum(b < 9 or 13 < b < 32 or b in _UNDEFINED_CP1252 for b in head)
            return control > len(head) * 0.05
    return False


def _is_text(col: pd.Series) -> bool:
    """Object or string dtype (pandas >= 3 reads text columns as ``StringDtype``)."""
    return col.dtype == object or isinstance(col.dtype, pd.StringDtype)


def _strip_text(col: pd.Series) -> pd.Series:
    if not _is_text(col):
        return col
    return col.map(lambda v: v.strip() if isinstance(v, str) else v)


def _reinfer_numeric(col: pd.Series) -> pd.Series:
    if not _is_text(col):
        return col
    conv = pd.to_numeric(col, errors="coerce")
    return conv if conv.notna().sum() == col.notna().sum() and col.notna().any() else col


def _read_text_table(p: Path, fmt: str, cfg: DataConfig) -> pd.DataFrame:
    """Read a CSV/TSV file (gzip-compressed when named ``.gz``); a corrupt archive, text that is
    not in ``data.encoding`` or a parse failure is one :class:`DataError` naming the file."""
    compressed = str(p).endswith(".gz")
    try:
        return _parse_text_table(p, fmt, cfg)
    except UnicodeDecodeError as err:
        raise DataError(_decode_problem(p, cfg.encoding, err, compressed)) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        if not compressed:
            raise DataError(f"{p}: unreadable file: {err}") from None
        raise DataError(f"{p}: truncated or corrupt gzip file ({first_line(err) or type(err).__name__})") from None


def _decode_problem(p: Path, encoding: str, err: UnicodeDecodeError, compressed: bool) -> str:
    """Which line and byte are not ``encoding`` text, and the key that sets the encoding."""
    where = f"byte 0x{err.object[err.start]:02x}" if err.start < len(err.object) else "a byte"
    try:
        data = gzip.decompress(p.read_bytes()) if compressed else p.read_bytes()
        data.decode(encoding)
    except UnicodeDecodeError as full:
        line = data.count(b"\n", 0, full.start) + 1
        where += f" on line {line}"
    except Exception:  # the line number is a courtesy; the message stands without it
        pass
    return (f"{p}: not valid {encoding} text ({where}); set data.encoding to the file's encoding "
            "(e.g. latin-1 or cp1252)")


def _parse_text_table(p: Path, fmt: str, cfg: DataConfig) -> pd.DataFrame:
    sep = cfg.sep or ("\t" if fmt == "tsv" else ",")
    compression = "gzip" if str(p).endswith(".gz") else None
    encoding = cfg.encoding
    opener = (lambda: gzip.open(p, "rt", encoding=encoding)) if compression else (
        lambda: p.open("r", encoding=encoding, newline=""))
    # Ragged rows: pandas fills short rows silently, so count fields first.
    with opener() as fh:
        for _ in range(cfg.skip_rows):
            fh.readline()
        reader = csv.reader(fh, delimiter=sep, skipinitialspace=True)
        width = None
        line = cfg.skip_rows
        n_rows = 0
        for row in reader:
            line += 1
            if not row or all(not c.strip() for c in row):
                continue
            if width is None:
                width = len(row)
                if cfg.header and cfg.columns is None:
                    _check_header(p, row)
                if cfg.columns is not None and not cfg.header and len(cfg.columns) != width:
                    raise DataError(f"{p}: data.columns names {len(cfg.columns)} columns but line {line} has {width} fields")
                continue
            n_rows += 1
            if len(row) != width:
                raise DataError(f"{p}: ragged rows: line {line} has {len(row)} fields, expected {width}")
    if width is None:
        raise DataError(f"{p}: the file is empty")
    header = 0 if cfg.header else None
    names = cfg.columns if (cfg.columns is not None and not cfg.header) else None
    try:
        frame = pd.read_csv(
            p, sep=sep, header=header, names=names, skiprows=cfg.skip_rows, skipinitialspace=True,
            na_values=cfg.na_values or None, keep_default_na=True, skip_blank_lines=True,
            compression=compression, encoding=encoding, low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: the file is empty") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{p}: malformed {fmt.upper()}: {first_line(err)}") from None
    if cfg.columns is not None and cfg.header:
        if len(cfg.columns) != frame.shape[1]:
            raise DataError(f"{p}: data.columns names {len(cfg.columns)} columns but the file has {frame.shape[1]}")
        frame.columns = cfg.columns
    if header is None and names is None:
        frame.columns = [f"col{i}" for i in range(frame.shape[1])]
    return frame


# ----------------------------------------------------------------- targets


@dataclass
class TablePrep:
    """Everything :func:`prepare_table` fitted, saved with the run for ``predict``."""

    tasks: list[Task]
    feature_encoder: FeatureEncoder | None
    columns: dict[str, str] = field(default_factory=dict)  # task -> source column
    value_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    join: list[dict[str, Any]] = field(default_factory=list)  # data.join: per joined table, rows matched

    def to_dict(self) -> dict[str, Any]:
        out = {
            "tasks": [t.to_dict() for t in self.tasks],
            "features": self.feature_encoder.to_dict() if self.feature_encoder else None,
            "columns": self.columns, "value_map": self.value_map,
        }
        if self.join:
            out["join"] = self.join
        return out


def check_target_columns(frame: pd.DataFrame, specs: Sequence[TaskSpec], source: str) -> None:
    if not specs:
        raise ConfigError("no target given: use --cat-target/--num-target or the config's tasks list")
    for s in specs:
        col = s.column or s.name
        if col not in frame.columns:
            raise DataError(f"{source}: unknown target column {col!r}{close_matches(col, frame.columns)}")


def apply_value_map(frame: pd.DataFrame, value_map: dict[str, dict[str, Any]], source: str) -> pd.DataFrame:
    if not value_map:
        return frame
    frame = frame.copy()
    for col, mapping in value_map.items():
        if col not in frame.columns:
            raise ConfigError(f"data.value_map: unknown column {col!r}{close_matches(col, frame.columns)}")
        frame[col] = frame[col].map(lambda v: mapping.get(v, mapping.get(str(v), v)) if pd.notna(v) else v)
    return frame


def parse_numerical(col: pd.Series, name: str, source: str) -> np.ndarray:
    vals = pd.to_numeric(col, errors="coerce")
    bad = vals.isna() & col.notna()
    if bad.any():
        raise DataError(
            f"{source}: numerical target {name!r} has text value {col[bad].iloc[0]!r} "
            f"({int(bad.sum())} row(s)); use --cat-target for a categorical column"
        )
    arr = vals.to_numpy(dtype=float)
    if np.isinf(arr).any():
        raise DataError(f"{source}: numerical target {name!r} contains infinite values ({int(np.isinf(arr).sum())} row(s))")
    return arr


def encode_targets(
    raw: pd.DataFrame, specs: Sequence[TaskSpec], train_idx: np.ndarray, source: str,
) -> tuple[list[Task], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Build tasks (classes and statistics from ``train_idx``), target tensors and masks."""
    tasks, targets, masks = [], {}, {}
    n = len(raw)
    for s in specs:
        col = raw[s.column or s.name]
        if s.kind == "numerical":
            vals = parse_numerical(col, s.name, source)
            known = ~np.isnan(vals)
            tr = vals[train_idx][known[train_idx]]
            if len(tr) == 0:
                raise DataError(f"{source}: numerical target {s.name!r} has no known value in the training split")
            mean, std = float(tr.mean()), float(tr.std())
            if std == 0:
                warnings.warn(f"{source}: numerical target {s.name!r} is constant in the training split "
                              f"(every known value is {_plain(tr[0])!r}); there is nothing to learn for it")
            std = std if std > 0 else 1.0
            task = Task(s.name, "numerical", loss=s.loss, weight=s.weight, mean=mean, std=std)
            y = torch.tensor(np.where(known, (vals - mean) / std, 0.0), dtype=torch.float32)
            m = torch.tensor(known)
        elif s.kind == "categorical":
            known_all = col.notna().to_numpy()
            train_vals = col.iloc[train_idx][known_all[train_idx]]
            classes = sorted(pd.unique(train_vals).tolist(), key=_sort_key)
            if len(classes) < 2:
                raise DataError(
                    f"{source}: categorical target {s.name!r} has {len(classes)} class(es) in the training split "
                    f"({classes}); a classifier needs at least 2"
                )
            counts = train_vals.value_counts()
            rare = [c for c in classes if counts[c] < 2]
            if 2 * len(rare) > len(classes):
                warnings.warn(f"{source}: categorical target {s.name!r}: {len(rare)} of its {len(classes)} classes "
                              f"have fewer than 2 training examples (e.g. {_plain(rare[0])!r}); too few to learn "
                              "or to validate them")
            lookup = {c: i for i, c in enumerate(classes)}
            codes = np.array([lookup.get(v, -1) if k else -1 for v, k in zip(col.tolist(), known_all)])
            unseen = known_all & (codes < 0)
            if unseen.any():
                warnings.warn(
                    f"target {s.name!r}: {int(unseen.sum())} validation/test row(s) have a class not seen in "
                    "training; they are masked for this task"
                )
            task = Task(s.name, "categorical", classes=[_plain(c) for c in classes], loss=s.loss, weight=s.weight)
            y = torch.tensor(np.maximum(codes, 0), dtype=torch.long)
            m = torch.tensor(codes >= 0)
        else:
            raise ConfigError(f"tasks.{s.name}: multilabel targets are not read from a single table column")
        tasks.append(task)
        targets[s.name] = y
        masks[s.name] = m
    assert all(len(v) == n for v in targets.values())
    return tasks, targets, masks


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0, str(v))


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def check_unique_ids(ids: pd.Series, id_col: str, source: str) -> None:
    """Every known id names one row (rows of the main and the test table together)."""
    known = ids.dropna()
    repeated = known[known.duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        raise DataError(f"{source}: id column {id_col!r} has duplicated ids ({repeated.nunique()} id(s) on more "
                        f"than one row, e.g. {_plain(first)!r} on {int((known == first).sum())} rows)")


def check_targets_present(raw: pd.DataFrame, specs: Sequence[TaskSpec], source: str) -> np.ndarray:
    """Validate each target column and return the rows with at least one known target."""
    any_known = np.zeros(len(raw), dtype=bool)
    for s in specs:
        col = raw[s.column or s.name]
        if s.kind == "numerical":
            vals = parse_numerical(col, s.name, source)
            known = ~np.isnan(vals)
        else:
            known = col.notna().to_numpy()
        if not known.any():
            raise DataError(f"{source}: target {s.name!r} has no known value (every row is missing)")
        if s.kind == "categorical" and col[known].nunique() < 2:
            raise DataError(
                f"{source}: categorical target {s.name!r} has a single class ({col[known].iloc[0]!r}); "
                "a classifier needs at least 2"
            )
        any_known |= known
    return any_known


def prepare_table(
    frame: pd.DataFrame, cfg: Config, *, source: str, test_frame: pd.DataFrame | None = None,
    inputs_from_frame: bool = True, input_shape: tuple[int, ...] | None = None,
) -> tuple[SharedInputData, pd.DataFrame, TablePrep]:
    """Targets, masks, split and encoders for a table (and an optional separate test table).

    Returns the data (inputs = encoded feature columns when ``inputs_from_frame``), the kept rows
    of the frame (for sources that read inputs from files named in it) and the fitted state.
    """
    d = cfg.data
    specs = cfg.tasks
    joined: list[dict[str, Any]] = []
    if d.join:
        from .join import apply_joins

        frame, joined = apply_joins(frame, d.join, source=source, encoding=d.encoding)
        if test_frame is not None:
            test_frame, _ = apply_joins(test_frame, d.join, source=d.test_path or "test table", encoding=d.encoding)
    frames = [frame] if test_frame is None else [frame, test_frame]
    for i, f in enumerate(frames):
        src = source if i == 0 else (d.test_path or "test table")
        check_target_columns(f, specs, src)
        for col in (d.id_col, d.split_col, d.group_col):
            if col is not None and col not in f.columns:
                key = "id_col" if col == d.id_col else ("split_col" if col == d.split_col else "group_col")
                raise DataError(f"{src}: unknown {key.replace('_col', '')} column {col!r}{close_matches(col, f.columns)}")
    frame = apply_value_map(frame, d.value_map, source)
    if test_frame is not None:
        test_frame = apply_value_map(test_frame, d.value_map, d.test_path or "test table")
        if list(test_frame.columns) != list(frame.columns):
            missing = sorted(set(frame.columns) - set(test_frame.columns))
            if missing:
                raise DataError(f"{d.test_path}: missing column(s) {missing} present in {source}")
            test_frame = test_frame[list(frame.columns)]
        n_main = len(frame)
        full = pd.concat([frame, test_frame], ignore_index=True)
    else:
        n_main = len(frame)
        full = frame.reset_index(drop=True)

    if d.id_col:
        check_unique_ids(full[d.id_col], d.id_col, source)
    keep = check_targets_present(full, specs, source)
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(f"{source}: {dropped} row(s) have no known target and are dropped")
    kept_rows = np.flatnonzero(keep)
    full = full.iloc[kept_rows].reset_index(drop=True)
    is_test_row = kept_rows >= n_main

    # Splits
    cat = [s.column or s.name for s in specs if s.kind == "categorical"]
    num = [s.column or s.name for s in specs if s.kind == "numerical"]
    seed = cfg.split.seed if cfg.split.seed is not None else cfg.train.seed
    if d.split_col:
        splits = split_from_column(full[d.split_col], d.split_col)
    else:
        main_idx = np.flatnonzero(~is_test_row)
        ratios = list(cfg.split.ratios or (0.7, 0.15, 0.15))
        names = ("train", "val", "test")
        if test_frame is not None:
            if len(ratios) == 3:
                tv = ratios[0] + ratios[1]
                ratios = [ratios[0] / tv, ratios[1] / tv] if tv > 0 else ratios[:2]
            names = ("train", "val")
        strata = strata_from_targets(full.iloc[main_idx], cat, num) if cfg.split.stratify else np.full(len(main_idx), "all")
        groups = full[d.group_col].to_numpy()[main_idx] if d.group_col else None
        local = stratified_split(strata, ratios, seed, names=names, groups=groups)
        splits = {k: main_idx[v] for k, v in local.items()}
        if test_frame is not None:
            splits["test"] = np.flatnonzero(is_test_row)
    splits.update(carve_train(splits["train"], seed, 1 - cfg.split.train2_fraction))

    tasks, targets, masks = encode_targets(full, specs, splits["train"], source)

    encoder = None
    if inputs_from_frame:
        feature_cols = _feature_columns(full, cfg, source)
        encoder = FeatureEncoder.fit(full.iloc[splits["train"]], feature_cols, d.max_categories)
        x = torch.from_numpy(encoder.transform(full, source=source))
        shape = (x.shape[1],)
        kind = "vector"
        if input_shape is not None:
            x = x.reshape(len(x), *input_shape)
            shape, kind = tuple(input_shape), ("image" if len(input_shape) == 3 else "volume")
        inputs: Any = x
        spec = InputSpec(kind, shape)
    else:
        inputs, spec = None, InputSpec("vector", (0,))
    ids = full[d.id_col].to_numpy() if d.id_col else kept_rows
    data = SharedInputData(tasks, ExampleSet(inputs, targets, masks, np.asarray(ids)), splits, spec,
                           meta={"source": source, "rows": len(full), "dropped_no_target": dropped,
                                 **({"join": joined} if joined else {})})
    prep = TablePrep(tasks, encoder, {s.name: s.column or s.name for s in specs}, dict(d.value_map), joined)
    return data, full, prep


def _feature_columns(frame: pd.DataFrame, cfg: Config, source: str) -> list[str]:
    d = cfg.data
    targets = {s.column or s.name for s in cfg.tasks}
    reserved = {c for c in (d.id_col, d.split_col, d.group_col) if c}
    if d.features is not None:
        for c in d.features:
            if c not in frame.columns:
                raise DataError(f"{source}: unknown feature column {c!r}{close_matches(c, frame.columns)}")
            if c in targets:
                raise ConfigError(f"data.features: {c!r} is a target column; targets are never features")
        cols = list(d.features)
    else:
        for c in d.exclude:
            if c not in frame.columns:
                raise DataError(f"{source}: unknown column {c!r} in data.exclude{close_matches(c, frame.columns)}")
        cols = [c for c in frame.columns if c not in targets and c not in reserved and c not in d.exclude]
    if not cols:
        raise DataError(f"{source}: no feature column left once targets and id/split columns are removed")
    return cols

