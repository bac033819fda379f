"""A tiny IXI AdaShare run on two CPU processes, timed and profiled: "volumes fast enough to iterate on".

The run is issue 22's: ``configs/adashare/ixi.yaml`` at 24³ with a 3-D ResNet of width 4 and
``--procs 2`` (warm-up 160 iterations, 50 search cycles, 2 re-trained architectures of 320), as a
user types it (no thread setting). Each repetition reports its wall time, the CPU time of all its
processes (the machine is shared, so CPU time is the figure that does not depend on the others'
load) and its timeline from ``metrics.jsonl`` (start-up to the first logged evaluation, warm-up,
search, each re-training, test and report). ``--before DIR`` runs the same command with an older
source tree (e.g. ``git worktree add /tmp/before <commit>``), alternating with this one, so both
are measured under the same load. ``--profile`` adds one run whose two ranks are started by hand
(as ``--procs 2`` starts them) under cProfile with a CPU-time clock, and reports where each
rank's CPU time went.

    .venv/bin/python benchmarks/ixi_tiny.py [--reps 1] [--before /tmp/before] [--profile]

Writes ``benchmarks/results/ixi_tiny.json`` and the run record ``speed/ixi-tiny``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pstats
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record_benchmark, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "ixi_tiny.json"
ARGS = ["run", "--config", "configs/adashare/ixi.yaml", "--cat-target", "Sex", "--num-target", "Age",
        "--set", "data.volume_shape=[24,24,24]", "--set", "backbone.width=4", "--procs", "2", "--no-progress",
        "--overwrite"]

# where a rank's CPU time goes: (label, function name, file suffix); cumulative CPU seconds
PROFILE_PARTS = (
    ("importing torch", "<module>", "torch/__init__.py"),
    ("prepare (config, data headers, model)", "prepare", "engine/runner.py"),
    ("decoding volumes", "decode", "data/volume.py"),
    ("training steps", "_step", "engine/trainer.py"),
    ("  backward", "backward", "torch/autograd/__init__.py"),
    ("  gradient all-reduce (waits included)", "all_reduce", "distributed_c10d.py"),
    ("validation evaluations", "_select", "engine/trainer.py"),
    ("checkpoints written", "save_checkpoint", "engine/checkpoint.py"),
    ("test", "_test", "engine/runner.py"),
    ("report.md and plots", "write_report", "report/markdown.py"),
)


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's shell
    return {**env, "PYTHONPATH": str(tree / "src")}


def timeline(out: Path) -> dict[str, float]:
    """Seconds from config.yaml's writing: the first logged evaluation, the end of each phase, results, report."""
    t0 = (out / "config.yaml").stat().st_mtime

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    main = rows(out / "metrics.jsonl")
    marks = {"first_logged_row": main[0]["time"] - t0}
    for phase in ("warmup", "search"):
        r = [x for x in main if x["phase"] == phase]
        marks[f"{phase}_end"] = r[-1]["time"] - t0
    for arch in sorted(p.name for p in out.glob("arch_*")):
        marks[f"{arch}_end"] = rows(out / arch / "metrics.jsonl")[-1]["time"] - t0
    marks["results_written"] = (out / "results.json").stat().st_mtime - t0
    marks["report_written"] = (out / "report.md").stat().st_mtime - t0
    return {k: round(v, 2) for k, v in marks.items()}


def one_run(tree: Path, out: Path) -> dict:
    """Run the command with ``tree``'s sources; wall, CPU of every process, timeline."""
    argv = [sys.executable, "-m", "sharewise", *ARGS, "--out", str(out)]
    start = time.perf_counter()
    wall_start = time.time()
    proc = subprocess.Popen(argv, cwd=tree, env=_env(tree), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # the launcher's usage includes its ranks (waited for)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: the run failed ({proc.returncode}):\n{stderr[-2000:]}")
    marks = timeline(out)
    marks["config_written"] = round((out / "config.yaml").stat().st_mtime - wall_start, 2)
    results = json.loads((out / "results.json").read_text())
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2), "timeline_s": marks,
            "test": {t: e["test"][e["primary_metric"]] for t, e in results["tasks"].items()}}


