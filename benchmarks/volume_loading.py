"""Volume-loading throughput with and without the cache of preprocessed volumes.

Three stores over the same subjects and preprocessing (``configs/adashare/ixi.yaml`` by default:
IXI T1 NIfTI, Otsu-masked z-score, resized to 48³):

- ``none``: every access reads the ``.nii.gz`` file, applies the scale factors, reorients,
  normalises and resizes (what an epoch costs without a cache, and the first epoch with one);
- ``memory``: the in-memory cache, warmed by one pass (every later epoch of a run);
- ``disk``: the on-disk cache (one ``.npy`` per volume), warmed by one pass, read through a fresh
  store as a later run would.

Each repetition times one pass over the subjects in batches (volumes per second) for every
condition, in an order rotated from one repetition to the next (alternating, so that a slow spell
of a shared machine does not fall on one condition); the table reports the median over the
repetitions and the ratios of the medians, all measured in this one run.

Run from the repository root::

    .venv/bin/python benchmarks/volume_loading.py [--subjects 48] [--reps 5] [--threads 1]

Prints a table and writes ``benchmarks/results/volume_loading.json``.

``--monai`` instead compares today's reading (nibabel: ``read_volume``) with MONAI's
(``LoadImage`` with its nibabel reader, ``EnsureChannelFirst``, ``Orientation("RAS")``), both
followed by the same preprocessing and uncached, alternating in one run, in volumes per second of
this process's CPU time (so that other processes on a shared machine do not move it); it checks that both give
the same arrays and records ``loading/volumes-monai`` (MONAI is not a dependency: install it
first, e.g. ``pip install monai``). MONAI has no Otsu-masked normalisation, so only the reading
and reorientation can move to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sharewise.config import load_config
from sharewise.data import build_data
from _results import record_benchmark, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RESULTS = Path(__file__).resolve().parent / "results" / "volume_loading.json"
CONDITIONS = ("none", "memory", "disk")


def build_store(config: str, cache: str, cache_dir: str, extra: list[str]):
    overrides = [f"data.cache={cache}", *extra]
    if cache == "disk":
        overrides.append(f"data.cache_dir={cache_dir}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_data(load_config(config, overrides)).data.examples


def one_pass(examples, index: np.ndarray, batch: int) -> float:
    """Volumes per second for one pass over ``index``."""
    start = time.perf_counter()
    for k in range(0, len(index), batch):
        x = examples.get_inputs(index[k:k + batch])
        assert torch.isfinite(x[:, :, ::8, ::8, ::8]).all()
    return len(index) / (time.perf_counter() - start)


def monai_reader():
    """``read_volume``'s equivalent through MONAI: (C, D, H, W) float32, reoriented to RAS."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    load = Compose([LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32),
                    EnsureChannelFirst(), Orientation(axcodes="RAS")])
    return lambda path: np.ascontiguousarray(np.asarray(load(path), dtype=np.float32))


