"""The method and phase contract.

A :class:`Method` builds a :class:`MultiTaskModel` from a :class:`BuildContext` (input spec,
tasks, backbone factory, the run's seeded random streams), names
its parameter groups, returns its auxiliary losses explicitly, and lists its :class:`Phase` s.
A phase is data: the splits it reads, its stretches (a plain loop is one stretch; AdaShare's
search alternates a weight stretch on ``train1`` and a policy stretch on ``train2``), the
optimisers keyed by parameter group, its length, stopping and selection rule, and hooks. The
engine runs phases and never needs a method's internals; no method edits the engine, and no
method imports it: what a method needs of a run (its data, directory, earlier checkpoints, its
own files) comes through the :class:`MethodContext` the engine passes in.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..config import Config
from ..data.base import InputSpec
from ..errors import ConfigError, close_matches
from ..seeding import RandomStreams
from ..tasks import Task


class MultiTaskModel(nn.Module, abc.ABC):
    """A plain ``nn.Module``: ``forward(x, tasks=None, **kw) -> {task: output}``.

    Subclasses say which parameters belong to which group (``param_groups``) and, for per-task
    checkpoint selection and cost accounting, which state-dict prefixes a task owns alone.
    """

    tasks: list[Task]
    # Optional hook for per-task data: ``forward_all_tasks({task: inputs (B_t, ...)}, **kw) ->
    # {task: output (B_t, ...)}`` takes a whole per-task batch (any subset of the tasks, batch
    # sizes may differ) in one call; the engine uses it instead of one ``forward`` per task when a
    # subclass defines it (cross-stitch, MMoE, soft ordering and TAAN run their tasks together).
    forward_all_tasks: Callable[..., dict[str, torch.Tensor]] | None = None

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Outputs (logits or standardised values) of ``tasks`` (default: all) for inputs ``x``."""

    @abc.abstractmethod
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups (e.g. ``backbone``, ``heads``, ``policy``); every parameter once."""

    def aux_losses(self, **state: Any) -> dict[str, torch.Tensor]:
        """Auxiliary losses (regularisers) for the current step, by name; none by default."""
        return {}

    def task_prefixes(self, task: str) -> list[str] | None:
        """State-dict prefixes owned by ``task`` alone, or None when tasks share parameters."""
        return None

    @abc.abstractmethod
    def task_modules(self, task: str) -> list[nn.Module]:
        """Modules on ``task``'s inference path (for parameter counts)."""

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


@dataclass
class OptimSpec:
    """One optimiser over some parameter groups; ``lrs`` maps group -> learning rate."""

    kind: Literal["adam", "adamw", "sgd"]
    lrs: dict[str, float]
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    schedule: Literal["none", "step", "cosine"] = "none"
    step_size: int = 1000
    gamma: float = 0.5
    grad_clip: float | None = None
    # a parameter that got no gradient in a step: False leaves it untouched (PyTorch semantics);
    # True gives it a zero gradient, so Adam's momentum still moves it (TF1 semantics, §5 of
    # parameter allocation: every parameter materialised, zero-filled)
    step_without_grad: bool = False
    # groups stepped without weight decay (TAAN specification §5.5 ``no_decay``)
    no_decay: tuple[str, ...] = ()


@dataclass
class PhaseState:
    """Counters the engine keeps for a phase; saved in every checkpoint."""

    cycle: int = 0  # completed cycles (epochs, or weight+policy alternations)
    step: int = 0  # optimiser steps taken in the phase
    stretch: int = 0  # index of the stretch in progress
    batch: int = 0  # next batch inside the stretch
    stretch_step: int = 0  # steps taken inside the stretch in progress
    best_score: float | None = None
    best_cycle: int | None = None
    bad_evals: int = 0
    last_eval_step: int = -1
    task_best: dict[str, float] = field(default_factory=dict)
    evals: int = 0  # validation evaluations so far
    best_eval: int | None = None  # which of them (1 = the first) holds the best score
    best_step: int | None = None
    selection_base: dict[str, dict[str, float]] = field(default_factory=dict)  # the first evaluation's metrics
    extra: dict[str, Any] = field(default_factory=dict)  # method state (temperature, curriculum...)
    done: bool = False


