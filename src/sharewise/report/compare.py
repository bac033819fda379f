"""``sharewise report RUN RUN ... --out DIR``: one comparison of several runs (metrics side by side,
Δ_t and Δ_MTL against a reference, parameters, FLOPs, and accuracy against cost), written under
``DIR`` only: the runs themselves are read, never written.

The reference of Δ_t (protocol point 5) is the run named by ``reference`` (``--reference``: a run
directory or per-task metrics), else the one compared run whose method is ``independent``; with
neither, each run's own recorded Δ_MTL is shown (the reference it was trained against, if any).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunDirError, UsageError
from ..files import atomic_write_text
from ..metrics import delta_mtl, delta_task
from .markdown import _fmt
from .plots import accuracy_vs_cost


def _results(run: Path) -> dict:
    path = run / "results.json"
    if not path.exists():
        raise RunDirError(f"{run}: no results.json (run `sharewise test` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); rerun `sharewise test`") from None


def _test_metrics(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """A reference task entry's test metrics: ``{"val", "test"}`` (a run's results) or flat metrics."""
    return entry["test"] if isinstance(entry.get("test"), Mapping) else entry


def choose_reference(results: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any] | None = None,
                     reference_source: str | None = None) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(per-task reference metrics, what they are, the compared run that is the reference): the
    given ``reference``, else the only compared run whose method is ``independent``; (None, None,
    None) when there is neither. Several ``independent`` runs and no ``reference`` is an error."""
    if reference is not None:
        source = reference_source or "given reference"
        same = next((k for k in results if Path(k).resolve() == Path(source).resolve()), None) \
            if reference_source else None
        return {t: _test_metrics(v) for t, v in reference.items()}, source, same
    independent = [k for k, r in results.items() if r.get("method") == "independent"]
    if len(independent) > 1:
        raise UsageError(f"several `independent` runs ({', '.join(independent)}): name the one to compare "
                         f"against with --reference RUN")
    if not independent:
        return None, None, None
    run = independent[0]
    return {t: e["test"] for t, e in results[run]["tasks"].items()}, run, run


def comparison_deltas(result: Mapping[str, Any], reference: Mapping[str, Mapping[str, Any]]
                      ) -> tuple[dict[str, float | None], float | None]:
    """Δ_t on each task's primary test metric against ``reference`` (tasks it lacks are left out)
    and Δ_MTL (%) = 100 · mean_t Δ_t."""
    deltas = {t: delta_task(e["test"], reference[t], e["kind"], [e["primary_metric"]])
              for t, e in result["tasks"].items() if t in reference}
    return deltas, delta_mtl(deltas) if deltas else None


def write_comparison(runs: Sequence[Path], out: Path, *, reference: Mapping[str, Any] | None = None,
                     reference_source: str | None = None) -> Path:
    """``out/comparison.md`` and ``out/accuracy_vs_cost.png`` from the runs' ``results.json``;
    nothing else is written."""
    runs = [Path(r) for r in runs]
    seen = [r.resolve() for r in runs]
    twice = next((r for r, key in zip(runs, seen) if seen.count(key) > 1), None)
    if twice is not None:
        raise UsageError(f"{twice}: the same run is given twice")
    results = {str(r): _results(r) for r in runs}
    ref, ref_source, ref_run = choose_reference(results, reference, reference_source)
    out.mkdir(parents=True, exist_ok=True)
    labels = {k: v["method"] if Path(k).name == v["method"] else f"{v['method']} ({Path(k).name})"
              for k, v in results.items()}
    first = next(iter(results.values()))
    tasks = list(first["tasks"])
    lines = ["# Comparison", "", "Test metrics of each run's validation-selected model.", "",
             "| task | metric | " + " | ".join(labels.values()) + " |", "|---|---|" + "---|" * len(runs)]
    for t in tasks:
        metrics = [m for m in first["tasks"][t]["test"] if m not in ("n", "loss")]
        for m in metrics:
            vals = [_fmt(r["tasks"].get(t, {}).get("test", {}).get(m)) for r in results.values()]
            lines.append(f"| {t} | {m} | " + " | ".join(vals) + " |")
    if ref is not None:
        per_run = {k: (None, None) if k == ref_run else comparison_deltas(r, ref) for k, r in results.items()}
        for t in tasks:
            lines.append(f"| Δ_t (%) | {t} ({first['tasks'][t]['primary_metric']}) | " + " | ".join(
                "reference" if k == ref_run else _fmt(None if per_run[k][0].get(t) is None else 100 * per_run[k][0][t])
                for k in results) + " |")
        lines.append("| Δ_MTL (%) | | " + " | ".join(
            "reference" if k == ref_run else _fmt(per_run[k][1]) for k in results) + " |")
    else:
        lines.append("| Δ_MTL (%) | as recorded | " + " | ".join(_fmt(r.get("delta_mtl")) for r in results.values()) + " |")
    lines.append("| parameters | total | " + " | ".join(_fmt(r["parameters"]["total"]) for r in results.values()) + " |")
    for t in tasks:
        lines.append(f"| parameters | path of {t} | " + " | ".join(
            _fmt(r["parameters"]["per_task"].get(t)) for r in results.values()) + " |")
    lines.append("| FLOPs | all tasks | " + " | ".join(_fmt(r["flops"]["all_tasks"]) for r in results.values()) + " |")
    lines.append("| FLOPs | naive | " + " | ".join(_fmt(r["flops"]["naive"]) for r in results.values()) + " |")
    for t in tasks:
        lines.append(f"| FLOPs | task {t} | " + " | ".join(_fmt(r["flops"]["per_task"].get(t)) for r in results.values()) + " |")
    lines.append("")
    if ref is not None:
        lines += [f"Δ_t = ±(M_t − B_t) / |B_t| on each task's primary test metric (+ where higher is better), "
                  f"against `{ref_source}`; Δ_MTL is its mean over tasks.", ""]
    else:
        lines += ["No `independent` run among these and no --reference: Δ_MTL as each run recorded it against "
                  "the reference it was trained with (– for none).", ""]
    cat = [t for t in tasks if first["tasks"][t]["kind"] == "categorical"]
    chosen = cat or tasks
    metric = "mean accuracy over categorical tasks" if cat else "mean primary metric"
    points = []
    for k, r in results.items():
        vals = [r["tasks"][t]["test"][r["tasks"][t]["primary_metric"]] for t in chosen if t in r["tasks"]]
        points.append({"label": labels[k], "flops": r["flops"]["all_tasks"], "value": float(np.mean(vals)), "metric": metric})
    plot = accuracy_vs_cost(points, out)
    lines += [f"![accuracy against cost]({plot.name})", ""]
    path = out / "comparison.md"
    atomic_write_text(path, "\n".join(lines))
    return path
