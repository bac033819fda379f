"""Commands as library calls: ``train`` (every phase, then the selection), ``test`` (once, on
the selected model) and ``run`` (both, then the report), on one run directory.

Everything that can fail because of the user's input (config, data, method, backbone, device)
is validated before the run directory is touched, so a bad file never overwrites earlier results.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..backbones import backbone_factory, default_backbone
from ..config import Config, save_config, validate_options
from ..cost import flop_counts, parameter_counts
from ..data import LoadedData, build_data
from ..data.base import InputSpec
from ..errors import ConfigError, RunDirError
from ..methods import Method, MultiTaskModel, get_method
from ..methods.base import BuildContext, Candidate
from ..seeding import RandomStreams, seed_global
from ..tasks import Task
from . import distributed as D
from ..files import atomic_write_json, atomic_write_text, remove_stale_temporaries, write_failure
from .checkpoint import load_checkpoint
from .device import keep_freed_host_memory, resolve_device, use_deterministic_algorithms
from .evaluate import evaluate
from .logging import MetricsLogger
from .selection import candidate_base, reference_metrics, rule_description, selection_score
from .trainer import Trainer

SCHEMA = 1


@dataclass
class RunContext:
    """One run as the engine sees it; also the :class:`~sharewise.methods.base.MethodContext`
    through which a method reaches its data, earlier checkpoints and its own files."""

    cfg: Config
    run_dir: Path
    loaded: LoadedData
    method: Method
    model: MultiTaskModel
    device: torch.device
    reference: dict[str, dict[str, float]] | None = None
    reference_source: str | None = None
    backbone_factory: Any = None
    task_list: list[Task] | None = None  # when there is no data (a finished run loaded for predict)
    input_spec: InputSpec | None = None
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # config keys chosen from the data

    @property
    def data(self):
        if self.loaded is None:
            raise RunDirError(f"{self.run_dir}: this run context was loaded without its data")
        return self.loaded.data

    @property
    def tasks(self) -> list[Task]:
        return self.task_list if self.loaded is None else self.loaded.data.tasks

    # the method's view (MethodContext) --------------------------------------------------------

    def batches_per_epoch(self, split: str) -> int:
        return self.data.num_batches(split, self.cfg.train.batch_size, world_size=D.world_size())

    def _artifact(self, name: str) -> Path:
        if name not in self.method.artifacts:
            raise ValueError(f"method {self.method.name!r} writes {name!r}, which is not in its `artifacts` "
                             f"{self.method.artifacts}")
        return self.run_dir / name

    def write_artifact(self, name: str, content: dict[str, Any] | list[Any] | str) -> None:
        path = self._artifact(name)
        if not D.is_main():
            return
        if isinstance(content, str):
            atomic_write_text(path, content)
        else:
            atomic_write_json(path, content)

    def read_artifact(self, name: str) -> dict[str, Any] | list[Any] | str | None:
        path = self._artifact(name)
        if not path.exists():
            return None
        text = path.read_text()
        if path.suffix != ".json":
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise RunDirError(f"{path}: not valid JSON ({err}); remove it or rerun with --overwrite") from None

    def load_checkpoint(self, path: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        full = self.run_dir / path
        if missing_ok and not full.exists():
            return None
        return load_checkpoint(full)

    def load_phase_checkpoint(self, phase: str, which: str = "last", *, directory: str = ".",
                              missing_ok: bool = False) -> dict[str, Any] | None:
        return self.load_checkpoint(str(Path(directory) / "checkpoints" / phase / f"{which}.pt"), missing_ok=missing_ok)


def resolve_backbone(cfg: Config, input_spec: InputSpec) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with ``backbone.name`` chosen from the data when it is not set
    (:func:`~sharewise.backbones.default_backbone`), and the keys so chosen (none when the user
    named the backbone); ``cfg`` itself is left as it is."""
    if cfg.backbone.name is not None:
        return cfg, {}
    name, extra = default_backbone(input_spec, cfg.backbone.options)
    cfg = cfg.model_copy(deep=True)
    cfg.backbone = type(cfg.backbone).model_validate({**cfg.backbone.options, **extra, "name": name})
    return cfg, {"backbone.name": name, **{f"backbone.{k}": v for k, v in extra.items()}}


def _default_backbone_hint(err: ConfigError, defaults: dict[str, Any], input_spec: InputSpec) -> ConfigError:
    """A ``backbone.*`` error of a backbone the data chose, saying so (e.g. ``backbone.width`` set
    for the MLP while image inputs default to the conv net)."""
    name = defaults["backbone.name"]
    return ConfigError(f"{err} (backbone {name!r} is the default for {input_spec.kind} inputs; name the "
                       f"backbone with --backbone or backbone.name)")


def describe_defaults(defaults: dict[str, Any], input_spec: InputSpec) -> str:
    """The line that says which backbone the data chose, e.g. ``backbone convnet: the default for
    image inputs of shape [1, 28, 28]; name another with --backbone``."""
    extra = ", ".join(f"{k} = {v}" for k, v in defaults.items() if k != "backbone.name")
    return (f"backbone {defaults['backbone.name']}{f' ({extra})' if extra else ''}: the default for "
            f"{input_spec.kind} inputs of shape {list(input_spec.shape)}; name another with --backbone")


