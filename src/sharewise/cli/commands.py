"""One function per command; each validates, then calls the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .main import config_from_args


def launch_if_needed(args: argparse.Namespace) -> int | None:
    """Several processes asked for (``--procs N`` or several ``--gpus``) and not yet inside a
    process group: start them (one per device) with this same command line, and return the exit
    code; ``None`` when this process should do the work itself."""
    from ..engine import distributed as D
    from ..errors import ConfigError

    if D.launched_world_size() > 1:
        return None
    cfg = config_from_args(args)
    gpus, procs = cfg.train.gpus, cfg.train.procs
    if len(gpus) > 1 and procs > 1:
        raise ConfigError("train.procs: give either several --gpus (one process each) or --procs N on the CPU, not both")
    n = len(gpus) if len(gpus) > 1 else procs
    if n <= 1:
        return None
    if len(gpus) > 1:
        from ..engine.device import resolve_device

        resolve_device(gpus)  # a missing GPU id fails here, once, before any process starts
    _check_before_launch(args, cfg)
    return D.launch(args.argv, n, gpus)


def _check_before_launch(args: argparse.Namespace, cfg) -> None:
    """Every input error of the command, found here once (one line, as fast as in one process)
    rather than by each started process after it has started."""
    from ..api import load_reference
    from ..engine.runner import check_before_launch

    allowed = _allowed_changes(args) if args.command != "test" else []
    reference, source = load_reference(getattr(args, "reference", None))
    check_before_launch(cfg, command=args.command, overwrite=args.overwrite, resume=getattr(args, "resume", False),
                        allow_changed=allowed, seeds=args.seeds if args.command == "run" else None,
                        reference=reference, reference_source=source)


def _ctx(args: argparse.Namespace, cfg=None):
    from ..api import load_reference
    from ..engine.runner import prepare

    reference, source = load_reference(getattr(args, "reference", None))
    return prepare(cfg or config_from_args(args), reference=reference, reference_source=source,
                   keep_host_memory_default=True)


def _allowed_changes(args: argparse.Namespace) -> list[str]:
    """``--allow-changed KEY ...``: only meaningful with ``--resume``."""
    from ..errors import UsageError

    keys = list(getattr(args, "allow_changed", None) or [])
    if keys and not args.resume:
        raise UsageError("--allow-changed: only with --resume (it names config keys a resumed run may change)")
    return keys


def _print_results(results: dict) -> None:
    for name, t in results["tasks"].items():
        metric = t["primary_metric"]
        print(f"  {name:<20} {t['kind']:<12} test {metric} = {t['test'].get(metric, float('nan')):.4f}")


def _print_selection(ctx, sel: dict, verb: str) -> None:
    if sel["selected"] is None:
        later = " / ".join(f"`sharewise {s}`" for s in ctx.method.stages[1:])
        print(f"sharewise: {verb} {ctx.cfg.method.name} in {ctx.run_dir}; next: {later}")
    else:
        print(f"sharewise: {verb} {ctx.cfg.method.name} in {ctx.run_dir} (selected {sel['selected']}, "
              f"validation score {sel['score']:.4f})")


def cmd_train(args: argparse.Namespace) -> int:
    """The method's first stage (all of it for single-stage methods; AdaShare: warm-up and search)."""
    from ..engine.runner import train

    allowed = _allowed_changes(args)
    ctx = _ctx(args)
    sel = train(ctx, overwrite=args.overwrite, resume=args.resume, stage=ctx.method.stages[0], allow_changed=allowed)
    _print_selection(ctx, sel, "trained")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from ..engine.runner import retrain

    allowed = _allowed_changes(args)
    ctx = _ctx(args)
    sel = retrain(ctx, overwrite=args.overwrite, resume=args.resume, allow_changed=allowed)
    _print_selection(ctx, sel, "re-trained")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from ..engine.runner import test

    ctx = _ctx(args)
    results = test(ctx, overwrite=args.overwrite)
    print(f"sharewise: tested {ctx.run_dir}")
    _print_results(results)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..engine.runner import run, run_seeds

    allowed = _allowed_changes(args)
    if args.seeds:
        cfg = config_from_args(args)
        summary = run_seeds(cfg, args.seeds, make_context=lambda c: _ctx(args, c), overwrite=args.overwrite,
                            resume=args.resume, allow_changed=allowed)
        print(f"sharewise: {len(args.seeds)} seeds in {cfg.run_dir()} (seeds.md, seeds.json)")
        for task, metrics in summary["tasks"].items():
            m = metrics["primary_metric"]
            v = metrics["test"][m]
            print(f"  {task:<20} test {m} = {v['mean']:.4f} ± {v['sd']:.4f} (n = {v['n']})")
        return 0
    ctx = _ctx(args)
    results = run(ctx, overwrite=args.overwrite, resume=args.resume, allow_changed=allowed)
    print(f"sharewise: finished {ctx.cfg.method.name} in {ctx.run_dir} (report.md, results.json)")
    _print_results(results)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress,
             keep_host_memory_default=True)
    return 0


PREDICTION_FORMATS = (".csv", ".tsv", ".parquet")  # predict --out: the format follows the extension


def cmd_predict(args: argparse.Namespace) -> int:
    from ..api import Run
    from ..files import atomic_write_bytes
    from ..errors import RunDirError, UsageError

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in PREDICTION_FORMATS:
        raise UsageError(f"--out {out}: unsupported predictions format {suffix or '(no extension)'!r}; "
                         f"use {', '.join(PREDICTION_FORMATS[:-1])} or {PREDICTION_FORMATS[-1]}")
    if out.exists() and not args.overwrite:
        raise RunDirError(f"{out} exists; use --overwrite to replace it")
    run = Run(args.run_dir)
    data_cfg = run.config.data
    skip_rows = args.skip_rows
    if skip_rows is None and data_cfg.test_path and Path(args.data).resolve() == Path(data_cfg.test_path).resolve():
        skip_rows = data_cfg.test_skip_rows
    predictions = run.predict(args.data, source=str(args.data), root=args.root, image_col=args.image_col,
                              join_paths=args.join_data, skip_rows=skip_rows)
    if suffix == ".parquet":
        import io

        buf = io.BytesIO()
        predictions.to_parquet(buf, index=False)
        atomic_write_bytes(out, buf.getvalue())
    else:
        atomic_write_bytes(out, predictions.to_csv(index=False, sep="\t" if suffix == ".tsv" else ",").encode())
    print(f"sharewise: {len(predictions)} predictions -> {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..errors import RunDirError
    from ..export import export_run

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise RunDirError(f"{out} exists; use --overwrite to replace it")
    info = export_run(args.run_dir, out, program=not args.no_program)
    print(f"sharewise: exported {info['parameters']} parameters ({info['bytes']} bytes) -> {out}"
          + (f"; torch.export program -> {info['program']}" if info["program"] else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One run: its ``report.md`` (in the run, or under ``--out``). Several: one comparison under
    ``--out``, the runs themselves only read."""
    from ..api import load_reference
    from ..errors import UsageError
    from ..report import write_comparison, write_report

    runs = [Path(r) for r in args.runs]
    if len(runs) == 1:
        if args.reference:
            raise UsageError("--reference: only when comparing several runs (a single run's Δ_MTL is set by "
                             "`sharewise run --reference`)")
        print(f"sharewise: report -> {write_report(runs[0], Path(args.out) if args.out else None)}")
        return 0
    reference, source = load_reference(args.reference)
    out = Path(args.out) if args.out else runs[0].parent / "comparison"
    print(f"sharewise: comparison -> {write_comparison(runs, out, reference=reference, reference_source=source)}")
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


