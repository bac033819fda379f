"""Parameter allocation's part of ``report.md``: the learned pattern and the task similarity.

Reads ``allocation.json`` of a run directory and writes PNGs (matplotlib, Agg, imported here
only): (a) the pattern tasks × components, columns grouped by routed layer, rows grouped by
task family; (b) the cosine similarity of the tasks' binary patterns (all-zero patterns give 0
and are flagged) and its soft variant on the probabilities (§6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...plotting import pyplot


def _family_order(tasks: list[str], families: list[str]) -> list[int]:
    first = {f: i for i, f in reversed(list(enumerate(families)))}
    return sorted(range(len(tasks)), key=lambda i: (first[families[i]], i))


def _pattern_plot(record: dict, order: list[int], path: Path) -> None:
    plt = pyplot()
    tasks = [record["tasks"][i] for i in order]
    blocks = [np.array([layer["pattern"][t] for t in tasks], dtype=float) for layer in record["layers"]]
    matrix = np.concatenate(blocks, axis=1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * matrix.shape[1] + 2.5), max(2.5, 0.4 * len(tasks) + 1.5)))
    ax.imshow(matrix, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    edge = 0
    for layer in record["layers"][:-1]:
        edge += layer["components"]
        ax.axvline(edge - 0.5, color="tab:red", linewidth=1)
    starts = np.cumsum([0] + [layer["components"] for layer in record["layers"]])[:-1]
    ax.set_xticks([s + (layer["components"] - 1) / 2 for s, layer in zip(starts, record["layers"])],
                  [layer["layer"] for layer in record["layers"]])
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8 if len(tasks) <= 24 else 6)
    families = [record["similarity"]["families"][i] for i in order]
    for row in range(1, len(tasks)):  # a line between families (rows are grouped by family)
        if families[row] != families[row - 1]:
            ax.axhline(row - 0.5, color="tab:blue", linewidth=1.5)
    ax.set_title("allocation 1[p ≥ 0.5] (tasks × components)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _similarity_plot(matrix: np.ndarray, tasks: list[str], title: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(3.5, 0.5 * len(tasks) + 2.5), max(3.0, 0.5 * len(tasks) + 1.5)))
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    if len(tasks) <= 12:
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curves_plot(rows: list[dict], path: Path) -> None:
    """Average accuracy over tasks against the round, one line per split; the selected checkpoint marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    labels = {"val": "validation (selects)", "train": "train (no augmentation)",
              "test_diagnostic": "test (diagnostic, never selects)"}
    for split in ("train", "val", "test_diagnostic"):
        pts = [(r["round"], r["accuracy"]) for r in rows if r["task"] == "Average" and r["split"] == split
               and r["accuracy"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=labels[split], linestyle="--" if split == "test_diagnostic" else "-")
    chosen = [r["round"] for r in rows if r["task"] == "Average" and r["selected"]]
    if chosen:
        ax.axvline(chosen[0], color="grey", linewidth=1, linestyle=":", label=f"selected (round {chosen[0]:g})")
    ax.set_xlabel("round (one update per task)")
    ax.set_ylabel("average accuracy over tasks")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def checkpoints_report(run_dir: Path, plots_dir: Path) -> list[str]:
    """The checkpoint table's summary and the curves (``checkpoints.csv``)."""
    from .checkpoints import read_table

    path = run_dir / "checkpoints.csv"
    if not path.exists():
        return []
    rows = read_table(path.read_text())
    average = [r for r in rows if r["task"] == "Average"]
    steps = sorted({r["step"] for r in average})
    chosen = [r for r in average if r["selected"]]
    lines = ["## Checkpoints", "", f"{len(steps)} inline evaluations (table checkpoint × split × task: "
             "`checkpoints.csv`); the selection reads validation only, test is evaluated once on the selected model."]
    if chosen:
        per = ", ".join(f"{r['split']} {r['accuracy']:.4f}" for r in chosen if r["accuracy"] is not None)
        lines += ["", f"Selected: step {chosen[0]['step']} (round {chosen[0]['round']:g}); average accuracy {per}."]
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
        _curves_plot(rows, plots_dir / "checkpoints.png")
    except ImportError:
        return lines
    return lines + ["", "![checkpoints](plots/checkpoints.png)"]


def allocation_report(run_dir: Path, plots_dir: Path) -> list[str]:
    path = run_dir / "allocation.json"
    if not path.exists():
        return checkpoints_report(run_dir, plots_dir)
    record = json.loads(path.read_text())
    sim = record["similarity"]
    order = _family_order(record["tasks"], sim["families"])
    tasks = [record["tasks"][i] for i in order]
    lines = ["## Parameter allocation", "",
             f"Router: {record['router']} ({record['method']}), aggregation: {record['aggregation']}, "
             f"C_tot = {record['total_components']} components over {len(record['layers'])} routed layers.", "",
             "| task | active fraction | " + " | ".join(layer["layer"] for layer in record["layers"]) + " |",
             "|---|---|" + "---|" * len(record["layers"])]
    for t in tasks:
        cells = ["".join(str(v) for v in layer["pattern"][t]) for layer in record["layers"]]
        lines.append(f"| {t} | {record['active_fraction'][t]:.2f} | " + " | ".join(cells) + " |")
    if sim["all_zero"]:
        lines += ["", f"All-zero allocation (similarity set to 0): {', '.join(sim['all_zero'])}."]
    for kind in ("binary", "soft"):
        sep = sim["separation"][kind]
        if sep:
            lines.append(f"\nFamily separation ({kind}): within {sep['within']:.3f}, across {sep['across']:.3f}, "
                         f"difference {sep['difference']:.3f} ({sep['pairs']['within']} / {sep['pairs']['across']} "
                         "pairs).")
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
        _pattern_plot(record, order, plots_dir / "allocation.png")
        for kind, title in (("binary", "cosine similarity of 1[p ≥ 0.5]"), ("soft", "cosine similarity of p")):
            m = np.array(sim[kind])[np.ix_(order, order)]
            _similarity_plot(m, tasks, title, plots_dir / f"allocation_similarity_{kind}.png")
    except ImportError:  # matplotlib missing: the tables still stand
        return lines + [""] + checkpoints_report(run_dir, plots_dir)
    lines += ["", "![allocation](plots/allocation.png)", "",
              "![similarity](plots/allocation_similarity_binary.png) ![soft](plots/allocation_similarity_soft.png)"]
    return lines + [""] + checkpoints_report(run_dir, plots_dir)
