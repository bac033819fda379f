"""Commands as library calls: ``train`` (every phase, then the selection), ``test`` (once, on
the selected model) and ``run`` (both, then the report), on one run directory.

Everything that can fail because of the user's input (config, data, method, backbone, device)
is validated before the run directory is touched, so a bad file never overwrites earlier results.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbones import backbone_factory
from ..config import Config, save_config, validate_options
from ..cost import flop_counts, parameter_counts
from ..data import LoadedData, build_data
from ..errors import RunDirError
from ..methods import Method, MultiTaskModel, get_method
from ..methods.base import Candidate
from ..seeding import seed_global, stream_seed
from ..tasks import Task
from . import distributed as D
from .checkpoint import atomic_write_json, atomic_write_text, load_checkpoint
from .device import resolve_device
from .evaluate import evaluate
from .logging import MetricsLogger
from .trainer import Trainer, reference_metrics, selection_score

SCHEMA = 1


@dataclass
class RunContext:
    cfg: Config
    run_dir: Path
    loaded: LoadedData
    method: Method
    model: MultiTaskModel
    device: torch.device
    reference: dict[str, dict[str, float]] | None = None
    reference_source: str | None = None
    backbone_factory: Any = None

    @property
    def data(self):
        return self.loaded.data

    @property
    def tasks(self) -> list[Task]:
        return self.loaded.data.tasks


def prepare(cfg: Config, *, reference: dict[str, dict[str, float]] | None = None,
            reference_source: str | None = None) -> RunContext:
    """Validate everything and build data, method and model; touches no file."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(cfg.train.gpus)
    loaded = build_data(cfg)
    method_cls = get_method(cfg.method.name)
    options = validate_options(method_cls.Options, cfg.method.options, "method")
    method = method_cls(options, cfg)
    factory = backbone_factory(cfg.backbone.name, cfg.backbone.options, loaded.data.input_spec)
    torch.manual_seed(stream_seed(cfg.train.seed, "init"))
    model = method.build(factory, loaded.data.tasks).to(device)
    seed_global(cfg.train.seed)
    return RunContext(cfg, cfg.run_dir(), loaded, method, model, device, reference, reference_source, factory)


def claim_run_dir(run_dir: Path, outputs: list[str], *, overwrite: bool, resume: bool) -> None:
    """Refuse when this command's outputs exist, unless ``overwrite`` (removes them) or ``resume``."""
    existing = [o for o in outputs if (run_dir / o).exists()]
    if existing and not (overwrite or resume):
        raise RunDirError(
            f"run directory {run_dir} already holds {', '.join(existing)}; use --resume to continue it, "
            "--overwrite to replace it, or --out/--exp-name for a new one"
        )
    if overwrite and D.is_main():
        for o in existing:
            p = run_dir / o
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


TRAIN_OUTPUTS = ["checkpoints", "selection.json", "metrics.jsonl", "tensorboard", "split.csv", "data_state.json",
                 "config.yaml"]
TEST_OUTPUTS = ["results.json", "report.md"]


def write_split_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def make_trainer(ctx: RunContext, model: MultiTaskModel, directory: str | Path, logger: MetricsLogger) -> Trainer:
    cfg = ctx.cfg
    return Trainer(model, ctx.data, run_dir=ctx.run_dir / directory, seed=cfg.train.seed,
                   batch_size=cfg.train.batch_size, eval_batch_size=cfg.train.eval_batch_size, device=ctx.device,
                   logger=logger, checkpoint_every_s=cfg.train.checkpoint_every_s, progress=cfg.train.progress,
                   reference=ctx.reference)


