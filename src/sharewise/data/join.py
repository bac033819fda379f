"""``data.join``: columns of other tables joined to the main table on a key, before targets,
features and splits are chosen.

Example: regional brain volumes (``DLMUSE_Volumes.csv``, one row per ``MRID``) joined to the
phenotype table (``participants.csv``) give a table-only baseline on the same subjects::

    data:
      path: participants.csv
      id_col: MRID
      join: {path: DLMUSE_Volumes.csv, on: MRID}

Rules: the joined table has at most one row per key (a duplicate is an error naming the key);
``how: left`` (default) keeps every main-table row in its order, so the rows, and therefore the
seeded split, are those of the main table alone, whatever columns are joined; ``how: inner`` drops
the rows without a match (counted in a warning). Keys are compared as text when one table reads
them as numbers and the other as text (``12`` and ``"12"`` match). A joined column whose name is
already in the main table is an error (select columns with ``columns``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..config import DataConfig, JoinSpec
from ..errors import ConfigError, DataError, close_matches

_KEY = "__join_key__"


def apply_joins(
    frame: pd.DataFrame, joins: Sequence[JoinSpec], *, source: str, encoding: str = "utf-8", joined_ok: bool = False,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """``frame`` with the columns of every table in ``joins`` added (in order), and per join the
    counts of matched and unmatched rows (for ``data.meta`` and ``data_state.json``)."""
    report = []
    for k, spec in enumerate(joins):
        frame, info = join_table(frame, spec, source=source, key=f"data.join[{k}]" if len(joins) > 1 else "data.join",
                                 encoding=encoding, joined_ok=joined_ok)
        report.append(info)
    return frame, report


def join_table(
    frame: pd.DataFrame, spec: JoinSpec, *, source: str, key: str = "data.join", encoding: str = "utf-8",
    joined_ok: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``frame`` with the columns of ``spec``'s table added. With ``joined_ok`` (new rows for
    ``predict``), a frame that already holds every joined column is returned as it is."""
    from .table import read_table

    left_key, right_key = spec.keys
    other = read_table(spec.path, DataConfig(format=spec.format, sep=spec.sep, encoding=encoding))
    if left_key not in frame.columns:
        raise DataError(f"{source}: unknown join key column {left_key!r} ({key}){close_matches(left_key, frame.columns)}")
    if right_key not in other.columns:
        raise DataError(f"{spec.path}: unknown join key column {right_key!r} ({key}){close_matches(right_key, other.columns)}")
    if spec.columns is not None:
        for c in spec.columns:
            if c not in other.columns:
                raise DataError(f"{spec.path}: unknown column {c!r} in {key}.columns{close_matches(c, other.columns)}")
        keep = [c for c in spec.columns if c != right_key]
    else:
        keep = [c for c in other.columns if c != right_key]
    clash = [c for c in keep if c in frame.columns]
    if joined_ok and clash and len(clash) == len(keep):
        return frame, {"path": str(spec.path), "key": [left_key, right_key], "already_joined": True}
    if clash:
        raise ConfigError(f"{key}: column(s) {clash[:5]} of {spec.path} are already in {source}; "
                          f"choose the joined columns with {key}.columns")
    right_keys = other[right_key]
    if right_keys.isna().any():
        raise DataError(f"{spec.path}: join key column {right_key!r} has {int(right_keys.isna().sum())} empty value(s)")
    left_norm, right_norm = _comparable(frame[left_key], right_keys)
    dupes = right_norm[right_norm.duplicated()]
    if len(dupes):
        raise DataError(f"{spec.path}: join key {right_key!r} repeats value {dupes.iloc[0]!r} "
                        f"({int(right_norm.duplicated(keep=False).sum())} rows share a repeated key); "
                        "a joined table needs at most one row per key")
    left = frame.reset_index(drop=True).assign(**{_KEY: left_norm.to_numpy()})
    right = other[keep].assign(**{_KEY: right_norm.to_numpy()})
    matched = left[_KEY].isin(pd.Index(right[_KEY])).to_numpy() & left[_KEY].notna().to_numpy()
    n_unmatched = int((~matched).sum())
    # a left merge keeps the main table's rows in order; inner keeps the order of the left keys
    out = left.merge(right, on=_KEY, how=spec.how, sort=False, validate="many_to_one").drop(columns=_KEY)
    unused = len(other) - int(pd.Index(right_norm).isin(pd.Index(left_norm.dropna())).sum())
    info = {"path": str(spec.path), "key": [left_key, right_key], "how": spec.how, "columns": len(keep),
            "rows_matched": int(matched.sum()), "rows_unmatched": n_unmatched, "other_rows_unused": unused}
    if n_unmatched:
        what = "dropped (how: inner)" if spec.how == "inner" else "kept with missing values for its columns"
        example = frame[left_key].iloc[int(np.flatnonzero(~matched)[0])]
        warnings.warn(f"{source}: {n_unmatched} row(s) have no match in {spec.path} on {left_key!r} "
                      f"(e.g. {example!r}); {what}")
    return out, info


def _comparable(left: pd.Series, right: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The two key columns in one comparable form: as they are when both are numbers or both
    text, else both as text (integral floats without ``.0``)."""
    num_l, num_r = pd.api.types.is_numeric_dtype(left), pd.api.types.is_numeric_dtype(right)
    if num_l and num_r:
        return left.astype("float64").astype(object), right.astype("float64").astype(object)
    return left.map(_as_text), right.map(_as_text)


def _as_text(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, np.generic):
        v = v.item()
    return str(v).strip()
