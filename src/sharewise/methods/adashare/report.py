"""AdaShare's part of ``report.md``: the learned policy, the re-trained architectures and plots.

Reads ``policy.json``, ``metrics.jsonl`` and ``results.json`` of a run directory and writes PNGs
(matplotlib, Agg backend, imported here only): execute probabilities (tasks × blocks), the
selected architecture, task-sharing similarity, p_exec over the search cycles, and the phases'
curves (τ, sparsity, sharing, per-task losses).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ...plotting import pyplot
from ...files import read_jsonl
from .diagnostics import diagnostics
from .policy import sharing_similarity


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)




def _grid_plot(plt, matrix: np.ndarray, rows: list[str], cols: list[str], title: str, path: Path, *,
               cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0, fmt: str = "{:.2f}",
               labels: np.ndarray | None = None) -> None:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(cols) + 2.5), max(2.5, 0.5 * len(rows) + 1.5)))
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45 if len(cols) > 6 else 0, ha="right" if len(cols) > 6 else "center")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            text = labels[i, j] if labels is not None else fmt.format(matrix[i, j])
            r, g, b, _ = im.cmap(im.norm(matrix[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _history_plot(plt, policy: dict[str, Any], path: Path) -> bool:
    history = policy.get("history") or []
    if not history:
        return False
    tasks, blocks = policy["tasks"], policy["blocks"]
    cycles = [h["cycle"] for h in history]
    probs = np.array([h["exec_prob"] for h in history])  # (cycles, tasks, blocks)
    ncol = min(len(tasks), 3)
    nrow = -(-len(tasks) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False, sharey=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(blocks)))
    for k, t in enumerate(tasks):
        ax = axes[k // ncol][k % ncol]
        for j, b in enumerate(blocks):
            ax.plot(cycles, probs[:, k, j], color=colors[j], label=b)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{t}")
        ax.set_xlabel("search cycle e")
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        if policy.get("cycle") is not None:
            ax.axvline(policy["cycle"], color="red", lw=0.8, ls="--")
    for k in range(len(tasks), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    axes[0][0].set_ylabel("p_exec")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Execute probabilities during the search (dashed: selected checkpoint)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _curves_plot(plt, records: list[dict[str, Any]], tasks: list[str], path: Path) -> bool:
    train = [r for r in records if r.get("split") == "train" and r.get("phase") in ("warmup", "search")]
    val = [r for r in records if r.get("split") == "val" and r.get("phase") in ("warmup", "search")
           and r.get("selection_score") is not None]
    if not train:
        return False
    offset = {"warmup": 0}
    warm = [r["step"] for r in train if r["phase"] == "warmup"]
    offset["search"] = max(warm) if warm else 0

    def series(rows, key):
        pts = [(r["step"] + offset[r["phase"]], r[key]) for r in rows if r.get(key) is not None]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0][0]
    for t in tasks:
        xs, ys = series(train, f"loss/{t}")
        ax.plot(xs, ys, label=t)
    if offset["search"]:
        ax.axvline(offset["search"], color="grey", ls="--", lw=0.8)
    ax.set_title("training loss per task (warm-up | search)")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    xs, ys = series(train, "state/temperature")
    ax.plot(xs, ys, color="tab:red")
    ax.set_title("temperature τ")
    ax.set_xlabel("iteration")
    ax = axes[1][0]
    for key, label in (("aux/sparsity", "λ_sp·L_sparsity"), ("aux/sharing", "λ_sh·L_sharing")):
        xs, ys = series(train, key)
        if xs:
            ax.plot(xs, ys, label=label)
    ax.set_title("regularisers (policy stretches)")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    xs, ys = series(val, "selection_score")
    ax.plot(xs, ys, marker=".", color="tab:green")
    ax.set_title("validation selection score (argmax policy during search)")
    ax.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _history_rows(history: list[dict[str, Any]], limit: int = 12) -> list[dict[str, Any]]:
    """At most ``limit`` cycles of the search, evenly spaced, the first and the last always in."""
    if len(history) <= limit:
        return list(history)
    picks = sorted({round(i * (len(history) - 1) / (limit - 1)) for i in range(limit)})
    return [history[i] for i in picks]


def _grad_plot(plt, rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    cycles = [r["cycle"] for r in rows]
    for key, label in (("task", "task losses Σλ_t L_t"), ("sparsity", "λ_sp·L_sparsity"), ("sharing", "λ_sh·L_sharing")):
        ax.plot(cycles, [max(r.get(key, 0.0), 1e-12) for r in rows], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("search cycle e")
    ax.set_ylabel("‖∂ term / ∂Φ‖ (mean over the cycle)")
    ax.set_title("gradient on the policy logits, per loss term")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _diagnostics_lines(plt, policy: dict[str, Any], plots_dir: Path) -> list[str]:
    """What the policy learned: p_exec per task and block over the cycles, the pairwise task
    distances of the selected policy, and the gradient sizes of each loss term on the logits
    (the same numbers as ``results.json``'s ``adashare`` entry)."""
    diag = diagnostics(policy)
    tasks, blocks = policy["tasks"], policy["blocks"]
    lines = ["### What the policy learned", ""]
    history = diag["exec_prob_history"]
    if history:
        cols = [f"{t} {b}" for t in tasks for b in blocks]
        lines += ["p_exec per task and gated block after search cycles (all cycles: `results.json` → "
                  "`adashare.exec_prob_history`):", "", "| cycle | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for h in _history_rows(history):
            lines.append(f"| {h['cycle']} | " + " | ".join(f"{p:.3f}" for row in h["exec_prob"] for p in row) + " |")
        lines.append("")
    if len(tasks) > 1:
        dist = diag["task_distance"]
        lines += ["Pairwise task distance of the selected policy: mean over blocks of |p_exec(s) − p_exec(t)| "
                  "(upper triangle) and the Hamming distance of the argmax paths, in blocks (lower triangle):", "",
                  "| task | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for i, s_ in enumerate(tasks):
            cells = []
            for j, t in enumerate(tasks):
                cells.append("–" if i == j else (f"{dist['mean_abs'][s_][t]:.3f}" if j > i
                                                  else str(dist["hamming_argmax"][s_][t])))
            lines.append(f"| {s_} | " + " | ".join(cells) + " |")
        lines.append("")
    summary = diag["grad_norm_summary"]
    if summary:
        rows = diag["grad_norm_history"]
        lines += ["Gradient on the policy logits Φ per loss term (L2 norm, mean over a cycle's policy steps): "
                  f"over the {summary['cycles']} search cycles the **{summary['dominant']}** term was the largest "
                  "(share of the summed norms: " + ", ".join(
                      f"{k} {_fmt(v, 3) if v is None else f'{100 * v:.1f} %'}" for k, v in summary["share"].items())
                  + ").", "",
                  "| cycle | task losses | λ_sp·sparsity | λ_sh·sharing | " + " | ".join(f"task {t}" for t in tasks) + " |",
                  "|---|---|---|---|" + "---|" * len(tasks)]
        for r in _history_rows(rows):
            lines.append(f"| {r['cycle']} | {r['task']:.3g} | {r['sparsity']:.3g} | {r['sharing']:.3g} | "
                         + " | ".join(f"{r.get(f'task/{t}', 0.0):.3g}" for t in tasks) + " |")
        m = summary["mean"]
        lines.append(f"| mean | {m['task']:.3g} | {m['sparsity']:.3g} | {m['sharing']:.3g} | "
                     + " | ".join(f"{m.get(f'task/{t}', 0.0):.3g}" for t in tasks) + " |")
        lines.append("")
        _grad_plot(plt, rows, plots_dir / "adashare_grad_norms.png")
        lines += ["![gradient sizes on the policy logits](plots/adashare_grad_norms.png)", ""]
    return lines


def adashare_report(run_dir: Path, plots_dir: Path) -> list[str]:
    """Markdown lines (and PNGs in ``plots_dir``) for the AdaShare section of ``report.md``."""
    path = run_dir / "policy.json"
    if not path.exists():
        return ["## AdaShare", "", "No `policy.json` in this run directory.", ""]
    policy = json.loads(path.read_text())
    tasks, blocks = policy["tasks"], policy["blocks"]
    probs = np.array([policy["exec_prob"][t] for t in tasks])
    archs = policy.get("architectures", [])
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    plt = pyplot()
    plots_dir.mkdir(parents=True, exist_ok=True)

    lines = ["## AdaShare", ""]
    lines.append(
        f"Policy from `{policy['checkpoint']}` ({policy['policy_checkpoint']} search checkpoint): cycle e = "
        f"{policy['cycle']} of {policy.get('search_cycles')}, τ = {policy['temperature']:.3f}, curriculum window "
        f"n = {policy['window']} of {len(blocks)} gated blocks "
        f"({'complete' if policy['curriculum_complete'] else 'INCOMPLETE: the lower blocks were never searched'}).")
    lines += ["", "Execute probabilities p_exec (rows: tasks; columns: gated blocks, lowest first):", "",
              "| task | " + " | ".join(blocks) + " |", "|---|" + "---|" * len(blocks)]
    for i, t in enumerate(tasks):
        lines.append(f"| {t} | " + " | ".join(f"{p:.3f}" for p in probs[i]) + " |")
    lines.append("")
    _grid_plot(plt, probs, tasks, blocks, "p_exec (execute probability)", plots_dir / "adashare_exec_prob.png")
    lines += ["![execute probabilities](plots/adashare_exec_prob.png)", ""]
    if len(tasks) > 1:
        import torch

        sim = sharing_similarity(torch.tensor(probs)).numpy()
        _grid_plot(plt, sim, tasks, tasks, "task sharing similarity 1 − mean|Δp_exec|", plots_dir / "adashare_sharing.png")
        lines += ["![task sharing similarity](plots/adashare_sharing.png)", ""]
    if _history_plot(plt, policy, plots_dir / "adashare_exec_prob_history.png"):
        lines += ["![p_exec over the search](plots/adashare_exec_prob_history.png)", ""]
    lines += _diagnostics_lines(plt, policy, plots_dir)
    if _curves_plot(plt, read_jsonl(Path(run_dir) / "metrics.jsonl"), tasks, plots_dir / "adashare_curves.png"):
        lines += ["![training curves](plots/adashare_curves.png)", ""]

    if archs:
        per_cand = {c["name"]: c for c in (results.get("candidates") or {}).get("per_candidate", [])}
        lines += ["### Re-trained architectures", "",
                  "Each architecture's policy per task (1 = execute, 0 = skip, lowest block first); the selection "
                  "uses validation only.", "",
                  "| architecture | kind | seed | " + " | ".join(tasks) + " | removed blocks | val score | selected | "
                  + " | ".join(f"test {t}" for t in tasks) + " |",
                  "|---|---|---|" + "---|" * len(tasks) + "---|---|---|" + "---|" * len(tasks)]
        for a in archs:
            test = per_cand.get(a["name"], {}).get("test", {})
            prim = {t: results.get("tasks", {}).get(t, {}).get("primary_metric") for t in tasks}
            lines.append(
                f"| {a['name']} | {a['kind']} | {a['seed']} | " + " | ".join("".join(map(str, a["policy"][t])) for t in tasks)
                + f" | {a['num_removed']} | {_fmt(a.get('val_score'))} | {'**yes**' if a.get('selected') else ''} | "
                + " | ".join(_fmt(test.get(t, {}).get(prim[t])) if prim[t] else "–" for t in tasks) + " |")
        lines.append("")
        mean_sd = (results.get("candidates") or {}).get("mean_sd")
        if mean_sd:
            n = results["candidates"]["n"]
            lines += [f"Test primary metric over the {n} tested architectures, mean ± sample sd: " + "; ".join(
                f"{t} {results['tasks'][t]['primary_metric']} {_fmt(mean_sd[t][results['tasks'][t]['primary_metric']]['mean'])} ± "
                f"{_fmt(mean_sd[t][results['tasks'][t]['primary_metric']]['sd'])}" for t in tasks if t in mean_sd), ""]
        chosen = next((a for a in archs if a.get("selected")), archs[0])
        u = np.array([chosen["policy"][t] for t in tasks], dtype=float)
        labels = np.where(u > 0, "run", "skip").astype(object)
        for j, b in enumerate(blocks):
            if b in chosen.get("removed_blocks", []):
                labels[:, j] = "removed"
        _grid_plot(plt, u, tasks, blocks, f"{chosen['name']}: blocks each task runs", plots_dir / "adashare_architecture.png",
                   cmap="Greens", labels=labels)
        lines += ["![selected architecture](plots/adashare_architecture.png)", ""]
    return lines
