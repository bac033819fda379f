"""Image data-loading throughput (images/s) with and without the decoded-image cache.

Iterates the training split of Omniglot (the parameter-allocation 20 alphabets by default) in
shuffled per-task batches, exactly as the engine does, and times one epoch per variant:

- ``none``: ``cache: none``, every batch decodes its PNGs from the zip (Pillow) again;
- ``memory``: ``cache: memory`` (the default) once warm: a fancy index into a uint8 array;
- ``disk``: ``cache: disk`` once warm: the same from a ``.npy`` memory map.

Each repetition runs the variants one after the other (alternating, so drift and neighbours'
load hit them alike); the table gives the median over repetitions and the ratio of medians,
all measured in this one process. Usage::

    .venv/bin/python benchmarks/image_loading.py --data /work/shared/data/omniglot --reps 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sharewise.config import validate_config
from sharewise.data import build_data
from _results import record_benchmark, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def load(data_dir: str, cache: str, image_size: int | None, cache_dir: str, alphabets: str):
    data = {"source": "omniglot", "path": data_dir, "alphabets": alphabets, "cache": cache, "cache_dir": cache_dir,
            "normalize": "none"}
    if image_size:
        data["image_size"] = image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_data(validate_config({"data": data})).data


def epoch(data, batch_size: int, seed: int) -> tuple[int, float]:
    """Images delivered and seconds for one training epoch of per-task batches."""
    n = 0
    start = time.perf_counter()
    for batch in data.batches("train", batch_size, shuffle=True, seed=seed, augment=False):
        n += sum(x.shape[0] for x, _, _ in batch.values())
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
    ap.add_argument("--alphabets", default="parameter_allocation")
    ap.add_argument("--image-size", type=int, default=28, help="0: native 105x105")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "image_loading.json"))
    ap.add_argument("--no-record", action="store_true", help="do not store a run record (benchmarks/results/runs/loading/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = args.image_size or None
    with tempfile.TemporaryDirectory() as cache_dir:
        variants = {name: load(args.data, name, size, cache_dir, args.alphabets) for name in ("none", "memory", "disk")}
        cold = {name: epoch(variants[name], args.batch_size, seed=100) for name in ("memory", "disk")}  # fill
        times: dict[str, list[float]] = {name: [] for name in variants}
        counts: dict[str, int] = {}
        for rep in range(args.reps):
            for name, data in variants.items():
                n, sec = epoch(data, args.batch_size, seed=rep)
                times[name].append(sec)
                counts[name] = n
    med = {name: statistics.median(v) for name, v in times.items()}
    rate = {name: counts[name] / med[name] for name in med}
    rows = [{"variant": name, "images_per_epoch": counts[name], "median_s": med[name], "images_per_s": rate[name],
             "speedup_vs_none": med["none"] / med[name], "all_s": times[name]} for name in times]
    print(f"image loading, Omniglot {args.alphabets} ({counts['none']} training images per epoch, "
          f"{'native 105x105' if not size else f'{size}x{size}'}, batch {args.batch_size} per task, "
          f"{args.reps} repetitions, {args.threads} thread(s))")
    print(f"{'cache':<8} {'median s/epoch':>15} {'images/s':>12} {'x vs none':>10}")
    for r in rows:
        print(f"{r['variant']:<8} {r['median_s']:>15.3f} {r['images_per_s']:>12,.0f} {r['speedup_vs_none']:>10.1f}")
    print(f"first (cold) epoch that fills the cache: memory {cold['memory'][1]:.3f} s, disk {cold['disk'][1]:.3f} s")
    result = {
        "benchmark": "image_loading", "date": dt.date.today().isoformat(),
        "setup": {"data": args.data, "alphabets": args.alphabets, "image_size": size or 105,
                  "batch_size_per_task": args.batch_size, "reps": args.reps, "threads": args.threads,
                  "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "cold_epoch_s": {k: v[1] for k, v in cold.items()},
        "rows": rows,
        "ratio_memory_vs_none": med["none"] / med["memory"],
        "ratio_disk_vs_none": med["none"] / med["disk"],
    }
    write_json(result, args.out)
    if not args.no_record:
        figures = {f"{r['variant']}.{k}": r[k] for r in rows for k in ("median_s", "speedup_vs_none")}
        record_benchmark("loading", "images", result, figures, threads=args.threads, script="image_loading.py", argv=None)


if __name__ == "__main__":
    main()
