"""Measure `sharewise demo` (the built-in digits comparison) and store each method's test metrics as a
run record, benchmarks/results/runs/demo/<method>.json (benchmarks/record.py).

    .venv/bin/python benchmarks/demo_runs.py [--replace]

The demo trains every method on one thread (`train.threads: 1` in sharewise/demo.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adult_runs import run_sharewise  # noqa: E402
from record import figures_from_results, store_run  # noqa: E402

SECTION = "demo"
THREADS = 1


def measure(out: str = "/tmp/sharewise-demo", seed: int = 0) -> tuple[str, dict[str, dict], float]:
    """Run the demo; returns (command, {method: figures}, wall time of the whole demo)."""
    args = ["demo", "--out", out, "--seed", str(seed), "--overwrite", "--no-progress"]
    wall = run_sharewise(args)
    figures = {}
    for results_path in sorted(Path(out).glob("*/results.json")):
        results = json.loads(results_path.read_text())
        figures[results["method"]] = figures_from_results(results)
    if not figures:
        raise RuntimeError(f"sharewise demo wrote no results.json under {out}")
    return "sharewise " + shlex.join(args), figures, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/sharewise-demo")
    parser.add_argument("--replace", action="store_true", help="overwrite the records instead of adding repetitions")
    args = parser.parse_args(argv)
    command, by_method, wall = measure(args.out)
    for method, figures in by_method.items():
        store_run(SECTION, method, command=command, figures=figures, threads=THREADS,
                  timings={"demo_wall_s": round(wall, 1)}, replace=args.replace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
