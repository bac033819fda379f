"""Trivial predictors for IXI age and sex, on the same seeded test splits as the sharewise runs.

Age: the median age of the training split (MAE, years); Sex: the majority sex of the training
split (accuracy). The split of each seed is the one sharewise makes for the IXI configs
(``configs/tables/ixi_regional.yaml`` and ``configs/adashare/ixi.yaml`` give the same one: it
depends on the rows and targets only), built here through :func:`sharewise.data.build_data`;
targets are read from ``participants.csv`` in their original units.

``--runs`` checks that every given run directory (with ``seed_<s>/split.csv`` from ``--seeds``,
or a ``split.csv`` of its own for the seed its ``config.yaml`` names) holds exactly that split, so all the figures compared
in docs/benchmarks.md come from the same subjects.

Run from the repository root::

    .venv/bin/python benchmarks/ixi_baselines.py --seeds 0 1 2 [--runs runs/ixi-hard runs/ixi-regional ...]
    .venv/bin/python benchmarks/ixi_baselines.py --seeds 0 1 2 --runs /tmp/sw-bench/ixi/*   # one-seed runs

Prints a table and writes ``benchmarks/results/ixi_baselines.json``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pandas as pd

from sharewise.config import load_config
from sharewise.data import build_data
from sharewise.metrics import mean_sd
from _results import write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RESULTS = Path(__file__).resolve().parent / "results" / "ixi_baselines.json"


def split_of(config: str, seed: int) -> dict[str, str]:
    data = build_data(load_config(config, [f"train.seed={seed}"])).data
    return {str(r["id"]): r["split"] for r in data.split_table()}


def read_split_csv(path: Path) -> dict[str, str]:
    with path.open(newline="") as fh:
        return {row["id"]: row["split"] for row in csv.DictReader(fh)}


def trivial_predictors(table: pd.DataFrame, split: dict[str, str]) -> dict:
    rows = table.loc[list(split)]
    where = np.array([split[i] for i in rows.index])
    train, test = rows[where == "train"], rows[where == "test"]
    median_age = float(np.median(train["Age"]))
    counts = train["Sex"].value_counts()
    majority = sorted(counts[counts == counts.max()].index)[0]
    return {
        "n": {"train": len(train), "test": len(test)},
        "Age": {"predictor": "median age of the training split", "prediction": median_age,
                "mae": float(np.abs(test["Age"] - median_age).mean())},
        "Sex": {"predictor": "majority sex of the training split", "prediction": majority,
                "accuracy": float((test["Sex"] == majority).mean())},
    }


def _run_seed(run: Path) -> int | None:
    """The seed of a one-seed run directory (its config.yaml's train.seed)."""
    import yaml

    config = run / "config.yaml"
    if not config.exists():
        return None
    return (yaml.safe_load(config.read_text()).get("train") or {}).get("seed")


def check_runs(runs: list[str], seeds: list[int], splits: dict[int, dict[str, str]]) -> dict[str, str]:
    report = {}
    for run in runs:
        own = _run_seed(Path(run)) if (Path(run) / "split.csv").exists() else None
        for seed in seeds if own is None else [own]:
            path = Path(run) / f"seed_{seed}" / "split.csv"
            if own is not None or (not path.exists() and len(seeds) == 1):
                path = Path(run) / "split.csv"
            if seed not in splits:
                report[str(path)] = f"seed {seed} not among --seeds"
                continue
            if not path.exists():
                report[str(path)] = "missing"
                continue
            theirs = read_split_csv(path)
            ours = splits[seed]
            if theirs == ours:
                report[str(path)] = f"identical ({len(ours)} subjects)"
            else:
                shared = set(theirs) & set(ours)
                diff = sum(theirs[i] != ours[i] for i in shared)
                report[str(path)] = (f"DIFFERENT: {diff} of {len(shared)} shared subjects in another split, "
                                     f"{len(set(theirs) ^ set(ours))} not shared")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tables/ixi_regional.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", nargs="*", default=[], help="run directories whose split.csv must match")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    cfg = load_config(args.config)
    table = pd.read_csv(cfg.data.path).set_index("MRID")
    splits = {s: split_of(args.config, s) for s in args.seeds}
    per_seed = {s: trivial_predictors(table, splits[s]) for s in args.seeds}
    summary = {}
    for task, metric in (("Age", "mae"), ("Sex", "accuracy")):
        mean, sd, n = mean_sd([per_seed[s][task][metric] for s in args.seeds])
        summary[task] = {"metric": metric, "mean": mean, "sd": sd, "n": n}
    result = {"config": args.config, "seeds": args.seeds, "per_seed": {str(s): v for s, v in per_seed.items()},
              "mean_sd": summary, "split_check": check_runs(args.runs, args.seeds, splits)}
    print(f"{'seed':<6} {'n train/test':<14} {'median age':<11} {'age MAE':<9} {'majority':<9} sex accuracy")
    for s, r in per_seed.items():
        print(f"{s:<6} {r['n']['train']}/{r['n']['test']:<11} {r['Age']['prediction']:<11.2f} {r['Age']['mae']:<9.3f} "
              f"{r['Sex']['prediction']:<9} {r['Sex']['accuracy']:.4f}")
    a, x = summary["Age"], summary["Sex"]
    print(f"mean ± sd (n = {a['n']}): age MAE {a['mean']:.3f} ± {a['sd']:.3f}, sex accuracy {x['mean']:.4f} ± {x['sd']:.4f}")
    for path, verdict in result["split_check"].items():
        print(f"split {path}: {verdict}")
    write_json(result, args.out)


if __name__ == "__main__":
    main()
