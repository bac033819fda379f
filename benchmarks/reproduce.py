"""Rerun the cheap deterministic benchmarks and compare every figure with its stored run record.

    .venv/bin/python benchmarks/reproduce.py          # Adult hard + independent seed 0, the demo, IXI hard seed 0,
                                                      # MNIST hard (~6 min on 2 cores)
    .venv/bin/python benchmarks/reproduce.py --all    # also Adult seeds 1-2 and hard --reference
    .venv/bin/python benchmarks/reproduce.py --section adashare-digits   # every run of a section_runs.py section
    make reproduce

Each rerun uses the command its record names (the same `train.threads=1`). On the same thread
count and torch version a figure must be identical to the stored one; otherwise (a record measured
with another thread count or torch) it may differ by `--tolerance` (relative, default 1e-3).
Prints stored vs now for every figure and exits 1 on any drift, so a figure in docs/benchmarks.md
that no longer reproduces is caught before it misleads a reader.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adult_runs  # noqa: E402
import demo_runs  # noqa: E402
import section_runs  # noqa: E402
from record import RUNS_DIR, load_run  # noqa: E402

DEFAULT_TOLERANCE = 1e-3
# runs of benchmarks/section_runs.py that the quick check reruns: one IXI seed at its CPU size, MNIST hard
QUICK_SECTION_RUNS = (("ixi", "hard-seed0"), ("images", "mnist-hard"))


def compare(stored: dict, now: dict[str, float], threads: int, torch_version: str,
            tolerance: float) -> list[tuple[str, float | None, float | None, str]]:
    """Rows (figure, stored, now, verdict) for one record; verdict is 'same', 'within tol' or 'DRIFT'."""
    exact = stored["threads"] == threads and stored["torch"] == torch_version
    rows = []
    for key in sorted(set(stored["figures"]) | set(now)):
        a, b = stored["figures"].get(key), now.get(key)
        if a is None or b is None:
            verdict = "DRIFT"
        elif a == b:
            verdict = "same"
        elif not exact and math.isclose(a, b, rel_tol=tolerance, abs_tol=0.0):
            verdict = "within tol"
        else:
            verdict = "DRIFT"
        rows.append((key, a, b, verdict))
    return rows


def _fmt(v: float | None) -> str:
    return "—" if v is None else (f"{v:d}" if isinstance(v, int) else f"{v:.6g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="also Adult seeds 1-2 and hard --reference")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="relative tolerance where the record's threads or torch differ (default 1e-3)")
    parser.add_argument("--section", action="append", default=[], choices=sorted(section_runs.SECTIONS),
                        help="rerun every run of this section_runs.py section instead of the quick set (repeatable)")
    parser.add_argument("--out-root", default="/tmp",
                        help="where the Adult and demo run directories go (default /tmp, as in the records' commands)")
    parser.add_argument("--section-out-root", default=section_runs.DEFAULT_OUT_ROOT,
                        help=f"where section_runs.py's runs go (default {section_runs.DEFAULT_OUT_ROOT}, as in their records)")
    parser.add_argument("--runs", default=str(RUNS_DIR))
    args = parser.parse_args(argv)
    import torch

    # (section, record name, thunk returning (command, figures))
    jobs = []

    def section_job(section: str, run: section_runs.Run):
        return (section, run.name, lambda: section_runs.measure(run, args.section_out_root)[:2])

    if args.section:
        for section in args.section:
            jobs += [section_job(section, run) for run in section_runs.SECTIONS[section]]
        return _compare_all(jobs, args, torch.__version__)
    seeds = adult_runs.SEEDS if args.all else (0,)
    for seed in seeds:
        for method in adult_runs.METHODS:
            jobs.append(("adult", adult_runs.record_name(method, seed),
                         lambda m=method, s=seed: adult_runs.measure(m, s, args.out_root)[:2]))
    if args.all:
        jobs.append(("adult", adult_runs.record_name("hard", 0, reference=True),
                     lambda: adult_runs.measure("hard", 0, args.out_root,
                                                reference=f"{args.out_root}/adult-independent-0")[:2]))
    demo = {}

    def demo_figures(method: str):
        if not demo:
            command, by_method, _ = demo_runs.measure(f"{args.out_root}/sharewise-demo")
            demo.update(command=command, by_method=by_method)
        return demo["command"], demo["by_method"].get(method, {})

    demo_records = sorted(p.stem for p in (Path(args.runs) / "demo").glob("*.json") if "." not in p.stem)
    for method in demo_records:
        jobs.append(("demo", method, lambda m=method: demo_figures(m)))
    for section, name in QUICK_SECTION_RUNS:
        jobs.append(section_job(section, next(r for r in section_runs.SECTIONS[section] if r.name == name)))
    return _compare_all(jobs, args, torch.__version__)


def _compare_all(jobs, args, torch_version: str) -> int:
    drift = 0
    table = []
    for section, name, thunk in jobs:
        stored = load_run(section, name, args.runs)
        command, now = thunk()
        if command != stored["command"]:
            print(f"note: {section}/{name}: command differs from the record's\n  stored: {stored['command']}\n"
                  f"  now:    {command}")
        for key, a, b, verdict in compare(stored, now, adult_runs.THREADS, torch_version, args.tolerance):
            drift += verdict == "DRIFT"
            table.append((f"{section}/{name}", key, _fmt(a), _fmt(b), verdict))
    widths = [max(len(str(r[i])) for r in table + [("record", "figure", "stored", "now", "")]) for i in range(5)]
    for row in [("record", "figure", "stored", "now", "")] + table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\n{len(table)} figures, {drift} drifted (exact where threads and torch match; rel. tol {args.tolerance:g} otherwise)")
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