def train(ctx: RunContext, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train the method's candidates and select one on validation (never test)."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    claim_run_dir(run_dir, TRAIN_OUTPUTS + TEST_OUTPUTS, overwrite=overwrite, resume=resume)
    if resume and not (run_dir / "checkpoints").exists():
        warnings.warn(f"--resume: {run_dir} has no checkpoint yet; starting from the beginning")
    if D.is_main():
        save_config(cfg, run_dir / "config.yaml")
        write_split_csv(run_dir / "split.csv", ctx.data.split_table())
        atomic_write_json(run_dir / "data_state.json", {
            "source": ctx.data.meta.get("source"), "shape": ctx.data.shape,
            "input_spec": ctx.data.input_spec.to_dict(), **ctx.loaded.state})
    logger = MetricsLogger(run_dir, tensorboard=cfg.output.tensorboard)

    def run_phases(model: MultiTaskModel, phases: list, directory: str = ".", resume: bool = resume) -> list[dict]:
        trainer = make_trainer(ctx, model, directory, logger)
        return [trainer.run_phase(phase, resume=resume) for phase in phases]

    try:
        candidates, summaries = ctx.method.train_candidates(ctx, run_phases, resume=resume)
    finally:
        logger.close()
    for cand in candidates:
        if not cand.val:
            model = ctx.method.candidate_model(ctx, cand)
            model.load_state_dict(load_checkpoint(run_dir / cand.checkpoint)["model"])
            cand.val = evaluate(model, ctx.data, "val", ctx.tasks, batch_size=cfg.train.eval_batch_size,
                                device=ctx.device, forward_kwargs=ctx.method.candidate_forward_kwargs(cand))
        cand.score = selection_score(cand.val, ctx.tasks, ctx.reference)
    best = max(candidates, key=lambda c: c.score)
    selection = {
        "selected": best.name,
        "checkpoint": best.checkpoint,
        "rule": "validation Δ_MTL against the reference" if ctx.reference else "validation objective −Σ_t λ_t L_t",
        "score": best.score,
        "val": best.val,
        "phases": summaries,
        "candidates": [dataclasses.asdict(c) for c in candidates],
    }
    if D.is_main():
        atomic_write_json(run_dir / "selection.json", selection)
    return selection


def read_selection(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "selection.json"
    if not path.exists():
        raise RunDirError(f"{run_dir}: no selection.json; run `sharewise train` first")
    return json.loads(path.read_text())


def load_candidate(ctx: RunContext, entry: dict[str, Any]) -> tuple[MultiTaskModel, Candidate]:
    cand = Candidate(**entry)
    model = ctx.method.candidate_model(ctx, cand)
    model.load_state_dict(load_checkpoint(ctx.run_dir / cand.checkpoint)["model"])
    return model, cand


def test(ctx: RunContext, *, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate every candidate's selected checkpoint on the test split once; write ``results.json``
    from the candidate chosen on validation (with mean ± sd over candidates when there are several)."""
    claim_run_dir(ctx.run_dir, ["results.json"], overwrite=overwrite, resume=False)
    selection = read_selection(ctx.run_dir)
    per_candidate = []
    chosen = None
    for entry in selection["candidates"]:
        model, cand = load_candidate(ctx, entry)
        kwargs = ctx.method.candidate_forward_kwargs(cand)
        metrics = evaluate(model, ctx.data, "test", ctx.tasks, batch_size=ctx.cfg.train.eval_batch_size,
                           device=ctx.device, forward_kwargs=kwargs)
        per_candidate.append({"name": cand.name, "score": cand.score, "info": cand.info, "test": metrics})
        if cand.name == selection["selected"]:
            chosen = (model, cand, metrics, kwargs)
    model, cand, test_metrics, kwargs = chosen
    results = build_results(ctx, selection, test_metrics, model=model, forward_kwargs=kwargs)
    if len(per_candidate) > 1:
        results["candidates"] = candidate_summary(per_candidate, ctx.tasks)
    if D.is_main():
        atomic_write_json(ctx.run_dir / "results.json", results)
    return results


def candidate_summary(per_candidate: list[dict[str, Any]], tasks: list[Task]) -> dict[str, Any]:
    """Every candidate's test metrics and, per task and metric, mean ± sample sd over candidates."""
    from ..metrics import mean_sd

    summary = {}
    for t in tasks:
        names = [k for k in per_candidate[0]["test"][t.name] if k != "n"]
        summary[t.name] = {}
        for m in names:
            mean, sd, n = mean_sd([c["test"][t.name].get(m) for c in per_candidate])
            summary[t.name][m] = {"mean": mean, "sd": sd, "n": n}
    return {"n": len(per_candidate), "per_candidate": per_candidate, "mean_sd": summary}


def build_results(ctx: RunContext, selection: dict[str, Any], test_metrics: dict[str, Any], *,
                  model: MultiTaskModel | None = None, forward_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    from ..metrics import delta_mtl, delta_task

    tasks = {}
    deltas = {}
    for t in ctx.tasks:
        d = None
        if ctx.reference and t.name in ctx.reference:
            d = delta_task(test_metrics[t.name], reference_metrics(ctx.reference[t.name], "test"), t.kind,
                           [t.primary_metric])
            deltas[t.name] = d
        tasks[t.name] = {"kind": t.kind, "primary_metric": t.primary_metric, "classes": t.to_dict()["classes"],
                         "val": selection["val"][t.name], "test": test_metrics[t.name], "delta": d}
    example = ctx.data.examples if ctx.data.shape == "shared" else next(iter(ctx.data.examples.values()))
    x0 = example.get_inputs(ctx.data.splits["test"][:1] if ctx.data.shape == "shared"
                            else ctx.data.splits[ctx.tasks[0].name]["test"][:1])[0].to(ctx.device)
    return {
        "schema": SCHEMA,
        "method": ctx.cfg.method.name,
        "run": {"seed": ctx.cfg.train.seed, "data": ctx.data.meta.get("source"), "backbone": ctx.cfg.backbone.name,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "device": str(ctx.device),
                "split_sizes": {s: int(ctx.data.split_size(s)) for s in ("train", "val", "test")}},
        "tasks": tasks,
        "delta_mtl": delta_mtl(deltas) if deltas else None,
        "reference": ctx.reference_source if ctx.reference else None,
        "selection": {k: selection[k] for k in ("rule", "score", "phases", "checkpoint", "selected")},
        "parameters": parameter_counts(model or ctx.model),
        "flops": flop_counts(model or ctx.model, x0, forward_kwargs),
    }


def run(ctx: RunContext, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """``train`` then ``test`` then ``report.md``."""
    from ..report import write_report

    train(ctx, overwrite=overwrite, resume=resume)
    results = test(ctx, overwrite=True)
    if D.is_main():
        write_report(ctx.run_dir)
    return results
