"""The Python API: ``fit`` a configuration or a DataFrame, ``load_run`` a finished run, and the
run's ``predict`` / ``predict_proba`` / ``score`` on new data.

    import sharewise
    run = sharewise.fit({"data": {"source": "digits"}, "method": {"name": "hard"},
                         "train": {"epochs": 2}, "output": {"dir": "runs/api-demo"}})
    print(run.results["tasks"]["digit"]["test"]["accuracy"])
    predictions = run.predict(frame)          # a DataFrame, a table file, a folder of images, volumes...
    people = sharewise.fit(frame, cat_target=["sex"], num_target=["age"], out="runs/people")
    people.predict_proba(new_frame)["sex"]; people.score(labelled_frame)
    same = sharewise.load_run("runs/api-demo")

Every model is a plain ``torch.nn.Module`` (``run.model``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .config import Config, load_config, validate_config
from .errors import ConfigError, DataError, RunDirError, close_matches

if TYPE_CHECKING:
    from .data.inference import Inputs, NewExamples


class Run:
    """A run directory: its config, results, selected model, and prediction on new data."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.yaml").exists():
            raise RunDirError(f"{self.path}: not a sharewise run directory (no config.yaml)")
        self._ctx = None
        self._model = None
        self._kwargs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config(self) -> Config:
        return load_config(self.path / "config.yaml")

    @property
    def results(self) -> dict[str, Any]:
        path = self.path / "results.json"
        if not path.exists():
            raise RunDirError(f"{self.path}: no results.json yet (run `sharewise test`)")
        return json.loads(path.read_text())

    @property
    def data_state(self) -> dict[str, Any]:
        return json.loads((self.path / "data_state.json").read_text())

    def _load(self) -> None:
        if self._model is not None:
            return
        from .engine.runner import load_candidate, prepare_from_run, read_selection

        ctx = prepare_from_run(self.path)
        selection = read_selection(self.path)
        entry = next(c for c in selection["candidates"] if c["name"] == selection["selected"])
        model, cand = load_candidate(ctx, entry)
        self._ctx, self._model = ctx, model.eval()
        self._kwargs = ctx.method.candidate_forward_kwargs(cand)

    @property
    def model(self) -> torch.nn.Module:
        """The selected model (a plain ``nn.Module`` in eval mode)."""
        self._load()
        return self._model

    @property
    def tasks(self):
        self._load()
        return self._ctx.tasks

    @property
    def inputs(self) -> Inputs:
        """How this run turns raw inputs into model inputs (:mod:`sharewise.data.inference`)."""
        from .data.inference import input_pipeline

        return input_pipeline(self.data_state, self.config, what=str(self.path))

    def _forward(self, x: torch.Tensor, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        return self._model(x, tasks=tasks, **self._kwargs)

    def _scores(self, data: Any, **where: Any) -> tuple[Inputs, NewExamples, dict[str, np.ndarray]]:
        from .data.inference import predict_scores

        batch_size = where.pop("batch_size", None) or self.config.train.eval_batch_size
        self._load()
        inputs = self.inputs
        examples = inputs.locate(data, **where)
        return inputs, examples, predict_scores(self._forward, self.tasks, inputs, examples, batch_size)

    def predict(self, data: Any, *, source: str | None = None, root: str | Path | None = None,
                image_col: str | None = None, join_paths: Sequence[str | Path] | str | Path | None = None,
                skip_rows: int | None = None, batch_size: int | None = None) -> pd.DataFrame:
        """The selected model's predictions on new examples, with the run's saved preprocessing.

        ``data``: for a table run a DataFrame or a table file (``data.join`` is redone;
        ``join_paths`` gives the joined tables' new paths, in the order of ``data.join``); for an
        image run a folder, an image or IDX file, a table of image paths (``image_col``, default
        the run's; relative paths from ``root``, default the table's folder), or paths, Pillow
        images and ``uint8`` arrays; for a volume run a phenotype table located with the run's
        ``volume_pattern``/``volume_col`` (relative to ``root``), a folder of volume files, a file,
        or paths, nibabel images and arrays. Target columns may be absent.

        Returns one row per example: its id (the id column, the path relative to a given folder,
        or the image/volume given), then per task the prediction in the target's terms: the class
        label and ``<task>:p[<class>]`` probabilities (categorical), the number in the target's
        units (numerical), ``<task>:p[<label>]`` (multilabel). A category level not seen in
        training encodes as unknown, with one warning per column."""
        from .data.inference import decode_predictions

        _, examples, scores = self._scores(data, source=source, root=root, image_col=image_col, join_paths=join_paths,
                                           skip_rows=skip_rows, batch_size=batch_size)
        return decode_predictions(self.tasks, scores, examples.keep)

    def predict_proba(self, data: Any, *, task: str | None = None, **where: Any) -> dict[str, pd.DataFrame] | pd.DataFrame:
        """Class probabilities of the categorical tasks: ``{task: DataFrame}`` (one column per
        class, one row per example, in :meth:`predict`'s order and index), or one task's frame
        with ``task=``. ``where`` takes :meth:`predict`'s keywords."""
        categorical = [t for t in self.tasks if t.kind == "categorical"]
        if task is not None:
            names = {t.name: t for t in self.tasks}
            if task not in names:
                raise ConfigError(f"task {task!r}: not a task of this run{close_matches(task, names)}")
            if names[task].kind != "categorical":
                raise ConfigError(f"task {task!r}: {names[task].kind}, not categorical; predict_proba is for "
                                  "categorical tasks (use predict)")
            categorical = [names[task]]
        if not categorical:
            raise ConfigError(f"{self.path}: no categorical task; predict_proba is for categorical tasks (use predict)")
        _, examples, scores = self._scores(data, **where)
        out = {t.name: pd.DataFrame(scores[t.name], index=examples.keep.index, columns=list(t.classes))
               for t in categorical}
        return out[task] if task is not None else out

    def score(self, data: Any, y: pd.DataFrame | pd.Series | None = None, *, task: str | None = None,
              **where: Any) -> dict[str, float] | float:
        """scikit-learn's score per task on new examples with known targets: accuracy
        (categorical, ``sklearn.metrics.accuracy_score``) or R² (numerical, ``r2_score``), over
        the rows whose target is known. ``y`` holds the targets (a DataFrame with one column per
        task, or a Series for ``task=``/a one-task run); by default they are read from the
        target columns of ``data`` (a table). One task's float with ``task=``, else ``{task: score}``."""
        from sklearn.metrics import accuracy_score, r2_score

        from .data.inference import TableInputs
        from .data.table import apply_value_map

        inputs, examples, scores = self._scores(data, **where)
        tasks = [t for t in self.tasks if task is None or t.name == task]
        if not tasks:
            raise ConfigError(f"task {task!r}: not a task of this run{close_matches(task, [t.name for t in self.tasks])}")
        columns = self.data_state.get("columns") or {}
        if y is None:
            if examples.frame is None:
                raise DataError("score: give the targets as y (these examples did not come from a table)")
            frame = examples.frame
            if not isinstance(inputs, TableInputs):
                value_map = self.data_state.get("value_map") or {}
                frame = apply_value_map(frame, {c: m for c, m in value_map.items() if c in frame.columns}, "the data")
            targets = {}
            for t in tasks:
                col = columns.get(t.name, t.name)
                if col not in frame.columns:
                    raise DataError(f"score: target column {col!r} (task {t.name!r}) is not in the data; give y")
                targets[t.name] = frame[col].to_numpy()
        elif isinstance(y, pd.Series):
            if len(tasks) != 1:
                raise ConfigError("score: a Series y needs task= (this run has several tasks)")
            targets = {tasks[0].name: y.to_numpy()}
        else:
            missing = [t.name for t in tasks if t.name not in y.columns and columns.get(t.name) not in y.columns]
            if missing:
                raise DataError(f"score: y has no column for task(s) {missing}")
            targets = {t.name: y[t.name if t.name in y.columns else columns[t.name]].to_numpy() for t in tasks}
        result = {}
        for t in tasks:
            truth = targets[t.name]
            if len(truth) != len(examples):
                raise DataError(f"score: {len(truth)} target value(s) of task {t.name!r} for {len(examples)} example(s)")
            s = scores[t.name]
            if t.kind == "categorical":
                known = pd.notna(truth)
                label = np.array([_label(c) for c in t.classes], dtype=object)[s.argmax(1)] if len(s) else np.array([])
                result[t.name] = float(accuracy_score([_label(v) for v in truth[known]], label[known]))
            elif t.kind == "numerical":
                values = pd.to_numeric(pd.Series(truth), errors="coerce").to_numpy(dtype=float)
                known = ~np.isnan(values)
                result[t.name] = float(r2_score(values[known], s[known]))
            else:
                raise ConfigError(f"score: task {t.name!r} is multilabel; score covers categorical and numerical tasks")
        return result[task] if task is not None else result


def _label(v: Any) -> str:
    """A class label as text, so that 1, 1.0 and "1" compare equal."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _raw_config(config: Config | Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_yaml_dict()
    if isinstance(config, (str, Path)):
        from .config import read_yaml

        return read_yaml(config)
    if isinstance(config, Mapping):
        return _copy(config)
    raise ConfigError(f"config: a Config, a dict of sections or a YAML path, not {type(config).__name__}")


def _copy(tree: Any) -> Any:
    """A copy of nested dicts and lists (their leaves, DataFrames included, are shared)."""
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_copy(v) for v in tree]
    return tree


def _names(value: Sequence[str] | str | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _register_frames(raw: dict[str, Any]) -> None:
    """DataFrames given as ``data.path``, ``data.test_path`` or a ``data.join`` path become
    names :func:`~sharewise.data.table.read_table` reads (``dataframe:<hash>``)."""
    from .data.table import register_frame

    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for key in ("path", "test_path"):
        if isinstance(data.get(key), pd.DataFrame):
            data[key] = register_frame(data[key])
    joins = data.get("join")
    for j in ([joins] if isinstance(joins, Mapping) else joins or []):
        if isinstance(j, dict) and isinstance(j.get("path"), pd.DataFrame):
            j["path"] = register_frame(j["path"])


def fit(data_or_config: Any = None, *, config: Config | Mapping[str, Any] | str | Path | None = None,
        cat_target: Sequence[str] | str | None = None, num_target: Sequence[str] | str | None = None,
        id_col: str | None = None, out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
        reference: str | Path | Mapping[str, Any] | None = None) -> Run:
    """Train, test and report one run; returns the :class:`Run`.

    The first argument is the configuration (a :class:`Config`, a dict of sections, a YAML path)
    or the data: a pandas DataFrame or a data path (table, folder...), with the rest of the
    configuration in ``config``. ``cat_target``, ``num_target``, ``id_col`` and ``out`` are the
    CLI's ``--cat-target``, ``--num-target``, ``--id-col`` and ``--out``. A DataFrame is also
    accepted as ``data.path``/``data.test_path``/a ``data.join`` path in a dict config; the run
    records it as ``dataframe:<hash>`` (pass the same frame again to resume). The calling
    process's ``malloc`` settings stay as they are unless ``train.keep_host_memory: true``."""
    from .engine.runner import prepare, run

    first_is_config = isinstance(data_or_config, (Config, Mapping)) or (
        isinstance(data_or_config, (str, Path)) and Path(data_or_config).suffix.lower() in (".yaml", ".yml"))
    if first_is_config and config is not None:
        raise ConfigError("fit: the configuration is given twice (first argument and config=)")
    shortcuts = any(v is not None for v in (cat_target, num_target, id_col, out))
    if first_is_config and isinstance(data_or_config, Config) and not shortcuts:
        cfg = data_or_config
    else:
        raw = _raw_config(data_or_config if first_is_config else config)
        data = dict(raw.get("data") or {})
        if data_or_config is not None and not first_is_config:
            if not isinstance(data_or_config, (pd.DataFrame, str, Path)):
                raise DataError(f"fit: the data is a pandas DataFrame or a path, not {type(data_or_config).__name__}")
            data["path"] = data_or_config if isinstance(data_or_config, pd.DataFrame) else str(data_or_config)
        if id_col is not None:
            data["id_col"] = id_col
        raw["data"] = data
        if cat_target is not None or num_target is not None:
            raw["tasks"] = ([{"name": n, "kind": "categorical"} for n in _names(cat_target)]
                            + [{"name": n, "kind": "numerical"} for n in _names(num_target)])
        if out is not None:
            raw["output"] = {**dict(raw.get("output") or {}), "dir": str(out)}
        _register_frames(raw)
        cfg = validate_config(raw)
    ref, ref_source = load_reference(reference)
    ctx = prepare(cfg, reference=ref, reference_source=ref_source)
    run(ctx, overwrite=overwrite, resume=resume)
    return Run(ctx.run_dir)


def load_run(path: str | Path) -> Run:
    return Run(path)


def load_reference(reference: str | Path | Mapping[str, Any] | None) -> tuple[dict | None, str | None]:
    """Single-task references for Δ_MTL: a run directory (its ``results.json``), a JSON file of
    that form or of ``{task: {metric: value}}``, or such a mapping."""
    if reference is None:
        return None, None
    if isinstance(reference, Mapping):
        data, source = dict(reference), "given mapping"
    else:
        p = Path(reference)
        if p.is_dir():
            p = p / "results.json"
        if not p.exists():
            raise DataError(f"--reference: {p} not found (give a finished run directory or a JSON of per-task metrics)")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"--reference: {p} is not valid JSON ({err.msg}, line {err.lineno})") from None
        source = str(reference)
    tasks = data.get("tasks", data) if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise DataError(f"--reference: {source} holds no per-task metrics")
    return {t: ({"val": v["val"], "test": v["test"]} if "val" in v and "test" in v else v) for t, v in tasks.items()}, source
