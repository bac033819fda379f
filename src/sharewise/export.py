"""A finished run's selected model as one compact file that takes raw inputs, and the way back.

``export_run`` writes ``{"description": JSON, "state_dict": tensors}``: only the parameters the
selected model owns (an AdaShare architecture has already dropped every block that no task
executes) and, in the description, what is needed to rebuild and use it: the resolved config,
the tasks with their classes and scalers, the input shape, the candidate's own information (its
policy), the run's ``data_state`` (table encoders, image decoding and pixel statistics, the volume
pipeline), ``preprocessing`` (those steps in words and numbers) and ``outputs`` (how each task's
output decodes). The file loads with ``torch.load(..., weights_only=True)``; :func:`load_exported`
rebuilds an :class:`ExportedModel` with the library's code, whose ``predict(raw)`` applies the
saved preprocessing to raw inputs and decodes the outputs as ``Run.predict`` does.

Where ``torch.export`` can trace the model, a ``.pt2`` program is written next to it (no sharewise
needed to run it): it takes the preprocessed input tensor and returns ``{task: tensor}``, already
decoded (class probabilities, values in the target's units, label probabilities); the
description travels inside it as the extra file ``sharewise.json``
(``torch.export.load(path, extra_files={"sharewise.json": ""})``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import DataError, RunDirError
from .files import atomic_write_bytes

FORMAT = "sharewise-export"
VERSION = 2
METADATA = "sharewise.json"  # the description inside the .pt2 program


def output_description(tasks: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """How each task's tensor in the ``.pt2`` program's output reads (and how to get labels)."""
    out = {}
    for t in tasks:
        if t.kind == "categorical":
            out[t.name] = {"kind": t.kind, "tensor": f"float32 (batch, {len(t.classes)}): class probabilities, "
                           "softmax of the logits", "classes": list(t.classes),
                           "label": "classes[argmax over dimension 1]"}
        elif t.kind == "numerical":
            out[t.name] = {"kind": t.kind, "tensor": "float32 (batch,): the value in the target's units, "
                           "output * std + mean", "mean": t.mean, "std": t.std}
        else:
            out[t.name] = {"kind": t.kind, "tensor": f"float32 (batch, {len(t.classes)}): per-label probabilities, "
                           "sigmoid of the logits", "classes": list(t.classes)}
    return out


class DecodedOutputs(torch.nn.Module):
    """The model with each task's output decoded: ``{task: probabilities or values}`` (what the
    ``.pt2`` program computes; see :func:`output_description`)."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[Any], forward_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.decoding = [(t.name, t.kind, float(t.mean), float(t.std)) for t in tasks]
        self.forward_kwargs = dict(forward_kwargs or {})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x, **self.forward_kwargs)
        decoded = {}
        for name, kind, mean, std in self.decoding:
            y = out[name]
            if kind == "categorical":
                decoded[name] = torch.softmax(y, dim=1)
            elif kind == "numerical":
                decoded[name] = y[:, 0] * std + mean
            else:
                decoded[name] = torch.sigmoid(y)
        return decoded


def export_run(run_dir: str | Path, out: str | Path, *, program: bool = True) -> dict[str, Any]:
    """Write the selected model of ``run_dir`` to ``out`` (and ``out`` with suffix ``.pt2``)."""
    from .api import Run
    from .engine.runner import read_selection

    run = Run(run_dir)
    model = run.model
    selection = read_selection(run.path)
    entry = next(c for c in selection["candidates"] if c["name"] == selection["selected"])
    state = {k: v for k, v in run.data_state.items() if k != "data_fingerprint"}
    try:
        preprocessing = run.inputs.describe()
    except DataError:  # a source predict does not read (Youtube-8M): the model alone
        preprocessing = None
    description = {
        "format": FORMAT, "version": VERSION, "run": str(run.path),
        "config": run.config.to_yaml_dict(),
        "tasks": state["tasks"], "input_spec": state["input_spec"], "features": state.get("features"),
        "candidate": entry, "data_state": state, "preprocessing": preprocessing,
        "outputs": output_description(run.tasks),
    }
    buf = io.BytesIO()
    torch.save({"description": json.dumps(description), "state_dict": model.state_dict()}, buf)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    info = {"path": str(out), "bytes": out.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()), "program": None}
    if program:
        example = torch.zeros(2, *state["input_spec"]["shape"])
        try:
            batch = torch.export.Dim("batch", min=1)
            exported = torch.export.export(DecodedOutputs(model, run.tasks, run._kwargs), (example,),
                                           dynamic_shapes=({0: batch},))
            pbuf = io.BytesIO()
            torch.export.save(exported, pbuf, extra_files={METADATA: json.dumps(description)})
            atomic_write_bytes(out.with_suffix(".pt2"), pbuf.getvalue())
            info["program"] = str(out.with_suffix(".pt2"))
        except Exception as err:  # tracing limits vary by model; the weights file is the contract
            warnings.warn(f"torch.export could not trace this model ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); only {out} was written")
    return info


