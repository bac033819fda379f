"""``sharewise demo``: the methods compared on the built-in digits set (four tasks, one input)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import validate_config
from .files import atomic_write_text

DEMO_METHODS = ("independent", "hard", "adashare")

# AdaShare sized so that the search completes its curriculum (3 gated blocks, speed 3: from cycle 6)
# and anneals the temperature below 1 (48 cycles: τ = 5 · 0.965^48 ≈ 0.90) in a few seconds:
# 100 warm-up iterations, 48 cycles of 5 weight + 5 policy iterations, 2 sampled architectures
# re-trained for 300 iterations each (as long as the other methods' 15 epochs).
ADASHARE_DEMO = {"warm_up_iters": 100, "cycle_iters": [5, 5], "search_cycles": 48, "retrain_total_iters": 300,
                 "num_archs": 2}


def demo_config(method: str, out: Path, seed: int, progress: bool) -> dict[str, Any]:
    return {
        "data": {"source": "digits"},
        "backbone": {"name": "mlp", "width": 64, "depth": 3},
        "method": {"name": method, **(ADASHARE_DEMO if method == "adashare" else {})},
        "optim": {"lr": 3e-3},
        # the summed validation loss, the rule of the demo's recorded figures (docs/benchmarks.md)
        "train": {"seed": seed, "epochs": 15, "batch_size": 64, "progress": progress, "threads": 1,
                  "selection_metric": "objective"},
        "output": {"dir": str(out / method), "tensorboard": False},
    }


def run_demo(out: Path, *, seed: int = 0, overwrite: bool = False, progress: bool = True,
             keep_host_memory_default: bool = False) -> dict[str, dict]:
    """Each demo method trained and tested in ``out/<method>``, then ``comparison.md``;
    ``keep_host_memory_default`` as for :func:`~sharewise.engine.runner.prepare` (the CLI: True)."""
    from .engine.runner import prepare, run

    out.mkdir(parents=True, exist_ok=True)
    results, times = {}, {}
    reference = None
    for method in DEMO_METHODS:
        cfg = validate_config(demo_config(method, out, seed, progress))
        start = time.perf_counter()
        ctx = prepare(cfg, reference=reference, reference_source=str(out / "independent") if reference else None,
                      keep_host_memory_default=keep_host_memory_default)
        results[method] = run(ctx, overwrite=overwrite)
        times[method] = time.perf_counter() - start
        if method == "independent":
            reference = {t: {"val": r["val"], "test": r["test"]} for t, r in results[method]["tasks"].items()}
        print(f"sharewise demo: {method} done in {times[method]:.1f} s -> {out / method}")
    path = write_comparison(out, results, times)
    print(f"sharewise demo: comparison in {path}")
    return results


def write_comparison(out: Path, results: dict[str, dict], times: dict[str, float]) -> Path:
    methods = list(results)
    tasks = list(next(iter(results.values()))["tasks"])
    lines = ["# sharewise demo: built-in digits, four tasks", "",
             "Test metrics of each method's validation-selected model; Δ_MTL against `independent`.", "",
             "| task | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for t in tasks:
        metric = results[methods[0]]["tasks"][t]["primary_metric"]
        vals = [f"{results[m]['tasks'][t]['test'][metric]:.4f}" for m in methods]
        lines.append(f"| {t} | {metric} | " + " | ".join(vals) + " |")
    lines.append("| Δ_MTL (%) | | " + " | ".join(
        "–" if results[m].get("delta_mtl") is None else f"{results[m]['delta_mtl']:+.2f}" for m in methods) + " |")
    lines.append("| parameters | | " + " | ".join(str(results[m]["parameters"]["total"]) for m in methods) + " |")
    lines.append("| FLOPs, all tasks | | " + " | ".join(str(results[m]["flops"]["all_tasks"]) for m in methods) + " |")
    lines.append("| wall time (s) | | " + " | ".join(f"{times[m]:.1f}" for m in methods) + " |")
    path = out / "comparison.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
