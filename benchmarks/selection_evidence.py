"""The "Model selection rules" section of docs/benchmarks.md: its generated data and its analysis.

`make_shapes(folder)` writes the issue's failing case as an image-path table: 120 RGB 16×16 PNGs
of a centred circle, square or triangle (`shape`, balanced) on a dark background, filled bright or
dark (`bright`), with a radius in pixels (`size`), seeded, so every run of the section sees the
same files; `make_shapes(folder, size=32, centred=False)` the harder variant (32×32, the shape
anywhere in the image). With the issue's command (`--backbone convnet --epochs 10`: 84 training images, 2
steps an epoch, 18 validation images) the network is still learning when it stops, the regime where
the rules disagree.

`alternatives(run_dir)` reads a finished run's validation evaluations (metrics.jsonl) and returns
which evaluation each rule selects: the engine's rules (`objective`, `loss_ratio`), recomputed from
the logged losses, and two metric-based rules that were considered for the default and are not
engine options: `delta_first`, the mean over tasks of the primary metric's relative change from
the first evaluation (LibMTL's selection when no single-task results are given), and `mean_rank`,
the lowest mean over tasks of the evaluation's rank on the primary metric. Every rule keeps the
first of equal scores, as the trainer does.

    .venv/bin/python benchmarks/selection_evidence.py shapes DIR   # write the table and images
    .venv/bin/python benchmarks/selection_evidence.py shapes32 DIR # 32×32, the shape anywhere
    .venv/bin/python benchmarks/selection_evidence.py show RUN_DIR # the alternatives of a run
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

SHAPES = ("circle", "square", "triangle")
RULES = ("objective", "loss_ratio", "delta_first", "mean_rank")


def make_shapes(folder: str | Path, n: int = 120, size: int = 16, seed: int = 0, noise: float = 0.0,
                centred: bool = True) -> Path:
    """The image-path table of the failing case (``labels.csv`` + ``img/``); returns the table.
    RGB images, a dark background of a random colour, a shape of a random hue whose brightness
    gives ``bright``, radius ``size`` pixels, centred or (``centred=False``) anywhere inside the
    image, plus Gaussian ``noise``."""
    import numpy as np
    import pandas as pd
    from PIL import Image, ImageDraw

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    c = size / 2
    for i in range(n):
        shape = SHAPES[i % 3]
        bright = bool(rng.random() < 0.5)
        r = float(rng.uniform(size / 6, size / 2.5))
        cx, cy = (c, c) if centred else (float(v) for v in rng.uniform(r, size - r, 2))
        background = tuple(int(v) for v in rng.integers(0, 60, 3))
        img = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(img)
        level = rng.uniform(190, 255) if bright else rng.uniform(70, 130)
        fill = tuple(int(level * f) for f in rng.uniform(0.7, 1.0, 3))
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        pixels = np.asarray(img, dtype=float) + rng.normal(0, noise, (size, size, 3))
        name = f"img/{i:04d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name)
        rows.append({"path": name, "shape": shape, "bright": "bright" if bright else "dark", "size": round(r, 2)})
    table = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def evaluations(run_dir: str | Path, phase: str | None = None) -> tuple[list[dict[str, Any]], list[tuple[int, dict]]]:
    """(tasks from data_state.json, [(step, {task: {metric: value}})]) of the validation
    evaluations of one phase (default: the last phase that evaluated) of the run's own metrics.jsonl."""
    run_dir = Path(run_dir)
    tasks = json.loads((run_dir / "data_state.json").read_text())["tasks"]
    names = {t["name"] for t in tasks}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val_rows = [r for r in rows if r.get("split") == "val"]
    phase = phase or (val_rows[-1]["phase"] if val_rows else None)
    out = []
    for r in val_rows:
        if r["phase"] != phase:
            continue
        val: dict[str, dict[str, float]] = {}
        for key, value in r.items():
            head, _, metric = key.partition("/")
            if head in names and metric:
                val.setdefault(head, {})[metric] = value
        out.append((r["step"], val))
    return tasks, out


def _higher(kind: str, metric: str) -> bool:
    from sharewise.metrics import higher_is_better

    return higher_is_better(kind, metric)


def scores(tasks: list[dict[str, Any]], evals: list[tuple[int, dict]], rule: str) -> list[float]:
    """Every evaluation's score under ``rule`` (higher is better)."""
    base = evals[0][1]
    if rule == "objective":
        return [-sum(t["weight"] * v[t["name"]]["loss"] for t in tasks) for _, v in evals]
    if rule == "loss_ratio":
        w = sum(t["weight"] for t in tasks)
        return [-sum(t["weight"] * v[t["name"]]["loss"] / max(base[t["name"]]["loss"], 1e-12) for t in tasks) / w
                for _, v in evals]
    if rule == "delta_first":
        def delta(v: dict) -> float:
            terms = []
            for t in tasks:
                m, m0 = v[t["name"]][t["primary_metric"]], base[t["name"]][t["primary_metric"]]
                sign = 1.0 if _higher(t["kind"], t["primary_metric"]) else -1.0
                terms.append(sign * (m - m0) / max(abs(m0), 1e-12))
            return sum(terms) / len(terms)
        return [delta(v) for _, v in evals]
    if rule == "mean_rank":
        from scipy.stats import rankdata

        total = [0.0] * len(evals)
        for t in tasks:
            sign = -1.0 if _higher(t["kind"], t["primary_metric"]) else 1.0
            ranks = rankdata([sign * v[t["name"]][t["primary_metric"]] for _, v in evals])  # 1 = best
            for i, r in enumerate(ranks):
                total[i] -= r / len(tasks)
        return total
    raise ValueError(f"unknown rule {rule!r}")


def alternatives(run_dir: str | Path, phase: str | None = None) -> dict[str, Any]:
    """Per rule: the selected evaluation (1 = the first), its step and its validation primary metrics."""
    tasks, evals = evaluations(run_dir, phase)
    out: dict[str, Any] = {"evaluations": len(evals), "steps": [s for s, _ in evals],
                           "primary": {t["name"]: t["primary_metric"] for t in tasks}}
    for rule in RULES:
        s = scores(tasks, evals, rule)
        best = max(s)
        i = next(k for k, x in enumerate(s) if x == best or (math.isnan(best) and math.isnan(x)))
        out[rule] = {"evaluation": i + 1, "step": evals[i][0],
                     "val": {t["name"]: evals[i][1][t["name"]][t["primary_metric"]] for t in tasks}}
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "shapes":
        print(f"wrote {make_shapes(sys.argv[2])}")
    elif len(sys.argv) == 3 and sys.argv[1] == "shapes32":
        print(f"wrote {make_shapes(sys.argv[2], size=32, centred=False)}")
    elif len(sys.argv) == 3 and sys.argv[1] == "show":
        print(json.dumps(alternatives(sys.argv[2]), indent=2))
    else:
        raise SystemExit(__doc__)
