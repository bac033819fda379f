"""One function per command; each validates, then calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .main import config_from_args


def _ctx(args: argparse.Namespace):
    from ..engine.runner import prepare

    return prepare(config_from_args(args))


def _print_results(results: dict) -> None:
    for name, t in results["tasks"].items():
        metric = t["primary_metric"]
        print(f"  {name:<20} {t['kind']:<12} test {metric} = {t['test'].get(metric, float('nan')):.4f}")


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.runner import train

    ctx = _ctx(args)
    sel = train(ctx, overwrite=args.overwrite, resume=args.resume)
    print(f"sharewise: trained {ctx.cfg.method.name} in {ctx.run_dir} (validation score {sel['score']:.4f})")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from ..engine.runner import test

    ctx = _ctx(args)
    results = test(ctx, overwrite=args.overwrite)
    print(f"sharewise: tested {ctx.run_dir}")
    _print_results(results)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..engine.runner import run

    ctx = _ctx(args)
    results = run(ctx, overwrite=args.overwrite, resume=args.resume)
    print(f"sharewise: finished {ctx.cfg.method.name} in {ctx.run_dir} (report.md, results.json)")
    _print_results(results)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import methods

    for name, cls in methods().items():
        print(f"{name:<14} {cls.description}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..data.sources import sources

    print("built-in datasets (no file needed):")
    from ..data.builtin import BUILTIN

    for name, info in BUILTIN.items():
        print(f"  {name:<12} {info['description']}")
    print("data sources (data.source) and file formats:")
    for name, info in sources().items():
        print(f"  {name:<12} {info.formats:<28} {info.description}")
    sys.stdout.flush()
    return 0