_PROFILED = ("import cProfile, runpy, sys, time\n"
             "sys.argv = ['sharewise'] + sys.argv[2:]\n"
             "profile = cProfile.Profile(time.process_time)\n"
             "try:\n"
             "    profile.runcall(runpy.run_module, 'sharewise', run_name='__main__')\n"
             "except SystemExit as stop:\n"
             "    code = stop.code\n"
             "else:\n"
             "    code = 0\n"
             "profile.dump_stats(__import__('os').environ['PROFILE_OUT'])\n"
             "raise SystemExit(code)\n")


def profiled_run(tree: Path, out: Path, folder: Path) -> list[dict]:
    """Both ranks by hand, as ``--procs 2`` starts them, each under cProfile with a CPU clock."""
    from sharewise.engine.distributed import threads_per_process

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {**_env(tree), "OMP_NUM_THREADS": str(threads_per_process(2)), "RANK": str(r), "LOCAL_RANK": str(r),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "PROFILE_OUT": str(folder / f"rank{r}.prof")}
        argv = [sys.executable, "-c", _PROFILED, "--", *[a for a in ARGS if a not in ("--procs", "2")], "--out", str(out)]
        procs.append(subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    usages = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("a profiled rank failed")
        usages.append(usage)
    ranks = []
    for r in range(2):
        stats = pstats.Stats(str(folder / f"rank{r}.prof")).stats
        parts = {}
        for label, name, suffix in PROFILE_PARTS:
            parts[label] = round(max((v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(suffix)),
                                     default=0.0), 2)
        ranks.append({"cpu_s": round(usages[r].ru_utime + usages[r].ru_stime, 2), "parts_cpu_s": parts})
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--before", type=Path, help="an older source tree run alternately with this one")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out-root", type=Path, default=Path("/tmp/sw-bench/ixi-tiny"))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    trees = {"now": REPO, **({"before": args.before.resolve()} if args.before else {})}
    for name, tree in trees.items():
        if not (tree / "configs/adashare/ixi.yaml").exists():
            raise SystemExit(f"{tree}: not a sharewise checkout")
        data = tree.parent / "shared" / "data" / "ixi"
        if not data.exists():
            raise SystemExit(f"{data}: the IXI data is missing (the config reads ../shared/data/ixi from the tree)")
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for rep in range(args.reps):
        for name in (list(trees) if rep % 2 == 0 else list(trees)[::-1]):
            runs[name].append(one_run(trees[name], args.out_root / name))
            print(f"{name}: {runs[name][-1]['wall_s']:.1f} s wall, {runs[name][-1]['cpu_s']:.1f} s CPU "
                  f"(all processes); timeline {runs[name][-1]['timeline_s']}", flush=True)
    result = {"date": dt.date.today().isoformat(), "command": "sharewise " + shlex.join(ARGS + ["--out", "DIR"]),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
              "machine": {"platform": platform.platform(), "processor": platform.machine()}, "runs": runs,
              "before_tree": str(args.before) if args.before else None}
    if args.profile:
        folder = args.out_root / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        result["profile"] = profiled_run(REPO, folder / "run", folder)
        for r, rank in enumerate(result["profile"]):
            print(f"rank {r}: {rank['cpu_s']:.1f} s CPU; " + ", ".join(f"{k} {v:.1f}" for k, v in rank["parts_cpu_s"].items()))
    write_json(result, args.out)
    if not args.no_record:
        figures = {}
        for name, reps in runs.items():
            figures[f"{name}.wall_s.min"] = min(r["wall_s"] for r in reps)
            figures[f"{name}.cpu_s.min"] = min(r["cpu_s"] for r in reps)
        record_benchmark("speed", "ixi-tiny", result, figures, threads=1, script="ixi_tiny.py", argv=None)  # one per process


if __name__ == "__main__":
    main()
