"""TAAN's two speed targets, as ratios in one run (TAAN specification §5; issue 21):

- **TFRecord reading**: the shipped Youtube-8M sample (10 shards, 2 950 records), read and parsed into
  `id`, `labels`, `mean_rgb`, `mean_audio` by `sharewise.data.tfrecord` with both CRC-32C checks of
  every record, against the `tfrecord` package from PyPI (which skips the CRCs) where it is
  importable (`pip install --target DIR tfrecord` and `--tfrecord-path DIR`); records/s and the ratio.
- **TAL step**: forward + backward of a `TALLinear` (per-task activation with M hinges) against an
  `nn.Linear` + ReLU of the same width, on a shared input for T tasks (the affine part once, the
  activation per task, as in TAAN's Youtube-8M trunk) and for one task; target TAL ≤ 2× at 64 hinges.

Timing as adashare_speed.py (blocks of ~30 ms, variants alternating in a seeded order, medians).

    python benchmarks/taan_speed.py [--threads 2] [--reps 9] [--tfrecord-path /tmp/tfr_site] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import sharewise.data.tfrecord as tfrecord_module
from sharewise.data.tfrecord import expand_paths, read_examples
from sharewise.layers.tal import TALLinear

from _results import record_benchmark, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from adashare_speed import compare  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yt8m"


def read_ours(paths: list[Path]) -> int:
    n = 0
    for _, _, features in read_examples(paths, verify=True):
        n += len(features["mean_rgb"][1]) > 0
    return n


def read_tfrecord_package(paths: list[Path]) -> int:
    from tfrecord.reader import tfrecord_loader

    description = {"id": "byte", "labels": "int", "mean_rgb": "float", "mean_audio": "float"}
    n = 0
    for path in paths:
        for example in tfrecord_loader(str(path), None, description):
            n += len(example["mean_rgb"]) > 0
    return n


def best_of(fn, reps: int) -> tuple[float, int]:
    """(the fastest of ``reps`` whole passes in seconds, records per pass)."""
    times, n = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - start)
    return min(times), n


def reading_case(data: Path, reps: int) -> dict:
    paths = expand_paths(str(data / "*.tfrecord"))
    out: dict = {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths)}
    default = tfrecord_module._NATIVE
    tfrecord_module._NATIVE = None  # the numpy CRC-32C of an install without the optional extra
    seconds, n = best_of(lambda: read_ours(paths), reps)
    out["sharewise"] = {"seconds": seconds, "records": n, "records_per_s": n / seconds, "crc_checked": True,
                        "crc32c": "numpy"}
    native = default or tfrecord_module._native_crc32c()  # importable now if --tfrecord-path brought crc32c
    tfrecord_module._NATIVE = native
    if native is not None:
        seconds, n = best_of(lambda: read_ours(paths), reps)
        out["sharewise_native_crc"] = {"seconds": seconds, "records": n, "records_per_s": n / seconds,
                                       "crc_checked": True, "crc32c": "native"}
    tfrecord_module._NATIVE = default
    try:
        import tfrecord  # noqa: F401
    except ImportError:
        out["tfrecord_package"] = None
        return out
    seconds, m = best_of(lambda: read_tfrecord_package(paths), reps)
    out["tfrecord_package"] = {"seconds": seconds, "records": m, "records_per_s": m / seconds, "crc_checked": False}
    out["speedup"] = out["tfrecord_package"]["seconds"] / out["sharewise"]["seconds"]
    return out


def tal_case(width: int, tasks: int, hinges: int, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, width)
    tal = TALLinear(width, width, tasks, num_basis=hinges)
    linear = nn.Linear(width, width)

    def tal_step():
        out = tal(x)  # (B, T, width) for every task: the affine part once, the activation per task
        out.sum().backward()

    def linear_step():
        # the same work for a plain layer: one affine part, one ReLU per task (as T heads would read it)
        z = linear(x)
        torch.relu(z).unsqueeze(1).expand(-1, tasks, -1).sum().backward()

    timing = compare({"tal": tal_step, "linear_relu": linear_step}, reps, torch.device("cpu"))
    ratio = timing["tal"]["median_s"] / timing["linear_relu"]["median_s"]
    return {"width": width, "tasks": tasks, "hinges": hinges, "batch": batch, "timing": timing, "tal_over_linear": ratio}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--tfrecord-path", help="a folder holding the `tfrecord` package (pip install --target)")
    ap.add_argument("--out", default="benchmarks/results/taan_speed.json")
    ap.add_argument("--no-record", action="store_true", help="do not store a run record (benchmarks/results/runs/speed/)")
    args = ap.parse_args(argv)
    if args.tfrecord_path:
        sys.path.insert(0, args.tfrecord_path)
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "reps": args.reps, "torch": torch.__version__}
    result["reading"] = reading_case(Path(args.data), max(3, args.reps // 3))
    r = result["reading"]
    native = r.get("sharewise_native_crc")
    print(f"TFRecord: {r['files']} files, {r['bytes'] / 2**20:.1f} MiB; sharewise {r['sharewise']['records_per_s']:,.0f} "
          f"records/s (CRCs checked, numpy CRC-32C)"
          + (f", {native['records_per_s']:,.0f} with a native CRC-32C" if native else "")
          + (f", tfrecord package {r['tfrecord_package']['records_per_s']:,.0f} records/s "
                                         f"(no CRC): {r['speedup']:.2f}x" if r.get("tfrecord_package") else
                                         ", tfrecord package not importable"))
    result["tal"] = []
    for width in (256, 1024):
        for tasks in (1, 16):
            c = tal_case(width, tasks, 64, 64, args.reps)
            result["tal"].append(c)
            print(f"TAL H={width} T={tasks:>2} M=64: {1e3 * c['timing']['tal']['median_s']:.2f} ms, Linear+ReLU "
                  f"{1e3 * c['timing']['linear_relu']['median_s']:.2f} ms: {c['tal_over_linear']:.2f}x")
    write_json(result, args.out)
    if not args.no_record:
        figures = {"reading.sharewise.records_per_s": r["sharewise"]["records_per_s"]}
        if r.get("sharewise_native_crc"):
            figures["reading.sharewise_native_crc.records_per_s"] = r["sharewise_native_crc"]["records_per_s"]
        if r.get("tfrecord_package"):
            figures.update({"reading.tfrecord_package.records_per_s": r["tfrecord_package"]["records_per_s"],
                            "reading.speedup": r["speedup"]})
        for c in result["tal"]:
            figures[f"tal.{c['width']}.{c['tasks']}.ratio"] = c["tal_over_linear"]
        record_benchmark("speed", "taan", result, figures, threads=args.threads, script="taan_speed.py", argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
