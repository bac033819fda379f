"""``report.md``: per-task validation and test metrics, Δ_t, costs and the selection decision."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..files import atomic_write_text


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """``report.md`` and its ``plots/`` from a run directory's files, in the run directory or, with
    ``out``, in ``out`` (the run is then only read)."""
    run_dir = Path(run_dir)
    out = run_dir if out is None else Path(out)
    path = run_dir / "results.json"
    if not path.exists():
        raise RunDirError(f"{run_dir}: no results.json (run `sharewise test` first)")
    results = json.loads(path.read_text())
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
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    from .plots import training_curves

    curves = training_curves(run_dir, results["tasks"], plots)
    if curves:
        lines += ["## Training and validation curves", ""]
        lines += [f"![{c.stem}](plots/{c.name})" for c in curves]
        lines.append("")
    if results.get("candidates"):
        lines += _candidate_lines(results)
    lines += _method_sections(results["method"], run_dir, plots)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _candidate_lines(results: dict[str, Any]) -> list[str]:
    cands = results["candidates"]
    lines = ["## Candidates", "", f"{cands['n']} candidate models; the selected one "
             f"(`{results['selection'].get('selected')}`) was chosen on validation only. Test mean ± sample sd over all:", "",
             "| task | metric | mean | sd | n |", "|---|---|---|---|---|"]
    for task, metrics in cands["mean_sd"].items():
        m = results["tasks"][task]["primary_metric"]
        v = metrics.get(m, {})
        lines.append(f"| {task} | {m} | {_fmt(v.get('mean'))} | {_fmt(v.get('sd'))} | {v.get('n')} |")
    lines += ["", "| candidate | validation score | " + " | ".join(cands["mean_sd"]) + " |",
              "|---|---|" + "---|" * len(cands["mean_sd"])]
    for c in cands["per_candidate"]:
        vals = [_fmt(c["test"][t].get(results["tasks"][t]["primary_metric"])) for t in cands["mean_sd"]]
        lines.append(f"| {c['name']} | {_fmt(c['score'])} | " + " | ".join(vals) + " |")
    return lines + [""]


def write_seed_summary(base: Path, summary: dict[str, Any]) -> Path:
    lines = [f"# {summary['method']}: {summary['n']} seeds ({', '.join(map(str, summary['seeds']))})", "",
             "Mean ± sample sd (n − 1) over seeds, n stated; each seed's run is in `seed_<s>/`.", "",
             "| task | metric | validation | test | n |", "|---|---|---|---|---|"]
    for task, t in summary["tasks"].items():
        for m, v in t["test"].items():
            if m == "loss":
                continue
            val = t["val"].get(m, {})
            lines.append(f"| {task} | {m}{' (primary)' if m == t['primary_metric'] else ''} | "
                         f"{_fmt(val.get('mean'))} ± {_fmt(val.get('sd'))} | {_fmt(v['mean'])} ± {_fmt(v['sd'])} | {v['n']} |")
    if summary.get("delta_mtl"):
        d = summary["delta_mtl"]
        lines += ["", f"Δ_MTL = {_fmt(d['mean'])} ± {_fmt(d['sd'])} % (n = {d['n']})."]
    path = base / "seeds.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _method_sections(method: str, run_dir: Path, plots: Path) -> list[str]:
    from ..methods import methods

    cls = methods().get(method)
    if cls is None:
        return []
    return cls.report_sections(run_dir, plots)
