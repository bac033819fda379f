"""Reference predictors for UCI Adult, on the official test file.

Each categorical task: the majority class of the training split (accuracy); age: the median of
the training split (MAE, years). The data, split and label clean-up are exactly those of
``configs/tables/adult.yaml`` (read through :func:`sharewise.data.build_data`).

Run from the repository root::

    .venv/bin/python benchmarks/adult_baselines.py [--config configs/tables/adult.yaml]

Prints a table and writes ``benchmarks/results/adult_baselines.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sharewise.config import load_config
from sharewise.data import build_data
from _results import write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RESULTS = Path(__file__).resolve().parent / "results" / "adult_baselines.json"


def reference_predictors(config: str) -> dict:
    data = build_data(load_config(config)).data
    train, test = data.splits["train"], data.splits["test"]
    out = {"config": config, "split_sizes": {"train": len(train), "test": len(test)}, "tasks": {}}
    for task in data.tasks:
        y = data.examples.targets[task.name].numpy().astype(np.float64 if task.kind == "numerical" else np.int64)
        known = data.examples.masks[task.name].numpy()
        y_train, y_test = y[train][known[train]], y[test][known[test]]
        if task.kind == "categorical":
            counts = np.bincount(y_train, minlength=len(task.classes))
            majority = int(counts.argmax())
            out["tasks"][task.name] = {
                "predictor": "majority class of the training split", "prediction": task.classes[majority],
                "metric": "accuracy", "test": float((y_test == majority).mean()), "n_test": int(len(y_test)),
            }
        else:
            y_train, y_test = y_train * task.std + task.mean, y_test * task.std + task.mean  # original units
            median = float(np.median(y_train))
            out["tasks"][task.name] = {
                "predictor": "median of the training split", "prediction": median,
                "metric": "mae", "test": float(np.abs(y_test - median).mean()), "n_test": int(len(y_test)),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tables/adult.yaml")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    result = reference_predictors(args.config)
    print(f"{'task':<16} {'predictor':<38} {'prediction':<20} {'test metric':<12} value")
    for name, t in result["tasks"].items():
        pred = f"{t['prediction']:.1f}" if isinstance(t["prediction"], float) else str(t["prediction"])
        print(f"{name:<16} {t['predictor']:<38} {pred:<20} {t['metric']:<12} {t['test']:.4f}")
    write_json(result, args.out)


if __name__ == "__main__":
    main()