def model_backbone_factory(cfg: Config, input_spec: InputSpec) -> Any:
    """The configured backbone family as a factory, validated once. With ``train.sync_bn`` on
    NCCL its BatchNorms are converted to ``SyncBatchNorm`` here, before any method sees the
    backbone, so a method chooses its execution on the layers it will run (AdaShare's batched
    search needs task-aware BatchNorm and falls back to its per-task loop otherwise; converting
    after ``build`` would swap the task-grouped normalisation for one that mixes the tasks)."""
    factory = backbone_factory(cfg.backbone.name, cfg.backbone.options, input_spec)
    if not (cfg.train.sync_bn and D.is_distributed()):
        return factory
    if D.backend() != "nccl":
        warnings.warn("train.sync_bn: SyncBatchNorm needs the NCCL backend (GPUs); with gloo on CPU each "
                      "process keeps its own BatchNorm statistics")
        return factory
    return lambda: torch.nn.SyncBatchNorm.convert_sync_batchnorm(factory())


def prepare(cfg: Config, *, reference: dict[str, dict[str, float]] | None = None,
            reference_source: str | None = None, keep_host_memory_default: bool = False,
            build_device: str | None = None) -> RunContext:
    """Validate everything and build data, method and model; touches no file.

    ``keep_host_memory_default`` stands for ``train.keep_host_memory: null``: the CLI, which owns
    its process, passes True; the Python API keeps False and leaves its host's allocator alone.
    ``build_device`` overrides where the model is built (:func:`check_before_launch` builds on the
    CPU, leaving the GPUs to the processes it starts)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    keep = cfg.train.keep_host_memory
    if keep_host_memory_default if keep is None else keep:
        keep_freed_host_memory()
    if cfg.train.deterministic:
        use_deterministic_algorithms()
    if cfg.train.precision == "fp16" and not cfg.train.gpus:
        raise ConfigError("train.precision: fp16 needs a GPU (--gpus); use bf16 or fp32 on the CPU")
    D.init_from_env(use_cuda=bool(cfg.train.gpus))
    device = resolve_device(cfg.train.gpus, D.local_rank()) if build_device is None else torch.device(build_device)
    loaded = build_data(cfg)
    if D.is_distributed():  # every split decided once, on rank 0
        splits = D.broadcast_object(loaded.data.splits)
        loaded.data.splits = splits
    cfg, defaults = resolve_backbone(cfg, loaded.data.input_spec)
    method_cls = get_method(cfg.method.name)
    if not method_cls.uses_backbone:
        if not defaults:
            warnings.warn(f"backbone.name: {cfg.backbone.name!r} is not used: method {cfg.method.name!r} builds its "
                          "own network (its method.* options)")
        defaults = {}  # nothing to announce: the data's default backbone is not what trains
    options = validate_options(method_cls.Options, cfg.method.options, "method")
    method = method_cls(options, cfg)
    try:
        factory = model_backbone_factory(cfg, loaded.data.input_spec)
    except ConfigError as err:
        if not defaults or not str(err).startswith(("unknown config key 'backbone.", "config key 'backbone.")):
            raise
        raise _default_backbone_hint(err, defaults, loaded.data.input_spec) from None
    build_ctx = BuildContext(loaded.data.input_spec, loaded.data.tasks, factory, RandomStreams(cfg.train.seed))
    torch.manual_seed(build_ctx.streams.seed_of("init"))
    model = method.build(build_ctx).to(device)
    seed_global(cfg.train.seed)
    return RunContext(cfg, cfg.run_dir(), loaded, method, model, device, reference, reference_source, factory,
                      defaults=defaults)


def prepare_from_run(run_dir: Path, *, device: str | torch.device = "cpu") -> RunContext:
    """Rebuild a finished run's method and model from its ``config.yaml`` and ``data_state.json``
    alone (no data is read), for ``predict`` and the Python API."""
    from ..config import load_config

    run_dir = Path(run_dir)
    for name in ("config.yaml", "data_state.json"):
        if not (run_dir / name).exists():
            raise RunDirError(f"{run_dir}: not a sharewise run directory (no {name})")
    cfg = load_config(run_dir / "config.yaml")
    state = json.loads((run_dir / "data_state.json").read_text())
    tasks = [Task.from_dict(t) for t in state["tasks"]]
    return context_without_data(cfg, tasks, InputSpec.from_dict(state["input_spec"]), run_dir, device)


def context_without_data(cfg: Config, tasks: list[Task], spec: InputSpec, run_dir: Path,
                         device: str | torch.device = "cpu") -> RunContext:
    """The method and its freshly built model for a run known only by its config, tasks and input
    spec (a finished run's files, or an exported model's description)."""
    cfg, _ = resolve_backbone(cfg, spec)
    method_cls = get_method(cfg.method.name)
    method = method_cls(validate_options(method_cls.Options, cfg.method.options, "method"), cfg)
    factory = backbone_factory(cfg.backbone.name, cfg.backbone.options, spec)
    model = method.build(BuildContext(spec, tasks, factory, RandomStreams(cfg.train.seed)))
    return RunContext(cfg, Path(run_dir), None, method, model, torch.device(device), backbone_factory=factory,
                      task_list=tasks, input_spec=spec)


LOCK_NAME = ".lock"
_held_locks: dict[Path, list[Any]] = {}  # resolved run directory -> [open lock file, depth] in this process


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _raise_write_failure(err: OSError, path: Path) -> NoReturn:
    """A refused write (disk full, read-only, permission) as the one-line user error naming the
    path; any other OS error as it is."""
    mapped = write_failure(err, err.filename or path)
    if mapped is None:
        raise err
    raise mapped from err


def _in_use(run_dir: Path) -> RunDirError:
    return RunDirError(f"run directory {run_dir} is in use by another sharewise command "
                       f"({_lock_holder(run_dir / LOCK_NAME)}); wait for it to finish or use another --out")


def refuse_locked(run_dir: Path) -> None:
    """A :class:`RunDirError` when another command holds ``run_dir``'s lock; creates nothing
    and takes nothing (the command takes the lock itself when it starts)."""
    try:
        fh = open(run_dir / LOCK_NAME)  # noqa: SIM115 (closed below)
    except OSError:  # no lock file: nobody holds it
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_dir) from None
        fcntl.flock(fh, fcntl.LOCK_UN)


def _acquire_lock(run_dir: Path) -> tuple[Any, bool]:
    """Create ``run_dir`` and take the non-blocking ``flock`` on ``run_dir/.lock`` (our pid
    written into it); None where the directory cannot be written (the command's first write then
    fails with its own one-line error). A lock file removed by its holder between our open and our
    lock is opened again, so two processes never hold locks on different files of the same name.
    Also returns whether the directory was created here."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _raise_write_failure(err, run_dir)
    path = run_dir / LOCK_NAME
    while True:
        try:
            fh = open(path, "a+")  # noqa: SIM115 (held for the whole command)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None, created
            raise
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise _in_use(run_dir) from None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh, created


