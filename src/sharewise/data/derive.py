"""Derived targets: ``data.derived_tasks`` adds columns computed from a labelled set's columns.

Example (MNIST): ``{parity: "label % 2", large: "label >= 5", value: "label"}`` gives three new
columns, which ``tasks`` then uses like any column (``kind`` from the task list; without a task
list every derived column is a categorical task). The expressions are a tiny, safe language,
parsed with :mod:`ast` and evaluated column-wise by a whitelist walker (never ``eval``):

- column names (``label``; names that are not identifiers in backquotes: ```race.ethnicity```),
  numbers, strings, ``True``/``False``;
- ``+ - * / // % **``, unary ``-``/``+``, comparisons ``== != < <= > >=`` (chained too),
  ``in``/``not in`` a list or tuple of constants, ``and``/``or``/``not``;
- ``A if COND else B``; functions ``abs``, ``round``, ``floor``, ``ceil``, ``min``, ``max``.

A row where any column the expression reads is missing gets a missing value (the task is masked
there). Booleans are categorical targets with classes ``False``/``True``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, close_matches

MAX_LENGTH = 500

_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
           ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_CMPOPS = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
           ast.Gt: np.greater, ast.GtE: np.greater_equal}
_FUNCS = {"abs": (1, np.abs), "round": (1, np.round), "floor": (1, np.floor), "ceil": (1, np.ceil),
          "min": (2, np.minimum), "max": (2, np.maximum)}


def parse_expression(text: str, key: str) -> tuple[ast.Expression, dict[str, str]]:
    """Parse and check ``text``; returns the tree and the alias → column map for backquoted names."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{key}: expected an expression such as 'label % 2', got {text!r}")
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{key}: expression longer than {MAX_LENGTH} characters")
    quoted: dict[str, str] = {}

    def _sub(m: re.Match) -> str:
        name = f"__col{len(quoted)}__"
        quoted[name] = m.group(1)
        return name

    source = re.sub(r"`([^`]+)`", _sub, text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{key}: syntax error in {text!r}: {err.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConfigError(f"{key}: {type(node).__name__} is not allowed in {text!r} "
                              "(columns, numbers, strings, arithmetic, comparisons, and/or/not, if-else, "
                              f"{', '.join(_FUNCS)})")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise ConfigError(f"{key}: unknown function in {text!r}; allowed: {', '.join(_FUNCS)}")
        if isinstance(node, ast.Call) and (node.keywords or len(node.args) != _FUNCS[node.func.id][0]):
            raise ConfigError(f"{key}: {node.func.id}() takes {_FUNCS[node.func.id][0]} argument(s)")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool)):
            raise ConfigError(f"{key}: constant {node.value!r} is not allowed")
    return tree, quoted


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Name, ast.Load,
            ast.Constant, ast.Call, ast.List, ast.Tuple, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd,
            ast.In, ast.NotIn, *_BINOPS, *_CMPOPS)


def columns_used(tree: ast.Expression, quoted: Mapping[str, str]) -> list[str]:
    funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    names = {quoted.get(n.id, n.id) for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in funcs}
    return sorted(names)


class _Evaluator:
    def __init__(self, columns: Mapping[str, np.ndarray], quoted: Mapping[str, str], key: str) -> None:
        self.columns, self.quoted, self.key = columns, quoted, key

    def __call__(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return self(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            return np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else (
                np.float64(v) if isinstance(v, float) else v)
        if isinstance(node, ast.Name):
            return self.columns[self.quoted.get(node.id, node.id)]
        if isinstance(node, ast.BinOp):
            left, right = self(node.left), self(node.right)
            with np.errstate(all="ignore"):
                return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            v = self(node.operand)
            if isinstance(node.op, ast.Not):
                return np.logical_not(v)
            return np.negative(v) if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BoolOp):
            fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = self(node.values[0])
            for v in node.values[1:]:
                out = fn(out, self(v))
            return out
        if isinstance(node, ast.Compare):
            out, left = None, self(node.left)
            for op, comp in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(comp, (ast.List, ast.Tuple)):
                        raise ConfigError(f"{self.key}: 'in' needs a list of constants, e.g. label in [1, 3]")
                    values = [self(e) for e in comp.elts]
                    res = np.isin(np.asarray(left, dtype=object), np.asarray(values, dtype=object))
                    res = ~res if isinstance(op, ast.NotIn) else res
                    right = None
                else:
                    right = self(comp)
                    res = _CMPOPS[type(op)](left, right)
                out = res if out is None else np.logical_and(out, res)
                left = right
            return out
        if isinstance(node, ast.IfExp):
            return np.where(self(node.test), self(node.body), self(node.orelse))
        if isinstance(node, ast.Call):
            return _FUNCS[node.func.id][1](*[self(a) for a in node.args])
        if isinstance(node, (ast.List, ast.Tuple)):
            raise ConfigError(f"{self.key}: a list is only allowed after 'in'")
        raise ConfigError(f"{self.key}: {type(node).__name__} is not allowed")  # pragma: no cover


def evaluate_expression(text: str, frame: pd.DataFrame, key: str) -> pd.Series:
    """The expression's value for every row of ``frame`` (missing where an input column is)."""
    tree, quoted = parse_expression(text, key)
    used = columns_used(tree, quoted)
    for name in used:
        if name not in frame.columns:
            raise ConfigError(f"{key}: unknown column {name!r} in {text!r}{close_matches(name, frame.columns)} "
                              f"(columns: {', '.join(map(str, frame.columns))})")
    known = np.ones(len(frame), dtype=bool)
    columns = {}
    for name in used:
        col = frame[name]
        known &= col.notna().to_numpy()
        arr = col.to_numpy()
        if arr.dtype == object:
            numeric = pd.to_numeric(col, errors="coerce")
            if numeric.notna().sum() == col.notna().sum():
                arr = numeric.to_numpy()
        columns[name] = arr
    try:
        value = _Evaluator(columns, quoted, key)(tree)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: cannot evaluate {text!r}: {err}") from None
    value = np.broadcast_to(np.asarray(value), (len(frame),))
    out = pd.Series(value, index=frame.index).astype(object if value.dtype.kind in "OUSb" else value.dtype)
    out[~known] = None if out.dtype == object else np.nan
    return out


def add_derived_columns(frame: pd.DataFrame, derived: Mapping[str, str],
                        key: str = "data.derived_tasks") -> pd.DataFrame:
    """``frame`` with one new column per derived task (names must not clash with existing columns)."""
    if not derived:
        return frame
    frame = frame.copy()
    for name, text in derived.items():
        if name in frame.columns:
            raise ConfigError(f"{key}.{name}: a column of that name already exists; choose another task name")
        frame[name] = evaluate_expression(text, frame, f"{key}.{name}")
    return frame