class ExportedModel(torch.nn.Module):
    """An exported model rebuilt from its file. ``forward(x)`` gives the model's own outputs
    (``{task: logits or standardised values}``, as the run's model); :meth:`decode` the decoded
    tensors the ``.pt2`` program returns; :meth:`predict` a DataFrame from raw inputs (the saved
    preprocessing applied, outputs decoded as ``Run.predict`` decodes them)."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[Any], description: dict[str, Any], path: Path) -> None:
        super().__init__()
        self.model = model
        self.tasks = list(tasks)
        self.description = description
        self.path = path
        self.forward_kwargs: dict[str, Any] = {}

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def forward(self, x: torch.Tensor, tasks: list[str] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.model(x, tasks=tasks, **{**self.forward_kwargs, **kwargs})

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: class probabilities, values in the target's units, or label probabilities}``."""
        return DecodedOutputs(self.model, self.tasks, self.forward_kwargs)(x)

    @property
    def inputs(self):
        """The saved preprocessing (:mod:`sharewise.data.inference`)."""
        from .config import validate_config
        from .data.inference import input_pipeline

        state = self.description.get("data_state")
        if state is None:  # a version 1 file: the table encoders only
            state = {"kind": "table" if self.description.get("features") else None,
                     "features": self.description.get("features"), "input_spec": self.description["input_spec"]}
        return input_pipeline(state, validate_config(self.description["config"]), what=str(self.path))

    def predict(self, data: Any, *, source: str | None = None, root: str | Path | None = None,
                image_col: str | None = None, join_paths: Sequence[str | Path] | str | Path | None = None,
                skip_rows: int | None = None, batch_size: int = 256) -> pd.DataFrame:
        """Predictions on raw inputs, as :meth:`sharewise.api.Run.predict` (same arguments)."""
        from .data.inference import decode_predictions, predict_scores

        inputs = self.inputs
        examples = inputs.locate(data, source=source, root=root, image_col=image_col, join_paths=join_paths,
                                 skip_rows=skip_rows)
        device = next(self.model.parameters()).device
        scores = predict_scores(lambda x, tasks=None: self(x.to(device), tasks=tasks), self.tasks, inputs, examples,
                                batch_size)
        return decode_predictions(self.tasks, scores, examples.keep)


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """The exported model (eval mode), rebuilt from the file alone."""
    from .config import validate_config
    from .data.base import InputSpec
    from .engine.runner import context_without_data
    from .methods import Candidate
    from .tasks import Task

    path = Path(path)
    if not path.exists():
        raise RunDirError(f"exported model not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or foreign files
        raise RunDirError(f"{path}: not a sharewise export ({type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0][:120]})") from None
    if not isinstance(blob, dict) or "description" not in blob:
        raise RunDirError(f"{path}: not a sharewise export")
    desc = json.loads(blob["description"])
    if desc.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a sharewise export (format {desc.get('format')!r})")
    if desc.get("version", 1) > VERSION:
        raise RunDirError(f"{path}: export version {desc['version']} is newer than this sharewise reads ({VERSION})")
    cfg = validate_config(desc["config"])
    tasks = [Task.from_dict(t) for t in desc["tasks"]]
    ctx = context_without_data(cfg, tasks, InputSpec.from_dict(desc["input_spec"]), path.parent, device)
    candidate = Candidate(**desc["candidate"])
    model = ctx.method.candidate_model(ctx, candidate)
    model.load_state_dict(blob["state_dict"])
    exported = ExportedModel(model, tasks, desc, path)
    exported.forward_kwargs = ctx.method.candidate_forward_kwargs(candidate)
    return exported.to(device).eval()
