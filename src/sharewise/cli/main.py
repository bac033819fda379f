"""``sharewise`` command line: a thin layer that parses flags into config keys and calls the library.

Errors caused by the input print one line naming the file, key, column or flag and exit with
code 2 (no traceback unless ``--debug``); argparse's own errors too (no usage block).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ..errors import SharewiseError, UsageError, close_matches

COMMANDS = {
    "train": "run every training phase and record the validation selection (AdaShare: warm-up and policy search)",
    "retrain": "re-train a finished search's candidates, e.g. AdaShare's sampled architectures (--exp-ids 0 1 ...)",
    "test": "evaluate the selected model on the test split once; write results.json",
    "run": "train, test and write the report",
    "demo": "run the built-in demonstration (methods compared on the built-in digits set)",
    "predict": "apply a finished run's selected model to new data (table rows, images, volumes)",
    "report": "regenerate a run's report.md; with several runs, write one comparison under --out",
    "export": "write a finished run's selected model as one compact file (+ a torch.export program)",
    "methods": "list the available methods",
    "datasets": "list the built-in datasets and the supported file formats",
}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one :class:`UsageError` line naming the flag (``main`` prints it,
    without the usage block); ``--help`` is unchanged. Its sub-command parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._flags: list[str] = []  # every option string, for suggesting one in place of an unknown flag
        self._commands: dict[str, _Parser] = {}
        kwargs.setdefault("exit_on_error", False)  # ArgumentErrors reach parse_known_args below
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self._flags.extend(action.option_strings)
        return action

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self._commands = action.choices
        return action

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        typed = list(sys.argv[1:] if args is None else args)
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as err:
            if err.argument_name is None:
                self.error(err.message)
            names = err.argument_name.split("/")  # e.g. --out/-o: the spelling the user typed
            name = next((n for n in names if any(a == n or a.startswith(n + "=") for a in typed)), names[0])
            raise UsageError(f"{name}: {err.message}") from None

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._commands.get(getattr(parsed, "command", None), self)
            raise UsageError(parser.unexpected(extras[0]))
        return parsed

    def unexpected(self, arg: str) -> str:
        """The message for an argument this parser does not take, e.g.
        ``--epohcs: unknown flag (did you mean: --epochs?)``."""
        if arg.startswith("-") and len(arg) > 1:
            flag = arg.split("=", 1)[0]
            return f"{flag}: unknown flag{close_matches(flag, self._flags) or f' (see {self.prog} --help)'}"
        return f"unexpected argument {arg!r} (see {self.prog} --help)"

    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _integer(text: str) -> int:
    """``type=`` of the integer flags, for the message ``--seed: 'minus' is not an integer``."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def _alias(*names: str) -> list[str]:
    """``--cat-target`` and its underscore spelling ``--cat_target``."""
    out = []
    for n in names:
        out.append(n)
        if "-" in n[2:]:
            out.append("--" + n[2:].replace("-", "_"))
    return out


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML configuration file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data", help="data file (sets data.path); format from the extension")
    p.add_argument("--test-data", "--test_data", dest="test_data", help="separate test file (sets data.test_path)")
    p.add_argument(*_alias("--cat-target"), dest="cat_target", nargs="+", metavar="COL", help="categorical target column(s)")
    p.add_argument(*_alias("--num-target"), dest="num_target", nargs="+", metavar="COL", help="numerical target column(s)")
    p.add_argument(*_alias("--id-col"), dest="id_col", help="id column (kept out of the features)")
    p.add_argument(*_alias("--split-col"), dest="split_col", help="column with train/val/test per row")
    p.add_argument(*_alias("--image-col"), dest="image_col",
                   help="column of image paths (sets data.image_col; the inputs are those images)")
    p.add_argument("--method", "-m", help="method name (see `sharewise methods`)")
    p.add_argument("--backbone", help="backbone name (mlp, convnet, resnet2d, resnet3d, ...; default from the data: "
                                      "mlp for tables, convnet for images, resnet3d for volumes)")
    p.add_argument("--budget", type=float, metavar="B",
                   help="gumbel_matrix: allowed expected fraction of active connections (method.budget)")
    p.add_argument(*_alias("--budget-penalty"), dest="budget_penalty", type=float, metavar="L",
                   help="gumbel_matrix: weight of the budget penalty (method.budget_penalty; 0: off)")
    p.add_argument(*_alias("--all-splits"), dest="all_splits", action="store_true", default=None,
                   help="gumbel_matrix, shared_bottom, no_sharing: also evaluate test at every inline evaluation, a "
                        "labelled diagnostic curve never used for selection (method.all_splits)")
    p.add_argument("--seed", type=_integer, help="run seed (train.seed)")
    p.add_argument(*_alias("--exp-name"), dest="exp_name", help="run name: the run directory is runs/<exp-name>")
    p.add_argument("--out", "-o", help="run directory (overrides runs/<exp-name>)")
    p.add_argument("--gpus", nargs="*", type=_integer, metavar="ID", help="GPU ids, one process each (default: CPU)")
    p.add_argument("--procs", type=_integer, metavar="N", help="CPU processes with the gloo backend (train.procs)")
    p.add_argument("--epochs", type=_integer, help="shortcut for train.epochs")
    p.add_argument(*_alias("--exp-ids"), dest="exp_ids", nargs="+", metavar="ID",
                   help="candidates to re-train/test (train.exp_ids), e.g. AdaShare architectures 0 1 2 or argmax")
    p.add_argument("--overwrite", action="store_true", help="replace this command's earlier outputs in the run directory")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
    p.add_argument(*_alias("--allow-changed"), dest="allow_changed", nargs="+", default=[], metavar="KEY",
                   help="with --resume: config keys (or sections) that may differ from the run's config.yaml, "
                        "e.g. train.epochs; config.yaml is then updated")
    p.add_argument("--reference", metavar="RUN_DIR|JSON",
                   help="single-task references for Δ_MTL: an `independent` run directory or a JSON of per-task metrics")
    p.add_argument("--seeds", nargs="+", type=_integer, metavar="SEED",
                   help="repeat the experiment for each seed in <out>/seed_<s>/ and report mean ± sd")
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sharewise", description="Deep multi-task learning that learns what to share.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in ("train", "retrain", "test", "run"):
        add_run_flags(sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name]))
    demo = sub.add_parser("demo", help=COMMANDS["demo"], description=COMMANDS["demo"])
    demo.add_argument("--out", "-o", default="runs/demo", help="directory for the demo runs (default runs/demo)")
    demo.add_argument("--seed", type=_integer, default=0)
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true")
    demo.add_argument("--debug", action="store_true")
    pred = sub.add_parser("predict", help=COMMANDS["predict"], description=COMMANDS["predict"])
    pred.add_argument("run_dir", metavar="RUN", help="a finished run directory")
    pred.add_argument("--data", required=True,
                      help="new examples: a table (feature columns; image paths; phenotype rows), a folder of "
                           "images or volumes, an image, IDX or volume file (targets may be missing)")
    pred.add_argument("--out", "-o", required=True, help="predictions file (.csv, .tsv or .parquet)")
    pred.add_argument("--skip-rows", "--skip_rows", dest="skip_rows", type=_non_negative, default=None,
                      help="lines to skip before the data (default: the run's data.skip_rows)")
    pred.add_argument(*_alias("--join-data"), dest="join_data", nargs="+", metavar="PATH",
                      help="new path(s) of the data.join table(s), in the order of data.join (default: the run's)")
    pred.add_argument("--root", metavar="DIR",
                      help="base of relative image/volume paths and patterns (default: the run's data.image_root/"
                           "data.volume_root, else the --data table's folder)")
    pred.add_argument(*_alias("--image-col"), dest="image_col", metavar="COL",
                      help="column of image paths in --data (default: the run's data.image_col)")
    pred.add_argument("--overwrite", action="store_true")
    pred.add_argument("--debug", action="store_true")
    exp = sub.add_parser("export", help=COMMANDS["export"], description=COMMANDS["export"])
    exp.add_argument("run_dir", metavar="RUN", help="a finished run directory")
    exp.add_argument("--out", "-o", required=True, help="the model file (e.g. model.pt)")
    exp.add_argument("--no-program", "--no_program", dest="no_program", action="store_true",
                     help="skip the torch.export program")
    exp.add_argument("--overwrite", action="store_true")
    exp.add_argument("--debug", action="store_true")
    rep = sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"])
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    rep.add_argument("--out", "-o", help="where to write: several runs, the comparison (default: comparison/ next to the "
                                          "first run); one run, its report.md and plots/ (default: the run itself)")
    rep.add_argument("--reference", metavar="RUN_DIR|JSON",
                     help="several runs: the Δ_t/Δ_MTL reference (default: the `independent` run among them)")
    rep.add_argument("--debug", action="store_true")
    for name in ("methods", "datasets"):
        p = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        p.add_argument("--debug", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """Config file, then the flags, then ``--set`` overrides; validated once."""
    from ..config import apply_override, parse_override, read_yaml, validate_config
    from ..errors import ConfigError

    raw: dict[str, Any] = read_yaml(args.config) if args.config else {}
    flags: dict[str, str] = {}  # config key -> the flag that set it, named in the key's errors

    def put(path: str, value: Any, flag: str) -> None:
        if value is not None:
            apply_override(raw, path.split("."), value)
            flags[path] = flag

    put("data.path", args.data, "--data")
    put("data.test_path", args.test_data, "--test-data")
    put("data.id_col", args.id_col, "--id-col")
    put("data.split_col", args.split_col, "--split-col")
    put("data.image_col", getattr(args, "image_col", None), "--image-col")
    if args.method and isinstance(raw.get("method"), dict) and raw["method"].get("name", "hard") != args.method:
        dropped = sorted(k for k in raw["method"] if k != "name")
        if dropped:
            import warnings

            warnings.warn(f"--method {args.method}: the config's keys for method {raw['method'].get('name', 'hard')!r} "
                          f"are not used ({', '.join('method.' + k for k in dropped)})")
        raw["method"] = {}
    put("method.name", args.method, "--method")
    put("backbone.name", args.backbone, "--backbone")
    put("method.budget", getattr(args, "budget", None), "--budget")
    put("method.budget_penalty", getattr(args, "budget_penalty", None), "--budget-penalty")
    put("method.all_splits", getattr(args, "all_splits", None), "--all-splits")
    put("train.seed", args.seed, "--seed")
    put("train.epochs", args.epochs, "--epochs")
    if getattr(args, "exp_ids", None):
        put("train.exp_ids", [int(v) if v.isdigit() else v for v in args.exp_ids], "--exp-ids")
    put("output.exp_name", args.exp_name, "--exp-name")
    put("output.dir", args.out, "--out")
    put("train.procs", args.procs, "--procs")
    if args.gpus is not None:
        put("train.gpus", list(args.gpus), "--gpus")
    if args.no_progress:
        put("train.progress", False, "--no-progress")
    if args.cat_target or args.num_target:
        existing = {t.get("name"): t for t in raw.get("tasks") or [] if isinstance(t, dict)}
        specs, seen = [], {}
        for kind, names in (("categorical", args.cat_target or []), ("numerical", args.num_target or [])):
            for n in names:
                if n in seen:
                    if seen[n] != kind:
                        raise ConfigError(f"target {n!r} is given both as categorical and as numerical")
                    raise ConfigError(f"target {n!r} is given twice")
                seen[n] = kind
                spec = {k: v for k, v in existing.get(n, {}).items() if k in ("column", "loss", "weight")}
                if spec.get("loss") and (spec["loss"] in ("mse", "l1")) != (kind == "numerical"):
                    spec.pop("loss")
                specs.append({"name": n, "kind": kind, **spec})
        raw["tasks"] = specs
    for ov in args.overrides:
        parts, value = parse_override(ov)
        apply_override(raw, parts, value)
        key = ".".join(parts)
        flags = {k: f for k, f in flags.items() if k != key and not k.startswith(key + ".")}
    try:
        return validate_config(raw)
    except ConfigError as err:
        flag = next((f for k, f in flags.items() if err.key and (err.key == k or err.key.startswith(k + "."))), None)
        if flag is None or err.problem is None:
            raise
        raise ConfigError(f"{flag} ({err.key}): {err.problem}", key=err.key, problem=err.problem) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"sharewise: error: {err}", file=sys.stderr)
        return err.exit_code
    if args.version:
        from .. import __version__

        print(f"sharewise {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    if not debug:
        warnings.simplefilter("default")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"sharewise: warning: {msg}\n"
    try:
        from . import commands

        if args.command in ("train", "retrain", "test", "run"):
            args.argv = list(argv) if argv is not None else sys.argv[1:]
            code = commands.launch_if_needed(args)
            if code is not None:
                return code
            import os

            if int(os.environ.get("RANK", "0")) != 0:  # one summary per run: rank 0's
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of this process)
        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except SharewiseError as err:
        if debug:
            raise
        print(f"sharewise: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("sharewise: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an unexpected failure: one line, the traceback with --debug
        if debug:
            raise
        from ..engine.trainer import Interrupted

        if isinstance(err, Interrupted):
            print(f"sharewise: {err}; continue with the same command and --resume", file=sys.stderr)
            return err.exit_code
        print(f"sharewise: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