def _release_lock(fh: Any, run_dir: Path, created: bool) -> None:
    with contextlib.suppress(OSError):
        os.unlink(run_dir / LOCK_NAME)  # still ours: removed before the lock is let go
    fh.close()
    if created:  # a command refused before writing anything leaves no empty directory behind
        with contextlib.suppress(OSError):
            run_dir.rmdir()


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for a command that writes it (re-entrant in one process:
    ``run`` holds it across ``train`` and ``test``). Only rank 0 takes it (the other ranks are the
    same command) and tells the others whether it got it. The lock dies with its process, so a
    killed command leaves no stale lock; a second writer is refused with one line naming the holder."""
    key = Path(os.path.abspath(run_dir))
    held = _held_locks.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fh, created, refusal = None, False, None
    if D.is_main():
        try:
            fh, created = _acquire_lock(Path(run_dir))
        except RunDirError as err:
            refusal = err
    if D.is_distributed():
        message = D.broadcast_object(None if refusal is None else str(refusal))
        if message is not None and refusal is None:
            refusal = RunDirError(message)
    if refusal is not None:
        raise refusal
    _held_locks[key] = [fh, 1]
    try:
        yield
    finally:
        del _held_locks[key]
        if fh is not None:
            _release_lock(fh, Path(run_dir), created)


def refuse_existing_outputs(run_dir: Path, outputs: list[str], *, overwrite: bool, resume: bool) -> list[str]:
    """The ``outputs`` that exist in ``run_dir``; a :class:`RunDirError` when there are some and
    neither ``overwrite`` nor ``resume`` is given."""
    existing = [o for o in outputs if (run_dir / o).exists()]
    if existing and not (overwrite or resume):
        raise RunDirError(
            f"run directory {run_dir} already holds {', '.join(existing)}; use --resume to continue it, "
            "--overwrite to replace it, or --out/--exp-name for a new one"
        )
    return existing


def claim_run_dir(run_dir: Path, outputs: list[str], *, overwrite: bool, resume: bool) -> None:
    """Refuse when this command's outputs exist, unless ``overwrite`` (removes them) or ``resume``.

    With either, the temporary files a killed checkpoint write left in ``checkpoints/`` are removed.
    A run directory that cannot be written (read-only, no permission, no space) is refused before
    anything in it is removed."""
    existing = refuse_existing_outputs(run_dir, outputs, overwrite=overwrite, resume=resume)
    D.barrier()  # every rank has looked before rank 0 removes anything
    if D.is_main():
        try:
            if overwrite and existing and not os.access(run_dir, os.W_OK | os.X_OK):
                read_only = bool(os.statvfs(run_dir).f_flag & os.ST_RDONLY)
                raise OSError(errno.EROFS if read_only else errno.EACCES, "cannot write", str(run_dir))
            if overwrite:
                for o in existing:
                    p = run_dir / o
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            if overwrite or resume:
                remove_stale_temporaries(run_dir / "checkpoints")
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _raise_write_failure(err, run_dir)
    D.barrier()


TRAIN_OUTPUTS = ["checkpoints", "selection.json", "metrics.jsonl", "tensorboard", "split.csv", "data_state.json",
                 "config.yaml"]  # and the method's own files (``Method.artifacts``)
TEST_OUTPUTS = ["results.json", "report.md"]


def _split_csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def data_fingerprint(cfg: Config, split_text: str) -> dict[str, Any]:
    """What ``data_state.json`` records of the data a run was started on: the hash of its split
    table (``split.csv``) and the data files' paths, sizes and modification times."""
    files = []
    data = cfg.data.model_dump()
    for p in (data.get("path"), data.get("test_path")):
        if isinstance(p, str) and os.path.isfile(p):
            st = os.stat(p)
            files.append({"path": os.path.abspath(p), "bytes": st.st_size, "mtime": st.st_mtime})
    return {"split_sha256": hashlib.sha256(split_text.encode()).hexdigest(), "files": files}


