"""A finished run's selected model as one compact file, and the way back to a module.

``export_run`` writes ``{"description": JSON, "state_dict": tensors}``: only the parameters the
selected model owns (an AdaShare architecture has already dropped every block that no task
executes) and, in the description, what is needed to rebuild it (resolved config, tasks with
their classes and scalers, input shape, the candidate's own information such as its policy).
The file loads with ``torch.load(..., weights_only=True)``; :func:`load_exported` rebuilds the
module with the library's code (tree execution built in). Where ``torch.export`` can trace the
model, a ``.pt2`` program is written next to it (no sharewise needed to run it).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import RunDirError
from .files import atomic_write_bytes

FORMAT = "sharewise-export"
VERSION = 1


def export_run(run_dir: str | Path, out: str | Path, *, program: bool = True) -> dict[str, Any]:
    """Write the selected model of ``run_dir`` to ``out`` (and ``out`` with suffix ``.pt2``)."""
    from .api import Run
    from .engine.runner import read_selection

    run = Run(run_dir)
    model = run.model
    selection = read_selection(run.path)
    entry = next(c for c in selection["candidates"] if c["name"] == selection["selected"])
    state = run.data_state
    description = {
        "format": FORMAT, "version": VERSION, "run": str(run.path),
        "config": run.config.to_yaml_dict(),
        "tasks": state["tasks"], "input_spec": state["input_spec"], "features": state.get("features"),
        "candidate": entry,
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
            exported = torch.export.export(_AllTasks(model), (example,), dynamic_shapes=({0: batch},))
            pbuf = io.BytesIO()
            torch.export.save(exported, pbuf)
            atomic_write_bytes(out.with_suffix(".pt2"), pbuf.getvalue())
            info["program"] = str(out.with_suffix(".pt2"))
        except Exception as err:  # tracing limits vary by model; the weights file is the contract
            warnings.warn(f"torch.export could not trace this model ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); only {out} was written")
    return info


class _AllTasks(torch.nn.Module):
    """A tuple of outputs in task order, for ``torch.export`` (dict outputs are kept as a tuple)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.task_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[t] for t in self.names)


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The exported module (eval mode), rebuilt from the file alone."""
    from .config import validate_config
    from .data.base import InputSpec
    from .engine.runner import context_without_data
    from .methods import Candidate
    from .tasks import Task

    path = Path(path)
    if not path.exists():
        raise RunDirError(f"exported model not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "description" not in blob:
        raise RunDirError(f"{path}: not a sharewise export")
    desc = json.loads(blob["description"])
    if desc.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a sharewise export (format {desc.get('format')!r})")
    cfg = validate_config(desc["config"])
    tasks = [Task.from_dict(t) for t in desc["tasks"]]
    ctx = context_without_data(cfg, tasks, InputSpec.from_dict(desc["input_spec"]), path.parent, device)
    model = ctx.method.candidate_model(ctx, Candidate(**desc["candidate"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
