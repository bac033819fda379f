"""Matplotlib pictures for reports (Agg backend, imported only when a report is written)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..plotting import pyplot
from ..files import read_jsonl


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl`` (none when it is missing)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def training_curves(run_dir: Path, tasks: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Per phase: for every task the training loss, the validation loss and the validation
    primary metric against the step."""
    plt = pyplot()
    by_phase: dict[str, list[dict]] = defaultdict(list)
    for r in read_metrics(run_dir):
        if "step" in r and "phase" in r:
            by_phase[r["phase"]].append(r)
    written = []
    for phase, records in by_phase.items():
        names = list(tasks)
        cols = min(4, len(names))
        rows = -(-len(names) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, names):
            train = [(r["step"], r[f"loss/{name}"]) for r in records if r.get("split") == "train" and r.get(f"loss/{name}") is not None]
            val = [(r["step"], r[f"{name}/loss"]) for r in records if r.get("split") == "val" and r.get(f"{name}/loss") is not None]
            if train:
                ax.plot(*zip(*train), label="train loss", color="tab:blue", lw=1)
            if val:
                ax.plot(*zip(*val), label="val loss", color="tab:orange", marker="o", ms=3)
            ax.set_title(name, fontsize=11)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            metric = tasks[name]["primary_metric"]
            vm = [(r["step"], r[f"{name}/{metric}"]) for r in records if r.get("split") == "val" and r.get(f"{name}/{metric}") is not None]
            if vm:
                ax2 = ax.twinx()
                ax2.plot(*zip(*vm), color="tab:green", marker="s", ms=3, lw=1, label=f"val {metric}")
                ax2.set_ylabel(f"val {metric}", color="tab:green")
            ax.legend(fontsize=8, loc="upper right")
        fig.suptitle(f"phase {phase}", fontsize=12)
        fig.tight_layout()
        path = out / f"curves_{phase}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def accuracy_vs_cost(points: list[dict[str, Any]], out: Path) -> Path:
    """One point per run: mean primary metric per task kind against FLOPs (all tasks)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for p in points:
        ax.scatter(p["flops"], p["value"], s=50)
        ax.annotate(p["label"], (p["flops"], p["value"]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("FLOPs for all tasks, one example (log)")
    ax.set_ylabel(points[0]["metric"] if points else "")
    ax.set_title("accuracy against cost", fontsize=12)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "accuracy_vs_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
