"""Feature and target encoders fitted on the training split and saved with the run.

Numerical features are standardised (missing values become the training mean, i.e. 0),
categorical features are one-hot encoded over their most frequent training categories
(unseen or rare values encode as all zeros). The state is plain JSON so that ``predict``
rebuilds exactly the same encoding without pickles.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError


def is_numeric_column(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


@dataclass
class FeatureEncoder:
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)
    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> categories
    columns: list[str] = field(default_factory=list)  # input order

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str], max_categories: int = 64) -> FeatureEncoder:
        enc = cls(columns=list(columns))
        for c in columns:
            col = frame[c]
            if is_numeric_column(col):
                vals = col.to_numpy(dtype=float)
                if np.isinf(vals).any():
                    raise DataError(f"feature column {c!r} contains infinite values")
                finite = vals[~np.isnan(vals)]
                mean = float(finite.mean()) if len(finite) else 0.0
                std = float(finite.std()) if len(finite) else 1.0
                enc.numeric[c] = (mean, std if std > 0 else 1.0)
            else:
                counts = col.dropna().astype(str).value_counts()
                if len(counts) > max_categories:
                    warnings.warn(
                        f"feature column {c!r} has {len(counts)} categories; keeping the {max_categories} most "
                        "frequent (others encode as all zeros)"
                    )
                enc.categorical[c] = sorted(counts.index[:max_categories].tolist())
        return enc

    @property
    def out_features(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categorical.values())

    def feature_names(self) -> list[str]:
        names = []
        for c in self.columns:
            if c in self.numeric:
                names.append(c)
            else:
                names.extend(f"{c}={v}" for v in self.categorical[c])
        return names

    def transform(self, frame: pd.DataFrame, *, source: str = "the data", warn_unseen: bool = False) -> np.ndarray:
        """The encoded features, ``(rows, out_features)``. With ``warn_unseen`` (new rows, as in
        ``predict``) one warning per categorical column counts the rows whose level is not among
        the training categories (they encode as all zeros, i.e. unknown)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing feature column(s) {missing}")
        parts = []
        for c in self.columns:
            col = frame[c]
            if c in self.numeric:
                mean, std = self.numeric[c]
                vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
                bad = np.isnan(vals) & col.notna().to_numpy()
                if bad.any():
                    raise DataError(f"{source}: numerical feature column {c!r} has text value {col[bad].iloc[0]!r}")
                z = (vals - mean) / std
                parts.append(np.nan_to_num(z, nan=0.0)[:, None])
            else:
                cats = self.categorical[c]
                known = col.notna().to_numpy()
                as_str = col.astype(str).where(known, None).to_numpy()
                onehot = np.zeros((len(frame), len(cats)), dtype=np.float32)
                lookup = {v: k for k, v in enumerate(cats)}
                unseen: list[str] = []
                for i, v in enumerate(as_str):
                    k = lookup.get(v)
                    if k is not None:
                        onehot[i, k] = 1.0
                    elif known[i]:
                        unseen.append(v)
                if warn_unseen and unseen:
                    warnings.warn(f"{source}: column {c!r}: {len(unseen)} row(s) with levels not seen in training "
                                  f"(e.g. {unseen[0]!r}); encoded as unknown")
                parts.append(onehot)
        if not parts:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "numeric": {k: list(v) for k, v in self.numeric.items()},
                "categorical": self.categorical}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoder:
        return cls(numeric={k: tuple(v) for k, v in d["numeric"].items()}, categorical=d["categorical"],
                   columns=d["columns"])
