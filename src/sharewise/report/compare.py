"""``sharewise report RUN RUN ...``: one comparison of several runs (metrics side by side, Δ_MTL,
parameters, FLOPs, and accuracy against cost)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from ..errors import RunDirError
from .markdown import _fmt
from .plots import accuracy_vs_cost


def _results(run: Path) -> dict:
    path = run / "results.json"
    if not path.exists():
        raise RunDirError(f"{run}: no results.json (run `sharewise test` first)")
    return json.loads(path.read_text())


def write_comparison(runs: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    results = {str(r): _results(r) for r in runs}
    labels = {k: v["method"] if Path(k).name == v["method"] else f"{v['method']} ({Path(k).name})"
              for k, v in results.items()}
    tasks = list(next(iter(results.values()))["tasks"])
    lines = ["# Comparison", "", "Test metrics of each run's validation-selected model.", "",
             "| task | metric | " + " | ".join(labels.values()) + " |", "|---|---|" + "---|" * len(runs)]
    for t in tasks:
        metrics = [m for m in next(iter(results.values()))["tasks"][t]["test"] if m not in ("n", "loss")]
        for m in metrics:
            vals = [_fmt(r["tasks"].get(t, {}).get("test", {}).get(m)) for r in results.values()]
            lines.append(f"| {t} | {m} | " + " | ".join(vals) + " |")
    lines.append("| Δ_MTL (%) | | " + " | ".join(_fmt(r.get("delta_mtl")) for r in results.values()) + " |")
    lines.append("| parameters | total | " + " | ".join(_fmt(r["parameters"]["total"]) for r in results.values()) + " |")
    for t in tasks:
        lines.append(f"| parameters | path of {t} | " + " | ".join(
            _fmt(r["parameters"]["per_task"].get(t)) for r in results.values()) + " |")
    lines.append("| FLOPs | all tasks | " + " | ".join(_fmt(r["flops"]["all_tasks"]) for r in results.values()) + " |")
    lines.append("| FLOPs | naive | " + " | ".join(_fmt(r["flops"]["naive"]) for r in results.values()) + " |")
    for t in tasks:
        lines.append(f"| FLOPs | task {t} | " + " | ".join(_fmt(r["flops"]["per_task"].get(t)) for r in results.values()) + " |")
    cat = [t for t in tasks if next(iter(results.values()))["tasks"][t]["kind"] == "categorical"]
    chosen = cat or tasks
    metric = "mean accuracy over categorical tasks" if cat else "mean primary metric"
    points = []
    for k, r in results.items():
        vals = [r["tasks"][t]["test"][r["tasks"][t]["primary_metric"]] for t in chosen if t in r["tasks"]]
        points.append({"label": labels[k], "flops": r["flops"]["all_tasks"], "value": float(np.mean(vals)), "metric": metric})
    plot = accuracy_vs_cost(points, out)
    lines += ["", f"![accuracy against cost]({plot.name})", ""]
    path = out / "comparison.md"
    atomic_write_text(path, "\n".join(lines))
    return path