@dataclass
class Stretch:
    """A run of steps on one split, optimising some groups with one optimiser.

    ``iters`` None means one pass over the split. ``objective`` adds the model's auxiliary
    losses (``"task+aux"``) or not (``"task"``). ``forward_kwargs(state)`` gives the extra
    arguments of ``model.forward`` (policy, temperature...) for a step.
    """

    split: str
    optimizer: str
    iters: int | None = None
    objective: Literal["task", "task+aux"] = "task"
    forward_kwargs: Callable[[PhaseState], dict[str, Any]] | None = None
    aux_kwargs: Callable[[PhaseState], dict[str, Any]] | None = None


@dataclass
class Phase:
    """A phase of training, as data.

    ``cycles``: how many times the stretches run (epochs for a one-stretch phase) unless
    ``max_steps`` stops it first. ``selection``: ``score`` keeps the checkpoint with the best
    validation selection score, ``per_task`` keeps each task's parts at that task's best
    validation primary metric (``independent``), ``last`` keeps the last state.
    """

    name: str
    stretches: list[Stretch]
    optimizers: dict[str, OptimSpec]
    cycles: int
    max_steps: int | None = None
    eval_split: str | None = "val"
    eval_every: int | None = None  # steps; None: after every cycle
    selection: Literal["score", "per_task", "last"] = "score"
    select_from_cycle: int = 0
    patience: int | None = None
    eval_kwargs: Callable[[PhaseState], dict[str, Any]] | None = None
    on_cycle_end: Callable[[PhaseState], None] | None = None
    after_step: Callable[[PhaseState, str], None] | None = None
    loop: Literal["joint", "round_robin"] = "joint"
    init_from: str | None = None  # checkpoint name restored before the phase ("init", "warmup/best", ...)
    save_init: bool = False  # save the model as checkpoint ``init`` before any update
    # splits evaluated and logged at every evaluation beside ``eval_split``, never used for the
    # selection (a learning curve): ``train`` (logged as split ``train_eval``) and ``test`` only as the
    # opt-in diagnostic (logged as ``test_diagnostic``)
    monitor_splits: tuple[str, ...] = ()


def positive_widths(cls: type, v: list[int]) -> list[int]:
    """A ``widths`` option's check (use as ``field_validator("widths")(positive_widths)``)."""
    if not v or any(int(w) < 1 for w in v):
        raise ValueError("needs at least one positive width")
    return v


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Candidate:
    """A finished model among which the selection chooses on validation (AdaShare re-trains
    several sampled architectures; most methods have one). ``directory`` is relative to the run
    directory; ``checkpoint`` relative to the run directory too; ``info`` is method-specific and
    JSON-serialisable (e.g. the architecture's policy and seed)."""

    name: str
    checkpoint: str
    directory: str = "."
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    score: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    exp_id: int | str | None = None  # the id ``--exp-ids`` selects it by (AdaShare: architecture id)


@dataclass
class BuildContext:
    """What :meth:`Method.build` gets: everything a method may need to build its network.

    ``input_spec``: the per-example input (``kind``, ``shape``, ``dtype``, ``in_features``), for a
    method that gates on the raw input (MMoE) or builds its own network; ``tasks``: in the model's
    order; ``backbone_factory()``: a fresh backbone of the configured family (the block
    interface) on every call, already converted for ``train.sync_bn`` where that applies;
    ``streams``: the run's seeded random streams (``streams.generator("init", k)``). The engine
    seeds torch's global generator with the ``init`` stream before ``build``, so modules built
    with their default initialisation are reproducible without a generator.
    """

    input_spec: InputSpec
    tasks: list[Task]
    backbone_factory: Callable[[], nn.Module]
    streams: RandomStreams

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


