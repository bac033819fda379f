"""The Python API: ``fit`` a configuration, ``load_run`` a finished run, ``Run.predict`` new rows.

    import sharewise
    run = sharewise.fit({"data": {"source": "digits"}, "method": {"name": "hard"},
                         "train": {"epochs": 2}, "output": {"dir": "runs/api-demo"}})
    print(run.results["tasks"]["digit"]["test"]["accuracy"])
    predictions = run.predict(frame)          # a pandas DataFrame with the feature columns
    same = sharewise.load_run("runs/api-demo")

Every model is a plain ``torch.nn.Module`` (``run.model``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import Config, load_config, validate_config
from .errors import DataError, RunDirError


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

    @torch.no_grad()
    def predict(self, frame: pd.DataFrame, *, source: str = "the data", batch_size: int = 1024) -> pd.DataFrame:
        """Per task the prediction in original units (class label or number) and, for
        categorical tasks, one probability column per class (``<task>:p[<class>]``). Rows whose
        category level was not seen in training encode it as unknown, with one warning per column."""
        from .data.encoders import FeatureEncoder

        self._load()
        state = self.data_state
        if state.get("kind") != "table" or not state.get("features"):
            raise DataError(f"{self.path}: predict needs a run trained on a table (this run's data is {state.get('source')})")
        encoder = FeatureEncoder.from_dict(state["features"])
        x = torch.from_numpy(encoder.transform(frame, source=source, warn_unseen=True))
        shape = tuple(state["input_spec"]["shape"])
        x = x.reshape(len(x), *shape)
        outputs: dict[str, list[np.ndarray]] = {t.name: [] for t in self.tasks}
        for start in range(0, len(x), batch_size):
            out = self._model(x[start:start + batch_size], **self._kwargs)
            for t in self.tasks:
                outputs[t.name].append(t.predict(out[t.name]))
        cfg = self.config
        result = pd.DataFrame(index=frame.index)
        if cfg.data.id_col and cfg.data.id_col in frame.columns:
            result[cfg.data.id_col] = frame[cfg.data.id_col]
        for t in self.tasks:
            scores = np.concatenate(outputs[t.name]) if outputs[t.name] else np.zeros((0,))
            if t.kind == "categorical":
                result[t.name] = [t.classes[i] for i in scores.argmax(1)] if len(scores) else []
                for k, c in enumerate(t.classes):
                    result[f"{t.name}:p[{c}]"] = scores[:, k] if len(scores) else []
            elif t.kind == "numerical":
                result[t.name] = scores
            else:
                for k, c in enumerate(t.classes):
                    result[f"{t.name}:p[{c}]"] = scores[:, k]
        return result


def fit(config: Config | Mapping[str, Any] | str | Path, *, overwrite: bool = False, resume: bool = False,
        reference: str | Path | Mapping[str, Any] | None = None) -> Run:
    """Train, test and report one run; returns the :class:`Run`. ``config`` is a
    :class:`Config`, a dict of sections, or a YAML path. The calling process's ``malloc`` settings
    stay as they are unless ``train.keep_host_memory: true``."""
    from .engine.runner import prepare, run

    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, (str, Path)):
        cfg = load_config(config)
    else:
        cfg = validate_config(dict(config))
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
