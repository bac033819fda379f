"""TAAN's part of ``report.md`` (TAAN specification §2.3): per TAL layer the task similarity in
function space and the learned activation curves.

Reads ``results.json``'s ``tal_layers`` (written by :meth:`TAANModel.similarity`): the T×T
matrices ``‖f_s − f_t‖²`` and ``G_st / √(G_ss G_tt)`` under the layer's Gaussian measure, the
observed mean and sd of the pre-activations, and each task's ``f_t`` on a grid of [−3, 3].
Writes PNGs (matplotlib, Agg, imported here only): per layer the two matrices as heat maps with
the tasks ordered by a spectral clustering into (at most) 3 groups, and the curves of every task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..plotting import pyplot

CLUSTERS = 3


def spectral_groups(distance: np.ndarray, k: int = CLUSTERS, seed: int = 0) -> np.ndarray | None:
    """Task groups (T,) from the squared function distances: spectral clustering (scikit-learn) of
    the affinity ``exp(−D / mean off-diagonal D)``; None when there are too few tasks (≤ k) or all
    activations are equal."""
    t = distance.shape[0]
    off = distance[~np.eye(t, dtype=bool)]
    if t <= k or not off.size or float(off.mean()) <= 0 or not np.isfinite(off).all():
        return None
    from sklearn.cluster import SpectralClustering

    affinity = np.exp(-np.clip(distance, 0, None) / off.mean())
    labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed).fit_predict(affinity)
    # groups numbered by their first task, so the labels read in task order
    first = {g: i for i, g in reversed(list(enumerate(labels)))}
    rank = {g: r for r, g in enumerate(sorted(first, key=first.get))}
    return np.array([rank[g] for g in labels])


def _heatmaps(layer: dict[str, Any], tasks: list[str], order: list[int], groups: np.ndarray | None, title: str,
              path: Path) -> None:
    plt = pyplot()
    names = [tasks[i] for i in order]
    size = max(4.0, 0.32 * len(tasks) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.0, size))
    for ax, key, label, cmap in ((axes[0], "distance", "‖f_s − f_t‖²", "magma_r"),
                                 (axes[1], "cosine", "cosine similarity", "viridis")):
        m = np.array(layer[key])[np.ix_(order, order)]
        im = ax.imshow(m, cmap=cmap)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        if groups is not None:  # lines between the spectral groups
            sizes = np.bincount(groups[order])
            for edge in np.cumsum(sizes)[:-1]:
                ax.axhline(edge - 0.5, color="white", linewidth=1.5)
                ax.axvline(edge - 0.5, color="white", linewidth=1.5)
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(layers: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(4.6 * len(layers), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab20" if len(tasks) > 10 else "tab10")
    for i, (ax, layer) in enumerate(zip(axes[0], layers)):
        z = np.array(layer["curves"]["z"])
        for t, values in enumerate(layer["curves"]["f"]):
            ax.plot(z, values, lw=1.1, color=cmap(t % cmap.N), label=tasks[t])
        ax.plot(z, np.maximum(z, 0), color="black", lw=0.8, ls="--", label="ReLU")
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(f"TAL layer {i + 1}: f_t(z)", fontsize=10)
        ax.set_xlabel("z")
    axes[0][0].legend(fontsize=6, ncol=2 if len(tasks) > 8 else 1, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def taan_report(run_dir: Path, plots_dir: Path) -> list[str]:
    path = run_dir / "results.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    layers, tasks = results.get("tal_layers"), results.get("task_order")
    if not layers or not tasks:
        return []
    lines = ["## TAAN: task-adaptive activations", "",
             "Per TAL layer (spec §2.3): the tasks' activations f_t as functions in L²(N(μ, σ²)) under the layer's "
             "measure; ‖f_s − f_t‖² and the cosine similarity G_st / √(G_ss G_tt) from the closed forms. "
             f"Groups: spectral clustering of exp(−D / mean D) into {CLUSTERS} (tasks > {CLUSTERS} only). "
             "The observed pre-activations are what the standard measure assumes to be N(0, 1).", "",
             "| layer | measure (μ, σ) | observed z mean, sd | mean ‖f_s − f_t‖² (s ≠ t) | cosine min – max | groups |",
             "|---|---|---|---|---|---|"]
    groups_of = []
    for i, layer in enumerate(layers, 1):
        distance = np.array(layer["distance"])
        cosine = np.array(layer["cosine"])
        off = ~np.eye(len(tasks), dtype=bool)
        groups = spectral_groups(distance)
        groups_of.append(groups)
        grouping = ("; ".join(", ".join(t for t, g in zip(tasks, groups) if g == k) for k in range(groups.max() + 1))
                    if groups is not None else "–")
        mean_d = f"{distance[off].mean():.3g}" if off.any() else "–"
        cos = f"{cosine[off].min():.4f} – {cosine[off].max():.4f}" if off.any() else "–"
        mu, sigma = layer.get("measure", (0.0, 1.0))
        lines.append(f"| {i} | ({mu:.3g}, {sigma:.3g}) | {layer['z_mean']:.3g}, {layer['z_sd']:.3g} | {mean_d} | "
                     f"{cos} | {grouping} |")
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for i, (layer, groups) in enumerate(zip(layers, groups_of), 1):
            order = sorted(range(len(tasks)), key=lambda t: (groups[t], t)) if groups is not None else list(range(len(tasks)))
            name = f"taan_similarity_layer{i}.png"
            _heatmaps(layer, tasks, order, groups, f"TAL layer {i}: task similarity of the activations", plots_dir / name)
            names.append(name)
        if all("curves" in layer for layer in layers):
            _curves(layers, tasks, plots_dir / "taan_activations.png")
            names.append("taan_activations.png")
    except ImportError:  # matplotlib missing: the table still stands
        return lines
    lines += ["", *[f"![{n[:-4]}](plots/{n})" for n in names]]
    return lines