def compare_monai(args) -> None:
    """Today's reading against MONAI's, the same preprocessing after both, uncached, alternating."""
    from sharewise.data.volume import read_volume

    start = time.process_time()
    read_monai = monai_reader()
    import_s = time.process_time() - start
    import monai

    cache = build_store(args.config, "none", "", args.overrides).inputs.cache
    paths = cache.paths[:args.subjects]
    prep = cache.prep
    readers = {"nibabel": lambda p: prep(read_volume(p, canonical=prep.canonical), p),
               "monai": lambda p: prep(read_monai(p), p)}
    max_diff = max(float(np.abs(readers["nibabel"](p) - readers["monai"](p)).max()) for p in paths)
    rates: dict[str, list[float]] = {k: [] for k in readers}
    for rep in range(args.reps):
        for name in (list(readers) if rep % 2 == 0 else list(readers)[::-1]):
            begin = time.process_time()  # CPU time: the machine may be shared
            for p in paths:
                readers[name](p)
            rates[name].append(len(paths) / (time.process_time() - begin))
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {"date": dt.date.today().isoformat(), "config": args.config, "overrides": args.overrides,
              "subjects": len(paths), "reps": args.reps, "threads": args.threads, "monai": monai.__version__,
              "machine": {"platform": platform.platform(), "torch": torch.__version__},
              "volumes_per_s": {k: {"median": median[k], "all": rates[k]} for k in readers},
              "monai_vs_nibabel": median["monai"] / median["nibabel"], "max_abs_difference": max_diff,
              "monai_import_cpu_s": import_s}
    print(f"{len(paths)} volumes, {args.reps} alternating repetitions, {args.threads} thread(s); "
          f"largest difference between the two: {max_diff:g}; importing MONAI: {import_s:.1f} s CPU")
    for k in readers:
        print(f"{k:<8} {median[k]:>8.1f} volumes per CPU second (median; {min(rates[k]):.1f} – {max(rates[k]):.1f})")
    print(f"monai / nibabel: {result['monai_vs_nibabel']:.2f}")
    if not args.no_record:
        figures = {"nibabel.median": median["nibabel"], "monai.median": median["monai"],
                   "monai_vs_nibabel": result["monai_vs_nibabel"], "max_abs_difference": max_diff,
                   "monai_import_cpu_s": import_s}
        record_benchmark("loading", "volumes-monai", result, figures, threads=args.threads,
                         script="volume_loading.py", argv=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adashare/ixi.yaml")
    parser.add_argument("--subjects", type=int, default=48, help="volumes per pass (the first ones of the table)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--no-record", action="store_true", help="do not store a run record (benchmarks/results/runs/loading/)")
    parser.add_argument("--monai", action="store_true", help="compare today's reading with MONAI's (needs monai)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.monai:
        compare_monai(args)
        return
    with tempfile.TemporaryDirectory(prefix="sharewise-volume-cache-") as cache_dir:
        stores = {c: build_store(args.config, c, cache_dir, args.overrides) for c in CONDITIONS}
        index = np.arange(min(args.subjects, len(stores["none"])))
        warm = {c: one_pass(stores[c], index, args.batch) for c in ("memory", "disk")}  # fill both caches
        stores["disk"] = build_store(args.config, "disk", cache_dir, args.overrides)  # a later run's store
        rates: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        for rep in range(args.reps):
            order = CONDITIONS[rep % 3:] + CONDITIONS[:rep % 3]
            for c in order:
                rates[c].append(one_pass(stores[c], index, args.batch))
        reads = {c: stores[c].inputs.cache.reads for c in CONDITIONS}
    median = {c: statistics.median(rates[c]) for c in CONDITIONS}
    shape = list(stores["none"].inputs.shape)
    result = {
        "date": dt.date.today().isoformat(), "config": args.config, "overrides": args.overrides,
        "subjects": len(index), "batch": args.batch, "reps": args.reps, "threads": args.threads,
        "volume_shape": shape, "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                           "torch": torch.__version__},
        "volumes_per_s": {c: {"median": median[c], "all": rates[c]} for c in CONDITIONS},
        "ratio_vs_none": {c: median[c] / median["none"] for c in CONDITIONS},
        "warm_up_pass_volumes_per_s": warm,
        "decodes_during_timed_passes": {c: reads[c] - (len(index) if c == "memory" else 0) for c in CONDITIONS},
    }
    print(f"{len(index)} volumes → {shape}, batches of {args.batch}, {args.reps} alternating repetitions, "
          f"{args.threads} thread(s)")
    print(f"{'cache':<8} {'volumes/s (median)':>19} {'min':>8} {'max':>8} {'× none':>8}")
    for c in CONDITIONS:
        print(f"{c:<8} {median[c]:>19.1f} {min(rates[c]):>8.1f} {max(rates[c]):>8.1f} {result['ratio_vs_none'][c]:>8.1f}")
    write_json(result, args.out)
    if not args.no_record:
        figures = {f"{c}.{k}": v for c in CONDITIONS
                   for k, v in (("median", median[c]), ("ratio_vs_none", result["ratio_vs_none"][c]))}
        record_benchmark("loading", "volumes", result, figures, threads=args.threads, script="volume_loading.py", argv=None)


if __name__ == "__main__":
    main()
