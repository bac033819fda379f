"""AdaShare against `hard` and `independent` on one data set, over several seeds.

For every seed it runs, with the CLI and one AdaShare config (the other methods replace its
``method`` section, so data, split, backbone and training budget are identical)::

    sharewise run --config C --set 'method={name: independent}' --seed S --out OUT/independent-sS
    sharewise run --config C --set 'method={name: hard}'        --seed S --out OUT/hard-sS --reference OUT/independent-sS
    sharewise run --config C                                    --seed S --out OUT/adashare-sS --reference OUT/independent-sS

(``--reference``: Δ_MTL against the same seed's `independent` run, also used as the validation
selection score). Finished runs (a ``results.json``) are reused. Then it writes
``benchmarks/results/adashare_<name>.json`` and prints a markdown summary: per task the test
primary metric, Δ_MTL, parameters and FLOPs, mean ± sample sd over seeds (n stated), and for
AdaShare the search state (τ, curriculum) and the re-trained architectures.

    .venv/bin/python benchmarks/adashare_compare.py --name adult --config configs/adashare/adult.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sharewise.metrics import mean_sd

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("independent", "hard", "adashare")


def run_one(method: str, config: str, seed: int, out: Path, extra: list[str]) -> float | None:
    run_dir = out / f"{method}-s{seed}"
    if (run_dir / "results.json").exists():
        return None
    cmd = [str(ROOT / ".venv" / "bin" / "sharewise"), "run", "--config", config, "--seed", str(seed), "--out", str(run_dir),
           "--overwrite", "--no-progress", *extra]
    if method != "adashare":
        cmd += ["--set", f"method={{name: {method}}}"]
    if method != "independent":
        cmd += ["--reference", str(out / f"independent-s{seed}")]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def fmt(mean: float, sd: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if sd == sd else f"{mean:.{digits}f}"


def summarise(name: str, config: str, seeds: list[int], out: Path, times: dict) -> dict:
    runs = {m: {s: json.loads((out / f"{m}-s{s}" / "results.json").read_text()) for s in seeds} for m in METHODS}
    tasks = list(runs["hard"][seeds[0]]["tasks"])
    summary: dict = {"name": name, "config": config, "seeds": seeds, "n": len(seeds), "out": str(out), "methods": {}}
    for m in METHODS:
        entry: dict = {"tasks": {}, "wall_s": times.get(m, {})}
        for t in tasks:
            prim = runs[m][seeds[0]]["tasks"][t]["primary_metric"]
            entry["tasks"][t] = {"metric": prim, **dict(zip(("mean", "sd", "n"), mean_sd(
                [runs[m][s]["tasks"][t]["test"][prim] for s in seeds])))}
        dm = [runs[m][s].get("delta_mtl") for s in seeds]
        entry["delta_mtl"] = dict(zip(("mean", "sd", "n"), mean_sd(dm))) if any(d is not None for d in dm) else None
        params = [runs[m][s]["parameters"] for s in seeds]
        flops = [runs[m][s]["flops"] for s in seeds]
        entry["parameters_total"] = dict(zip(("mean", "sd", "n"), mean_sd([p["total"] for p in params])))
        entry["flops_all_tasks"] = dict(zip(("mean", "sd", "n"), mean_sd([f["all_tasks"] for f in flops])))
        entry["flops_per_task"] = {t: dict(zip(("mean", "sd", "n"), mean_sd([f["per_task"][t] for f in flops])))
                                   for t in tasks}
        if m == "adashare":
            per_seed = {}
            for s in seeds:
                pol = json.loads((out / f"adashare-s{s}" / "policy.json").read_text())
                res = runs[m][s]
                per_seed[s] = {
                    "cycle": pol["cycle"], "search_cycles": pol["search_cycles"], "temperature": pol["temperature"],
                    "curriculum_complete": pol["curriculum_complete"], "exec_prob": pol["exec_prob"],
                    "selected": res["selection"]["selected"],
                    "architectures": [{k: a[k] for k in ("name", "seed", "policy", "num_removed", "val_score", "selected")}
                                      for a in pol["architectures"]],
                    "over_architectures": {t: res["candidates"]["mean_sd"][t][entry["tasks"][t]["metric"]]
                                           for t in tasks} if res.get("candidates") else None,
                }
            entry["search"] = per_seed
        summary["methods"][m] = entry
    return summary


def markdown(summary: dict) -> str:
    tasks = list(summary["methods"]["hard"]["tasks"])
    lines = [f"Test metrics, mean ± sample sd over seeds {summary['seeds']} (n = {summary['n']}); Δ_MTL against "
             "the same seed's `independent` run.", "",
             "| method | " + " | ".join(f"{t} {summary['methods']['hard']['tasks'][t]['metric']}" for t in tasks)
             + " | Δ_MTL (%) | parameters | FLOPs, all tasks |",
             "|---|" + "---|" * (len(tasks) + 3)]
    for m, e in summary["methods"].items():
        d = e["delta_mtl"]
        lines.append(f"| `{m}` | " + " | ".join(fmt(e["tasks"][t]["mean"], e["tasks"][t]["sd"]) for t in tasks)
                     + f" | {fmt(d['mean'], d['sd'], 2) if d else '–'} | {fmt(e['parameters_total']['mean'], e['parameters_total']['sd'], 0)}"
                     + f" | {fmt(e['flops_all_tasks']['mean'], e['flops_all_tasks']['sd'], 0)} |")
    lines.append("")
    lines.append("FLOPs per task: " + "; ".join(
        f"`{m}` " + ", ".join(f"{t} {e['flops_per_task'][t]['mean']:.0f}" for t in tasks)
        for m, e in summary["methods"].items()))
    lines.append("")
    for s, info in summary["methods"]["adashare"]["search"].items():
        archs = ", ".join(f"{a['name']}" + (" (selected)" if a["selected"] else "") + ": "
                          + " ".join("".join(map(str, a["policy"][t])) for t in tasks)
                          + f", {a['num_removed']} removed" for a in info["architectures"])
        lines.append(f"- seed {s}: policy of cycle {info['cycle']}/{info['search_cycles']}, τ = {info['temperature']:.2f}, "
                     f"curriculum {'complete' if info['curriculum_complete'] else 'INCOMPLETE'}; p_exec "
                     + "; ".join(f"{t} " + "/".join(f"{p:.2f}" for p in info["exec_prob"][t]) for t in tasks)
                     + f". Architectures ({' '.join(tasks)}): {archs}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="root of the run directories (default /tmp/adashare-<name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every run")
    args = parser.parse_args()
    out = Path(args.out or f"/tmp/adashare-{args.name}")
    extra = [x for ov in args.overrides for x in ("--set", ov)]
    times: dict = {m: {} for m in METHODS}
    for seed in args.seeds:
        for m in METHODS:
            t = run_one(m, args.config, seed, out, extra)
            if t is not None:
                times[m][seed] = round(t, 1)
    summary = summarise(args.name, args.config, args.seeds, out, times)
    results = ROOT / "benchmarks" / "results" / f"adashare_{args.name}.json"
    if results.exists():  # keep the timings of runs reused from an earlier call
        old = json.loads(results.read_text())
        for m in METHODS:
            summary["methods"][m]["wall_s"] = {**{int(k): v for k, v in old["methods"].get(m, {}).get("wall_s", {}).items()},
                                               **summary["methods"][m]["wall_s"]}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))
    print(f"\n-> {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
