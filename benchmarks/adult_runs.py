"""Measure the "Tables: UCI Adult" runs and store each as a run record (benchmarks/record.py).

    .venv/bin/python benchmarks/adult_runs.py            # hard, independent x seeds 0-2, and hard --reference
    .venv/bin/python benchmarks/adult_runs.py --replace  # re-measure: overwrite the records

Each run is `sharewise run --config configs/tables/adult.yaml --method M --seed S` with
`train.threads=1`; its record is benchmarks/results/runs/adult/<M>-seed<S>.json (and
`hard-reference-seed0.json` for `hard` selected on Δ_MTL against the `independent` seed-0 run).
docs/benchmarks.md's Adult tables are rendered from these files by benchmarks/tables.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import REPO, figures_from_results, store_run  # noqa: E402

SECTION = "adult"
CONFIG = "configs/tables/adult.yaml"
THREADS = 1
METHODS = ("hard", "independent")
SEEDS = (0, 1, 2)


def run_args(method: str, seed: int, out: str, reference: str | None = None) -> list[str]:
    """The `sharewise` arguments of one Adult run (what the record's `command` says)."""
    args = ["run", "--config", CONFIG, "--method", method, "--seed", str(seed), "--out", out,
            "--no-progress", "--overwrite", "--set", f"train.threads={THREADS}",
            "--set", "output.tensorboard=false"]
    if reference:
        args += ["--reference", reference]
    return args


def run_sharewise(args: list[str]) -> float:
    """Run `sharewise ARGS` from the repository root with this interpreter; returns the wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sharewise", *args], cwd=REPO, check=True)
    return time.perf_counter() - start


def figures_with_delta(results: dict) -> dict[str, float]:
    figures = figures_from_results(results)
    if results.get("delta_mtl") is not None:
        figures["delta_mtl"] = results["delta_mtl"]
        for task, entry in results["tasks"].items():
            if entry.get("delta") is not None:
                figures[f"{task}.delta"] = entry["delta"]
    return figures


def measure(method: str, seed: int, out_root: str, reference: str | None = None) -> tuple[str, dict, dict]:
    """Run one Adult configuration; returns (command, figures, timings)."""
    suffix = "-reference" if reference else ""
    out = f"{out_root}/adult-{method}{suffix}-{seed}"
    args = run_args(method, seed, out, reference)
    wall = run_sharewise(args)
    results = json.loads((REPO / out / "results.json").read_text())  # REPO / absolute = absolute
    return "sharewise " + shlex.join(args), figures_with_delta(results), {"wall_s": round(wall, 1)}


def record_name(method: str, seed: int, reference: bool = False) -> str:
    return f"{method}{'-reference' if reference else ''}-seed{seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--no-reference", action="store_true", help="skip the hard --reference run")
    parser.add_argument("--out-root", default="/tmp", help="where the run directories go (default /tmp)")
    parser.add_argument("--replace", action="store_true", help="overwrite the records instead of adding repetitions")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for method in args.methods:
            command, figures, timings = measure(method, seed, args.out_root)
            store_run(SECTION, record_name(method, seed), command=command, figures=figures,
                      threads=THREADS, timings=timings, replace=args.replace)
    if not args.no_reference and 0 in args.seeds and "independent" in args.methods:
        command, figures, timings = measure("hard", 0, args.out_root, reference=f"{args.out_root}/adult-independent-0")
        store_run(SECTION, record_name("hard", 0, reference=True), command=command, figures=figures,
                  threads=THREADS, timings=timings, replace=args.replace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
