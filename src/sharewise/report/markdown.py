"""``report.md``: per-task validation and test metrics, Δ_t, costs and the selection decision."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..engine.checkpoint import atomic_write_text


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    lines = [f"# sharewise run: {results['method']}", "",
             f"Run directory `{run_dir}`; data {results['run'].get('data')}; seed {results['run'].get('seed')}.", ""]
    lines += ["## Per-task metrics (selected model)", "",
              "| task | kind | metric | validation | test | Δ_t |", "|---|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        for m in t["test"]:
            if m in ("n", "loss"):
                continue
            mark = " (primary)" if m == t["primary_metric"] else ""
            delta = t.get("delta") if m == t["primary_metric"] else None
            lines.append(f"| {name} | {t['kind']} | {m}{mark} | {_fmt(t['val'].get(m))} | {_fmt(t['test'].get(m))} | "
                         f"{_fmt(None if delta is None else 100 * delta)}{'' if delta is None else ' %'} |")
    lines.append("")
    if results.get("delta_mtl") is not None:
        lines += [f"Δ_MTL = {results['delta_mtl']:.2f} % against `{results.get('reference')}`.", ""]
    p = results.get("parameters", {})
    f = results.get("flops", {})
    lines += ["## Cost", "", "| | parameters | FLOPs (one example) |", "|---|---|---|"]
    for t in results["tasks"]:
        lines.append(f"| task {t} (its path) | {_fmt(p.get('per_task', {}).get(t))} | {_fmt(f.get('per_task', {}).get(t))} |")
    lines.append(f"| all tasks | {_fmt(p.get('total'))} total, {_fmt(p.get('shared'))} shared | "
                 f"{_fmt(f.get('all_tasks'))} (naive {_fmt(f.get('naive'))}) |")
    lines += ["", "## Selection", ""]
    sel = results.get("selection", {})
    lines.append(f"Rule: {sel.get('rule')}. Test evaluated once on the selected model.")
    for ph in sel.get("phases", []):
        lines.append(f"- phase `{ph['phase']}`: {ph['cycles']} cycles, {ph['steps']} steps, selection `{ph['selection']}`, "
                     f"best cycle {ph['best_cycle']}, best score {_fmt(ph['best_score'])}"
                     f"{', stopped early' if ph.get('stopped_early') else ''}")
    lines.append("")
    lines += _method_sections(results["method"], run_dir)
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _method_sections(method: str, run_dir: Path) -> list[str]:
    from ..methods import methods

    cls = methods().get(method)
    if cls is None:
        return []
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    return cls.report_sections(run_dir, plots)