class MethodContext(Protocol):
    """What the engine gives a method's :meth:`Method.train_candidates`, :meth:`Method.candidate_model`
    and :meth:`Method.on_selection` (implemented by ``engine.runner.RunContext``).

    Paths are relative to the run directory. Only the main process writes; ``write_artifact``
    is a no-op elsewhere, so a method never checks ranks itself.
    """

    cfg: Config
    run_dir: Path
    model: MultiTaskModel
    device: torch.device
    backbone_factory: Callable[[], nn.Module]

    @property
    def data(self) -> Any:
        """The dataset (``SharedInputData`` or ``PerTaskData``)."""

    @property
    def tasks(self) -> list[Task]:
        """The tasks, in the model's order."""

    def batches_per_epoch(self, split: str) -> int:
        """Optimiser steps one pass over ``split`` takes in this run: its batches of
        ``train.batch_size`` per process, with the split sharded over every process (a method
        sizing its phases in steps uses this, so 2 processes take the steps of 1)."""

    def write_artifact(self, name: str, content: dict[str, Any] | list[Any] | str) -> None:
        """Write the method's file ``name`` in the run directory atomically (JSON for a dict or
        list), on the main process only. ``name`` must be listed in :attr:`Method.artifacts`."""

    def read_artifact(self, name: str) -> dict[str, Any] | list[Any] | str | None:
        """The method's file ``name`` as written by :meth:`write_artifact`, or None when missing."""

    def load_checkpoint(self, path: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        """A checkpoint written by the engine (``checkpoints/init.pt``, ``checkpoints/search/best.pt``),
        loaded without executing code; None for a missing file with ``missing_ok``."""

    def load_phase_checkpoint(self, phase: str, which: Literal["last", "best"] = "last", *,
                              directory: str = ".", missing_ok: bool = False) -> dict[str, Any] | None:
        """``<directory>/checkpoints/<phase>/<which>.pt``: ``model`` (state dict), ``state`` (the
        :class:`PhaseState` as a dict: ``cycle``, ``step``, ``done``, ``extra``...)."""


class Method(abc.ABC):
    """A sharing strategy. Subclasses set ``name``, ``description``, ``Options`` and implement
    :meth:`build` and :meth:`phases`.

    The engine calls :meth:`train_candidates` (default: run :meth:`phases` on the model built
    by :meth:`build` and return it as the only candidate) and, at test time,
    :meth:`candidate_model` to rebuild each candidate. A method with several final models
    (AdaShare's re-trained architectures) overrides both, still using the engine's
    ``run_phases`` so that checkpoints, resume and logging behave the same everywhere."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    # Stages run by separate commands: ``sharewise train`` runs the first, ``sharewise retrain`` a
    # ``retrain`` stage (AdaShare: search, then re-training); ``sharewise run`` runs them all.
    stages: ClassVar[tuple[str, ...]] = ("train",)
    # files the method writes in the run directory (``MethodContext.write_artifact``): the engine
    # refuses to train over them without --overwrite/--resume and removes them with --overwrite
    artifacts: ClassVar[tuple[str, ...]] = ()
    # ``method.*`` options of the smallest run that still passes through every phase and stage:
    # the conformance suite (tests/test_conformance.py) trains every registered method with them
    conformance_options: ClassVar[dict[str, Any]] = {}
    # whether :meth:`build` calls ``BuildContext.backbone_factory``; a method that builds its own
    # network (``method.widths``, a routed preset) says False, and the engine then neither announces
    # a backbone chosen from the data nor lets a named ``backbone.name`` pass unremarked
    uses_backbone: ClassVar[bool] = True

    def __init__(self, options: BaseModel, cfg: Config) -> None:
        self.options = options
        self.cfg = cfg

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> MultiTaskModel:
        """The multi-task model, with freshly initialised weights."""

    @abc.abstractmethod
    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        """The phases that train ``model`` (run in order by the engine)."""

    def train_candidates(self, ctx: MethodContext, run_phases: Callable[..., list[dict[str, Any]]], *,
                         resume: bool = False, stage: str | None = None) -> tuple[list[Candidate], list[dict[str, Any]]]:
        """Train and return the candidates and the phase summaries.

        ``run_phases(model, phases, directory=".", resume=False, seed=None)`` runs phases on a
        model with checkpoints (and, in a sub-directory, ``metrics.jsonl``) under
        ``<run>/<directory>/`` and leaves the selected state in ``model``; ``seed`` replaces the
        run seed for the phases' data order. ``ctx``: the run (:class:`MethodContext`). ``stage`` is one of
        :attr:`stages` (None: all); a stage that ends before any candidate returns none.
        """
        steps = ctx.batches_per_epoch("train")
        phases = self.phases(ctx.model, steps)
        summaries = run_phases(ctx.model, phases, resume=resume)
        return [Candidate("main", f"checkpoints/{phases[-1].name}/best.pt")], summaries

    def candidate_model(self, ctx: MethodContext, candidate: Candidate) -> MultiTaskModel:
        """The module a candidate's checkpoint loads into (default: the context's model)."""
        return ctx.model

    def candidate_forward_kwargs(self, candidate: Candidate) -> dict[str, Any]:
        """Extra ``forward`` arguments for evaluating a candidate (none by default)."""
        return {}

    def on_selection(self, ctx: MethodContext, selection: dict[str, Any]) -> None:
        """Called once the engine has chosen among the candidates (``selection.json``'s content),
        e.g. to record the choice in the method's own artefacts. Nothing by default."""

    def results(self, ctx: MethodContext, model: MultiTaskModel) -> dict[str, Any]:
        """Method-specific entries of ``results.json`` for the selected ``model`` (e.g. parameter
        allocation's task similarity), JSON-serialisable; none by default."""
        return {}

    @classmethod
    def report_sections(cls, run_dir: Path, plots_dir: Path) -> list[str]:
        """Markdown lines for the method's own part of ``report.md``, from the run directory's
        files (its artefacts, ``metrics.jsonl``, ``results.json``); may write PNGs into
        ``plots_dir`` and link them as ``plots/<name>.png``. None by default. Lives next to the
        method (AdaShare: ``methods/adashare/report.py``)."""
        return []

    # Helpers every method may use -----------------------------------------------------------

    def default_optim(self, groups: Sequence[str], backbone_groups: Sequence[str] = ("backbone",)) -> OptimSpec:
        """The ``optim`` section as an :class:`OptimSpec`: ``backbone_lr`` for backbone groups."""
        o = self.cfg.optim
        lrs = {g: (o.backbone_lr or o.lr) if g in backbone_groups else o.lr for g in groups}
        return OptimSpec(o.optimizer, lrs, o.weight_decay, tuple(o.betas), o.momentum, o.schedule, o.step_size,
                         o.gamma, o.grad_clip)


_METHODS: dict[str, type[Method]] = {}
_DISCOVERED = False


def register_method(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls
    return cls


def methods() -> dict[str, type[Method]]:
    """Every registered method by name: each public module (or package) of ``sharewise.methods``
    is imported once, and its ``@register_method`` classes register themselves."""
    global _DISCOVERED
    if not _DISCOVERED:
        package = importlib.import_module(__name__.rsplit(".", 1)[0])
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{package.__name__}.{info.name}")
        _DISCOVERED = True
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> type[Method]:
    table = methods()
    if name not in table:
        raise ConfigError(f"method.name: unknown method {name!r}{close_matches(name, table)}; see `sharewise methods`")
    return table[name]


def task_key(name: str) -> str:
    """A task name as a module name (``race.ethnicity`` -> ``race__dot__ethnicity``)."""
    return name.replace(".", "__dot__")


class TaskDict(nn.ModuleDict):
    """A ``ModuleDict`` keyed by task name; names with dots are allowed (encoded with :func:`task_key`)."""

    def __init__(self, modules: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        for k, v in (modules or {}).items():
            self[k] = v

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(task_key(key))

    def __setitem__(self, key: str, module: nn.Module) -> None:
        super().__setitem__(task_key(key), module)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(task_key(key))


class TaskHeads(TaskDict):
    """One linear head per task on the backbone's features (logits, no softmax)."""

    def __init__(self, in_features: int, tasks: Sequence[Task]) -> None:
        super().__init__({t.name: nn.Linear(in_features, t.out_features) for t in tasks})

    def shared_input(self, features: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """The heads of ``tasks`` on the same ``features``: one matrix product with their weights
        stacked (equal to calling each head, in fewer operations)."""
        if len(tasks) == 1:
            return {tasks[0]: self[tasks[0]](features)}
        heads = [self[t] for t in tasks]
        out = F.linear(features, torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]))
        return dict(zip(tasks, out.split([h.out_features for h in heads], dim=-1)))

    def columns(self, features: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """The heads of ``tasks`` on ``features`` (B, T, D), column t holding task t's features:
        heads with the same number of outputs as one batched matrix product, their weights
        stacked (equal to calling each head on its column; T heads cost about four operations
        each forward and backward, a batched product a few for all)."""
        by_size: dict[int, list[int]] = {}
        for i, t in enumerate(tasks):
            by_size.setdefault(self[t].out_features, []).append(i)
        out: dict[str, torch.Tensor] = {}
        for index in by_size.values():
            if len(index) == 1:
                out[tasks[index[0]]] = self[tasks[index[0]]](features[:, index[0]])
                continue
            heads = [self[tasks[i]] for i in index]
            x = features if len(index) == len(tasks) else features[:, index]
            weight = torch.stack([h.weight for h in heads]).transpose(1, 2)  # (G, D, K)
            bias = torch.stack([h.bias for h in heads]).unsqueeze(1)  # (G, 1, K)
            out.update(zip((tasks[i] for i in index), torch.baddbmm(bias, x.transpose(0, 1), weight).unbind(0)))
        return {t: out[t] for t in tasks}