# config keys that may differ on --resume without --allow-changed: how the run is watched or
# spread over processes, where its directory is named from, never what it computes
RESUME_MAY_DIFFER = ("train.progress", "train.threads", "train.workers", "train.checkpoint_every_s", "train.log_every",
                     "train.keep_host_memory", "train.gpus", "train.procs", "train.exp_ids", "output")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _covered(key: str, names: Sequence[str]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume(ctx: RunContext, allow_changed: Sequence[str] = ()) -> bool:
    """Refuse ``--resume`` when the resolved config differs from the run's ``config.yaml`` (keys
    outside :data:`RESUME_MAY_DIFFER` and ``allow_changed``) or the split of any example differs
    from its ``split.csv``. True when keys named in ``allow_changed`` differ: ``config.yaml`` is then
    rewritten; otherwise the run's own stays as it is."""
    from ..config import read_yaml, validate_config

    run_dir = ctx.run_dir
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return True
    raw = read_yaml(saved_path)
    try:
        saved = validate_config(raw).to_yaml_dict()
    except ConfigError:
        saved = raw if isinstance(raw, dict) else {}
    old, new = _flat(saved), _flat(ctx.cfg.to_yaml_dict())
    changed = [k for k in [*new, *(k for k in old if k not in new)]
               if old.get(k) != new.get(k) and not _covered(k, RESUME_MAY_DIFFER)]
    refused = [k for k in changed if not _covered(k, allow_changed)]
    if refused:
        detail = ", ".join(f"{k}: {_shown(old.get(k))} -> {_shown(new.get(k))}" for k in refused)
        raise ConfigError(f"--resume: the config differs from the run's in {run_dir} ({detail}); rerun without "
                          f"--resume, or pass --allow-changed {' '.join(refused)}")
    split_path = run_dir / "split.csv"
    if split_path.exists():
        saved_rows = list(csv.DictReader(io.StringIO(split_path.read_text())))
        new_rows = list(csv.DictReader(io.StringIO(_split_csv_text(ctx.data.split_table()))))

        def by_example(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
            return {(r.get("task", ""), r["id"]): f"{r['split']}{'/' + r['subsplit'] if r.get('subsplit') else ''}"
                    for r in rows}

        before, after = by_example(saved_rows), by_example(new_rows)
        moved = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        if moved:
            task, ident = moved[0]
            example = f"id {ident!r}{f' of task {task!r}' if task else ''}: {before.get(moved[0], 'absent')} -> " \
                      f"{after.get(moved[0], 'absent')}"
            raise ConfigError(f"--resume: the data's split differs from the run's in {split_path} ({len(moved)} "
                              f"examples, e.g. {example}); the data or its split changed: rerun without --resume")
    return bool(changed)


def warm_inputs(data: Any) -> None:
    """With several processes, fill an input store's cache before training, each process doing its
    share of the decoding (volumes: :meth:`~sharewise.data.volume.VolumeStore.warm`); otherwise
    every process would decode every example it meets. One process fills its cache as it goes."""
    warm = getattr(getattr(getattr(data, "examples", None), "inputs", None), "warm", None)
    if warm is not None and D.world_size() > 1:
        warm(D.rank(), D.world_size(), D.broadcast_tensor)


def make_trainer(ctx: RunContext, model: MultiTaskModel, directory: str | Path, logger: MetricsLogger,
                 seed: int | None = None) -> Trainer:
    cfg = ctx.cfg
    return Trainer(model, ctx.data, run_dir=ctx.run_dir / directory, seed=cfg.train.seed if seed is None else seed,
                   batch_size=cfg.train.batch_size, eval_batch_size=cfg.train.eval_batch_size, device=ctx.device,
                   logger=logger, checkpoint_every_s=cfg.train.checkpoint_every_s, progress=cfg.train.progress,
                   reference=ctx.reference, log_every=cfg.train.log_every, precision=cfg.train.precision,
                   workers=cfg.train.workers, selection_metric=cfg.train.selection_metric,
                   label=None if str(directory) in (".", "") else str(directory))


def train(ctx: RunContext, *, overwrite: bool = False, resume: bool = False, stage: str | None = None,
          allow_changed: Sequence[str] = ()) -> dict[str, Any]:
    """Train the method's candidates and select one on validation (never test), holding the run
    directory's lock.

    ``stage`` (one of ``method.stages``; None: all) runs a part of a multi-stage method: the first
    stage starts the run directory; a later one (``sharewise retrain``) adds candidates, each in
    its own sub-directory, to a run whose first stage is done, and selects again among all the
    candidates trained so far. With ``resume``, the first stage refuses a config or split that
    differs from the run's (:func:`check_resume`; ``allow_changed`` names keys that may)."""
    with run_dir_lock(ctx.run_dir):
        return _train(ctx, overwrite=overwrite, resume=resume, stage=stage, allow_changed=allow_changed)


def _check_stage(ctx: RunContext, stage: str | None) -> bool:
    """Whether ``stage`` is the method's first (``None``: all of them); refuses a stage the method
    lacks, and a later stage before anything was trained."""
    stages = ctx.method.stages
    if stage is not None and stage not in stages:
        raise ConfigError(f"method {ctx.cfg.method.name!r} has no {stage!r} stage (its stages: {', '.join(stages)})")
    first = stage is None or stage == stages[0]
    if not first and not (ctx.run_dir / "checkpoints").exists():
        raise RunDirError(f"{ctx.run_dir}: nothing trained yet; run `sharewise train` first")
    return first


def _train(ctx: RunContext, *, overwrite: bool, resume: bool, stage: str | None,
           allow_changed: Sequence[str]) -> dict[str, Any]:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    first = _check_stage(ctx, stage)
    if not first:
        run_dir.mkdir(parents=True, exist_ok=True)
    write_config = True
    if first and resume and not overwrite:  # before anything in the run directory is touched
        write_config = check_resume(ctx, allow_changed)
    if first:
        claim_run_dir(run_dir, TRAIN_OUTPUTS + list(ctx.method.artifacts) + TEST_OUTPUTS, overwrite=overwrite,
                      resume=resume)
    if first and resume and not (run_dir / "checkpoints").exists():
        warnings.warn(f"--resume: {run_dir} has no checkpoint yet; starting from the beginning")
    if first and D.is_main() and ctx.defaults:
        print(f"sharewise: {describe_defaults(ctx.defaults, ctx.data.input_spec)}")
    if first and D.is_main():
        if write_config:
            save_config(cfg, run_dir / "config.yaml")
        split_text = _split_csv_text(ctx.data.split_table())
        atomic_write_text(run_dir / "split.csv", split_text)
        atomic_write_json(run_dir / "data_state.json", {
            "source": ctx.data.meta.get("source"), "shape": ctx.data.shape,
            "input_spec": ctx.data.input_spec.to_dict(), "tasks": [t.to_dict() for t in ctx.tasks],
            **ctx.loaded.state,  # the tasks, for every source: the model can be rebuilt from the run alone
            "data_fingerprint": data_fingerprint(cfg, split_text)})
    logger = MetricsLogger(run_dir, tensorboard=cfg.output.tensorboard)
    warm_inputs(ctx.data)

    def run_phases(model: MultiTaskModel, phases: list, directory: str = ".", resume: bool = resume,
                   seed: int | None = None) -> list[dict]:
        sub = str(directory) not in (".", "")
        if sub:  # a candidate's own directory: refused when it exists, like the run directory itself
            claim_run_dir(run_dir / directory, ["checkpoints", "metrics.jsonl", "tensorboard"], overwrite=overwrite,
                          resume=resume)
        # a candidate's curves in its own tensorboard/ (TensorBoard on the run directory lists each as a run)
        log = MetricsLogger(run_dir / directory, tensorboard=cfg.output.tensorboard) if sub else logger
        try:
            trainer = make_trainer(ctx, model, directory, log, seed=seed)
            summaries = [trainer.run_phase(phase, resume=resume) for phase in phases]
        finally:
            if sub:
                log.close()
        return [{**s, "directory": str(directory)} for s in summaries] if sub else summaries

    try:
        candidates, summaries = ctx.method.train_candidates(ctx, run_phases, resume=resume, stage=stage)
    finally:
        logger.close()
    previous = read_selection(run_dir) if (run_dir / "selection.json").exists() else None
    if previous:  # a later stage or a resumed one: keep what earlier commands trained
        new_names = {c.name for c in candidates}
        candidates = [Candidate(**c) for c in previous["candidates"] if c["name"] not in new_names] + candidates
        new_keys = {(s["phase"], s.get("directory", ".")) for s in summaries}
        summaries = [s for s in previous.get("phases", []) if (s["phase"], s.get("directory", ".")) not in new_keys] + summaries
    metric = cfg.train.selection_metric
    rule = rule_description(metric, bool(ctx.reference))
    if not candidates:
        selection = {"selected": None, "checkpoint": None, "rule": rule, "score": None, "val": None,
                     "phases": summaries, "candidates": []}
        if D.is_main():
            atomic_write_json(run_dir / "selection.json", selection)
        return selection
    for cand in candidates:
        if not cand.val:
            model = ctx.method.candidate_model(ctx, cand)
            model.load_state_dict(load_checkpoint(run_dir / cand.checkpoint)["model"])
            cand.val = evaluate(model, ctx.data, "val", ctx.tasks, batch_size=cfg.train.eval_batch_size,
                                device=ctx.device, forward_kwargs=ctx.method.candidate_forward_kwargs(cand))
    base = candidate_base(candidates, summaries)  # one base for every candidate
    for cand in candidates:
        cand.score = selection_score(cand.val, ctx.tasks, ctx.reference, metric, base)
    best = max(candidates, key=lambda c: c.score)
    selection = {
        "selected": best.name,
        "checkpoint": best.checkpoint,
        "rule": rule,
        "score": best.score,
        "val": best.val,
        "phases": summaries,
        "candidates": [dataclasses.asdict(c) for c in candidates],
    }
    if D.is_main():
        atomic_write_json(run_dir / "selection.json", selection)
    ctx.method.on_selection(ctx, selection)
    return selection


def check_before_launch(cfg: Config, *, command: str, overwrite: bool = False, resume: bool = False,
                        allow_changed: Sequence[str] = (), seeds: Sequence[int] | None = None,
                        reference: dict[str, dict[str, float]] | None = None,
                        reference_source: str | None = None) -> None:
    """Refuse, in the process that would start several (``--procs``, ``--gpus``), what every one of
    them would refuse because of its input: the config, data, method, backbone and reference as
    :func:`prepare` checks them (the model built on the CPU), then the run directory as ``command``
    (``train``, ``retrain``, ``test`` or ``run``) would: in use by another command, a missing
    earlier stage, ``--resume`` with another config or split, outputs that exist. The same one
    line, as soon as one process gives it, and before any process starts; the data are read once
    more when all is well. Writes nothing. Warnings are shown only with a refusal (as one process
    shows them before its error); otherwise the started processes give them (rank 0)."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            _check_before_launch(cfg, command=command, overwrite=overwrite, resume=resume,
                                 allow_changed=allow_changed, seeds=seeds, reference=reference,
                                 reference_source=reference_source)
            return
        except Exception:
            shown = list(caught)
            error = sys.exc_info()[1]
    for w in shown:  # outside the recording: shown as the CLI shows warnings
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    raise error


def _check_before_launch(cfg: Config, *, command: str, overwrite: bool, resume: bool, allow_changed: Sequence[str],
                         seeds: Sequence[int] | None, reference: dict[str, dict[str, float]] | None,
                         reference_source: str | None) -> None:
    if seeds and len(set(seeds)) != len(seeds):  # before the data, as run_seeds checks it
        raise ConfigError(f"--seeds: repeated seed in {list(seeds)}")
    ctx = prepare(cfg, reference=reference, reference_source=reference_source, build_device="cpu")
    if seeds:
        for seed in seeds:
            run_dir = cfg.run_dir() / f"seed_{seed}"
            refuse_locked(run_dir)
            refuse_existing_outputs(run_dir, TRAIN_OUTPUTS + list(ctx.method.artifacts) + TEST_OUTPUTS,
                                    overwrite=overwrite, resume=resume)
        return
    refuse_locked(ctx.run_dir)
    if command == "test":
        _test_entries(ctx, overwrite=overwrite)
        return
    stage = {"train": ctx.method.stages[0], "retrain": "retrain"}.get(command)
    if _check_stage(ctx, stage):
        if resume and not overwrite:
            check_resume(ctx, allow_changed)
        refuse_existing_outputs(ctx.run_dir, TRAIN_OUTPUTS + list(ctx.method.artifacts) + TEST_OUTPUTS,
                                overwrite=overwrite, resume=resume)


def retrain(ctx: RunContext, *, overwrite: bool = False, resume: bool = False,
            allow_changed: Sequence[str] = ()) -> dict[str, Any]:
    """The ``retrain`` stage of a multi-stage method (``sharewise retrain --exp-ids ...``)."""
    return train(ctx, overwrite=overwrite, resume=resume, stage="retrain", allow_changed=allow_changed)


def read_selection(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "selection.json"
    if not path.exists():
        raise RunDirError(f"{run_dir}: no selection.json; run `sharewise train` first")
    return json.loads(path.read_text())


def load_candidate(ctx: RunContext, entry: dict[str, Any]) -> tuple[MultiTaskModel, Candidate]:
    cand = Candidate(**entry)
    model = ctx.method.candidate_model(ctx, cand)
    path = ctx.run_dir / cand.checkpoint
    try:
        model.load_state_dict(load_checkpoint(path)["model"])
    except RuntimeError as err:  # another input width, other tasks or classes than at training time
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))[:200]
        raise RunDirError(f"{path}: the trained model does not fit this data and config ({detail}); "
                          "use the data and config the run was trained with") from None
    return model, cand


def test(ctx: RunContext, *, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate every candidate's selected checkpoint on the test split once; write ``results.json``
    from the candidate chosen on validation (with mean ± sd over candidates when there are several);
    holds the run directory's lock."""
    with run_dir_lock(ctx.run_dir):
        return _test(ctx, overwrite=overwrite)


def _test_entries(ctx: RunContext, *, overwrite: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The selection and the candidates ``test`` evaluates; refuses an existing ``results.json``
    without ``overwrite``, a run without ``selection.json`` or candidates, unknown ``--exp-ids``."""
    refuse_existing_outputs(ctx.run_dir, ["results.json"], overwrite=False, resume=overwrite)
    selection = read_selection(ctx.run_dir)
    entries = selection["candidates"]
    if not entries:
        later = " ".join(f"`sharewise {s}`" for s in ctx.method.stages[1:]) or "`sharewise train`"
        raise RunDirError(f"{ctx.run_dir}: no trained model to test yet; run {later} first")
    if ctx.cfg.train.exp_ids:  # --exp-ids: test those candidates; the choice among them is still on validation
        wanted = {str(e).lower() for e in ctx.cfg.train.exp_ids}
        known = [str(e.get("exp_id")) for e in entries]
        entries = [e for e in entries if str(e.get("exp_id")).lower() in wanted]
        if not entries:
            raise RunDirError(f"--exp-ids {' '.join(map(str, ctx.cfg.train.exp_ids))}: no such candidate in "
                              f"{ctx.run_dir} (trained: {', '.join(known)})")
        best = max(entries, key=lambda e: e["score"])
        selection = {**selection, "selected": best["name"], "checkpoint": best["checkpoint"], "score": best["score"],
                     "val": best["val"], "candidates": entries}
    return selection, entries


def _test(ctx: RunContext, *, overwrite: bool) -> dict[str, Any]:
    # refuse early without --overwrite; with it, results.json is replaced atomically at the end, so
    # a checkpoint that does not load leaves the earlier results in place
    claim_run_dir(ctx.run_dir, ["results.json"], overwrite=False, resume=overwrite)
    selection, entries = _test_entries(ctx, overwrite=overwrite)
    per_candidate = []
    chosen = None
    for entry in entries:
        model, cand = load_candidate(ctx, entry)
        kwargs = ctx.method.candidate_forward_kwargs(cand)
        metrics = evaluate(model, ctx.data, "test", ctx.tasks, batch_size=ctx.cfg.train.eval_batch_size,
                           device=ctx.device, forward_kwargs=kwargs)
        per_candidate.append({"name": cand.name, "score": cand.score, "info": cand.info, "test": metrics})
        if cand.name == selection["selected"]:
            chosen = (model, cand, metrics, kwargs)
    model, cand, test_metrics, kwargs = chosen
    results = build_results(ctx, selection, test_metrics, model=model, forward_kwargs=kwargs)
    results.update(ctx.method.results(ctx, model))  # the method's own entries (Method.results)
    if len(per_candidate) > 1:
        results["candidates"] = candidate_summary(per_candidate, ctx.tasks)
    if D.is_main():
        atomic_write_json(ctx.run_dir / "results.json", results)
    return results


def candidate_summary(per_candidate: list[dict[str, Any]], tasks: list[Task]) -> dict[str, Any]:
    """Every candidate's test metrics and, per task and metric, mean ± sample sd over candidates."""
    from ..metrics import mean_sd

    summary = {}
    for t in tasks:
        names = [k for k in per_candidate[0]["test"][t.name] if k != "n"]
        summary[t.name] = {}
        for m in names:
            mean, sd, n = mean_sd([c["test"][t.name].get(m) for c in per_candidate])
            summary[t.name][m] = {"mean": mean, "sd": sd, "n": n}
    return {"n": len(per_candidate), "per_candidate": per_candidate, "mean_sd": summary}


def optimiser_steps(phases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Optimiser steps the run took, every phase and candidate included (AdaShare: warm-up, search
    and each re-trained architecture): ``{"total": n, "by_phase": {"<directory>/<phase>": n}}``."""
    by_phase: dict[str, int] = {}
    for p in phases:
        directory = p.get("directory", ".")
        key = p["phase"] if directory in (".", "") else f"{directory}/{p['phase']}"
        by_phase[key] = by_phase.get(key, 0) + int(p.get("steps") or 0)
    return {"total": sum(by_phase.values()), "by_phase": by_phase}


def build_results(ctx: RunContext, selection: dict[str, Any], test_metrics: dict[str, Any], *,
                  model: MultiTaskModel | None = None, forward_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    from ..metrics import delta_mtl, delta_task

    tasks = {}
    deltas = {}
    for t in ctx.tasks:
        d = None
        if ctx.reference and t.name in ctx.reference:
            d = delta_task(test_metrics[t.name], reference_metrics(ctx.reference[t.name], "test"), t.kind,
                           [t.primary_metric])
            deltas[t.name] = d
        tasks[t.name] = {"kind": t.kind, "primary_metric": t.primary_metric, "classes": t.to_dict()["classes"],
                         "val": selection["val"][t.name], "test": test_metrics[t.name], "delta": d}
    example = ctx.data.examples if ctx.data.shape == "shared" else next(iter(ctx.data.examples.values()))
    splits = ctx.data.splits if ctx.data.shape == "shared" else ctx.data.splits[ctx.tasks[0].name]
    # the FLOPs' example: the first test example (a train one where the test split is empty)
    first = next(splits[s][:1] for s in ("test", "val", "train") if len(splits[s]))
    x0 = example.get_inputs(first)[0].to(ctx.device)
    from .selection import pooled_accuracy

    pooled = {s: pooled_accuracy(m, ctx.tasks) for s, m in (("val", selection["val"]), ("test", test_metrics))}
    return {
        "schema": SCHEMA,
        "method": ctx.cfg.method.name,
        "run": {"seed": ctx.cfg.train.seed, "data": ctx.data.meta.get("source"), "backbone": ctx.cfg.backbone.name,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "device": str(ctx.device),
                "split_sizes": {s: int(ctx.data.split_size(s)) for s in ("train", "val", "test")}},
        "tasks": tasks,
        "delta_mtl": delta_mtl(deltas) if deltas else None,
        # accuracy over every example of every categorical task (Σ_t n_t acc_t / Σ_t n_t); None without one
        **({"pooled_accuracy": pooled} if pooled["test"] is not None else {}),
        "reference": ctx.reference_source if ctx.reference else None,
        "selection": {k: selection[k] for k in ("rule", "score", "phases", "checkpoint", "selected")},
        "steps": optimiser_steps(selection["phases"]),
        "parameters": parameter_counts(model or ctx.model),
        "flops": flop_counts(model or ctx.model, x0, forward_kwargs),
    }


def run(ctx: RunContext, *, overwrite: bool = False, resume: bool = False,
        allow_changed: Sequence[str] = ()) -> dict[str, Any]:
    """``train`` then ``test`` then ``report.md``, under one hold of the run directory's lock."""
    from ..report import write_report

    with run_dir_lock(ctx.run_dir):
        train(ctx, overwrite=overwrite, resume=resume, allow_changed=allow_changed)
        results = test(ctx, overwrite=True)
        if D.is_main():
            write_report(ctx.run_dir)
    return results


def run_seeds(cfg: Config, seeds: list[int], *, make_context, overwrite: bool = False,
              resume: bool = False, allow_changed: Sequence[str] = ()) -> dict[str, Any]:
    """The same experiment once per seed in ``<run>/seed_<s>/``; writes ``seeds.json`` and
    ``seeds.md`` with mean ± sample sd (n stated) of every validation and test metric."""
    base = cfg.run_dir()
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: repeated seed in {seeds}")
    with run_dir_lock(base):  # seeds.json and seeds.md; each seed's run holds its own directory's lock
        return _run_seeds(cfg, seeds, base, make_context=make_context, overwrite=overwrite, resume=resume,
                          allow_changed=allow_changed)


def _run_seeds(cfg: Config, seeds: list[int], base: Path, *, make_context, overwrite: bool, resume: bool,
               allow_changed: Sequence[str]) -> dict[str, Any]:
    from ..metrics import mean_sd
    from ..report.markdown import write_seed_summary

    per_seed = {}
    for seed in seeds:
        c = cfg.model_copy(deep=True)
        c.train.seed = seed
        c.output.dir = str(base / f"seed_{seed}")
        per_seed[seed] = run(make_context(c), overwrite=overwrite, resume=resume, allow_changed=allow_changed)
    first = per_seed[seeds[0]]
    tasks = {}
    for name, t in first["tasks"].items():
        entry = {"kind": t["kind"], "primary_metric": t["primary_metric"]}
        for split in ("val", "test"):
            entry[split] = {}
            for m in t[split]:
                if m == "n":
                    continue
                mean, sd, n = mean_sd([per_seed[s]["tasks"][name][split].get(m) for s in seeds])
                entry[split][m] = {"mean": mean, "sd": sd, "n": n}
        tasks[name] = entry
    dm = [per_seed[s].get("delta_mtl") for s in seeds]
    summary = {"schema": SCHEMA, "method": cfg.method.name, "seeds": list(seeds), "n": len(seeds), "tasks": tasks,
               "delta_mtl": dict(zip(("mean", "sd", "n"), mean_sd(dm))) if any(v is not None for v in dm) else None,
               "runs": {str(s): str(base / f"seed_{s}") for s in seeds}}
    if D.is_main():
        atomic_write_json(base / "seeds.json", summary)
        write_seed_summary(base, summary)
    return summary
