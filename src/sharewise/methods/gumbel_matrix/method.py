"""``gumbel_matrix``, ``no_sharing`` and ``shared_bottom``: parameter allocation by Gumbel-matrix
routing and its two fixed baselines (Maziarz et al., arXiv 1910.04915; spec ``parameter_allocation.md``).

The method builds its own routed network from the input spec (``method.network``: the MNIST,
Omniglot or task-clusters network of §7, or routed linear layers, ``mlp``), not from the
configured backbone. Training is one phase, ``train``, with the engine's round-robin loop (§5):
every round visits the tasks in a fresh seeded order, each task draws a batch from its own
stream and takes one update of one Adam over three groups (``backbone``: the components and
shared layers, ``heads``, ``router``: the logits, at ``method.router_lr``). The update counter t
(one per task update) drives the temperature τ(t) = max(τ_min, τ_0/√(t+1)) and the noise.

A parameter that gets no gradient in an update (another task's head; a component behind a zero
routing weight) is stepped with a zero gradient by default, so Adam's momentum still moves it,
as TF1 did (§5); ``adam_skip_unused: true`` leaves it untouched (PyTorch semantics).
``optim.weight_decay`` is not used (Adam without decay, as the reference; ``method.l2`` is the
explicit L2 term of §3). ``allocation.json`` holds the learned allocation of the selected model.
"""

from __future__ import annotations

import abc

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ...errors import ConfigError
from ..base import (BuildContext, Candidate, Method, MethodContext, MultiTaskModel, OptimSpec, Phase, Stretch,
                    positive_widths, register_method)
from .network import (PRESET_COMPONENTS, RoutedNetwork, all_ones_router, gumbel_router, identity_router, keras_init,
                      preset_layers)
from .checkpoints import checkpoint_rows, checkpoint_summary, checkpoint_table
from .similarity import similarity_summary

ALLOCATION = "allocation.json"
CHECKPOINTS = "checkpoints.csv"


class NetworkOptions(BaseModel):
    """``method.*`` keys every routing method has: the network, its training loop and selection."""

    model_config = ConfigDict(extra="forbid")
    network: Literal["auto", "mnist", "omniglot", "clusters", "mlp"] = Field(
        "auto", description="the routed network (§7): auto = mnist for images of at least 28×28, else mlp")
    components: int | Literal["tasks"] | None = Field(
        None, description="C of every routed layer (mnist, mlp); default mnist 4, mlp one per task")
    widths: list[int] = Field(default_factory=lambda: [32, 32], description="mlp: the routed layers' widths")
    filters: int | None = Field(None, ge=4, description="filters of every convolution (mnist, omniglot, clusters); "
                                                         "default the preset's: 4, 48, 8 (GroupNorm needs a multiple "
                                                         "of 4 in omniglot and clusters)")
    strided_layers: list[int] | None = Field(
        None, description="omniglot: the routed layers (0-7) that halve the map; default the published 0, 1, 3, 4, 6 "
                          "(105 → 4); the 28×28 CPU variant: 0, 1, 3 (28 → 4, the published final 4×4)")
    init: Literal["keras", "torch"] = Field("keras", description="keras: Glorot-uniform weights, zero biases (§7)")
    dropout: float = Field(0.0, ge=0, lt=1, description="before the heads (the replication configs: 0.5, §7); "
                                                       "masks are drawn per process")
    group_norm_eps: float = Field(1e-6, gt=0, description="TF 1.15's group_norm default (omniglot, clusters)")
    steps_per_task: int | None = Field(None, ge=1, description="rounds (updates per task); default train.max_steps "
                                                               "updates or train.epochs epochs of rounds")
    eval_every_rounds: int | None = Field(None, ge=1, description="inline validation every N rounds; default "
                                                                   "train.eval_every updates, else once per epoch")
    checkpoint: Literal["best", "last"] = Field("best", description="the selected model: best on validation or the last")
    eval_train: bool = Field(False, description="also evaluate the training split (no augmentation) at every inline "
                                                "evaluation: a curve in checkpoints.csv, never used for selection")
    all_splits: bool = Field(False, description="diagnostic (--all-splits): also the test split at every inline "
                                                "evaluation, labelled test_diagnostic, never used for selection")
    adam_skip_unused: bool = Field(False, description="true: a parameter without gradient in an update is not "
                                                      "stepped (PyTorch); false: zero gradient, stepped (TF1, §5)")
    router_lr: float | None = Field(None, gt=0, description="learning rate of the router logits; default optim.lr")
    l2: float = Field(0.0, ge=0, description="l2 · Σ ½‖w‖² over weights (not biases, not router logits), GroupNorm "
                                             "γ and β included, added at every update (§3, Omniglot)")

    _positive_widths = field_validator("widths")(positive_widths)

    @field_validator("strided_layers")
    @classmethod
    def _strided_in_range(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(set(v)) != len(v) or any(not 0 <= i < 8 for i in v)):
            raise ValueError("distinct indices of the 8 routed layers, 0 to 7")
        return v

    @field_validator("filters")
    @classmethod
    def _filters_for_group_norm(cls, v: int | None) -> int | None:
        if v is not None and v % 4:
            raise ValueError("must be a multiple of 4 (GroupNorm with 4 groups)")
        return v

    @field_validator("components")
    @classmethod
    def _positive_components(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 (or 'tasks')")
        return v


class GumbelMatrixOptions(NetworkOptions):
    p0: float = Field(0.5, gt=0, lt=1, description="initial connection probability (§2.1)")
    tau: tuple[float, float] = Field((50.0, 0.5), description="[τ_0, τ_min] of τ(t) = max(τ_min, τ_0/√(t+1))")
    budget: float = Field(1.0, gt=0, le=1, description="b: allowed expected fraction of active connections (§3)")
    budget_penalty: float = Field(0.0, ge=0, description="λ_b (0: off)")
    entropy: float = Field(0.0, ge=0, description="λ_H of λ_H · (t / T_total)^α · H_t (0: off)")
    entropy_alpha: float = Field(1.0, ge=0, description="α")

    @field_validator("tau")
    @classmethod
    def _temperatures(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError("[τ_0, τ_min] must both be > 0")
        return v


class FixedRouterOptions(NetworkOptions):
    """A fixed router has no connection probabilities: a budget (§3) is a configuration error."""

    budget: float | None = None
    budget_penalty: float | None = None

    @model_validator(mode="after")
    def _no_budget(self) -> FixedRouterOptions:
        if self.budget is not None or (self.budget_penalty or 0) > 0:
            from pydantic_core import PydanticCustomError

            raise PydanticCustomError("key_problem", "{problem}", {
                "key": "budget" if self.budget is not None else "budget_penalty",
                "problem": "a fixed router has no connection probabilities to budget; the budget penalty needs "
                           "method gumbel_matrix"})
        return self


class SharedBottomOptions(FixedRouterOptions):
    aggregation: Literal["sum", "mean"] = Field("sum", description="sum of the components (the reference) or "
                                                                   "their mean (comparable with gumbel_matrix)")


class _Routing(Method):
    """What the three methods share: the network, the round-robin phase, the allocation artefact."""

    artifacts = (ALLOCATION, CHECKPOINTS)
    uses_backbone = False  # the routed network of ``method.network``
    router_kind: ClassVar[str]
    options: NetworkOptions

    # -- building ----------------------------------------------------------------------------

    def _preset(self, ctx: BuildContext) -> str:
        o = self.options
        if o.network != "auto":
            return o.network
        shape = ctx.input_spec.shape
        return "mnist" if len(shape) == 3 and min(shape[1:]) >= 28 else "mlp"

    def _components(self, preset: str, num_tasks: int) -> int | None:
        c = self.options.components
        if c == "tasks":
            return num_tasks
        if c is not None and preset in ("omniglot", "clusters"):
            raise ConfigError(f"method.components: the {preset} network has a fixed number of components "
                              f"({PRESET_COMPONENTS[preset]} per routed layer)")
        return c if c is not None else (num_tasks if preset == "mlp" else PRESET_COMPONENTS[preset])

    @abc.abstractmethod
    def make_router(self, num_tasks: int, num_components: int) -> nn.Module:
        """The router of one routed layer: learned (``gumbel_matrix``) or a fixed matrix."""

    def model_options(self) -> dict[str, Any]:
        return {}

    def build(self, ctx: BuildContext) -> RoutedNetwork:
        o = self.options
        spec = ctx.input_spec
        if spec.kind not in ("image", "vector"):
            raise ConfigError(f"method {self.name}: needs image or vector inputs, not {spec.kind}")
        preset = self._preset(ctx)
        if o.strided_layers is not None and preset != "omniglot":
            raise ConfigError(f"method.strided_layers: only the omniglot network has strided layers to choose "
                              f"(this run's network: {preset})")
        if preset != "mlp" and (spec.kind != "image" or len(spec.shape) != 3):
            raise ConfigError(f"method.network: the {preset} network needs image inputs (channels, height, width), "
                              f"got {spec.kind} {tuple(spec.shape)}; use network: mlp")
        T = len(ctx.tasks)
        layers = preset_layers(preset, spec.shape, components=self._components(preset, T), widths=o.widths,
                               eps=o.group_norm_eps, filters=o.filters, strided_layers=o.strided_layers)
        routed = [layer for layer in layers if hasattr(layer, "components")]
        routers = [self.make_router(T, len(layer)) for layer in routed]
        try:
            model = RoutedNetwork(layers, routers, ctx.tasks, input_shape=spec.shape, dropout=o.dropout,
                                  seed=ctx.streams.seed, total_updates=self.total_updates(T),
                                  **self.model_options())
        except RuntimeError as err:  # an input too small for the network's valid convolutions
            raise ConfigError(f"method.network: the {preset} network does not fit inputs of shape "
                              f"{tuple(spec.shape)} ({str(err).splitlines()[0][:120]})") from None
        if o.init == "keras":
            keras_init(model)
        return model

    # -- training ----------------------------------------------------------------------------

    def total_updates(self, num_tasks: int) -> int | None:
        """T_total = steps_per_task × T (entropy annealing), or ``train.max_steps``."""
        if self.options.steps_per_task:
            return self.options.steps_per_task * num_tasks
        return self.cfg.train.max_steps

    def optim(self) -> OptimSpec:
        o, opt = self.options, self.cfg.optim
        lrs = {"backbone": opt.lr, "heads": opt.lr, "router": o.router_lr or opt.lr}
        return OptimSpec("adam", lrs, 0.0, tuple(opt.betas), grad_clip=None, step_without_grad=not o.adam_skip_unused)

    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        assert isinstance(model, RoutedNetwork)
        o, t = self.options, self.cfg.train
        T = len(model.tasks)
        max_steps = o.steps_per_task * T if o.steps_per_task else t.max_steps
        cycles = 10**9 if o.steps_per_task else max(1, t.epochs)
        eval_every = o.eval_every_rounds * T if o.eval_every_rounds else t.eval_every
        after_step = self._after_step(model) if model.learned else None
        stretch = Stretch("train", "main", objective="task+aux",
                          forward_kwargs=lambda s: {"step": s.step, "tau": model.temperature(s.step)},
                          aux_kwargs=lambda s: {"step": s.step})
        monitor = (("train",) if o.eval_train else ()) + (("test",) if o.all_splits else ())
        return [Phase("train", [stretch], {"main": self.optim()}, cycles=cycles, max_steps=max_steps,
                      eval_every=eval_every, patience=t.patience, loop="round_robin",
                      selection="score" if o.checkpoint == "best" else "last", after_step=after_step,
                      monitor_splits=monitor)]

    @staticmethod
    def _after_step(model: RoutedNetwork) -> Callable:
        def log_router(state: Any, split: str) -> None:
            """τ of the next update and every task's entropy H_t (§2.3, §2.6), logged with the losses."""
            state.extra["temperature"] = model.temperature(state.step)
            for name, h in zip(model.task_names, model.task_entropy().tolist()):
                state.extra[f"entropy/{name}"] = h

        return log_router

    def train_candidates(self, ctx: MethodContext, run_phases: Callable[..., list[dict[str, Any]]], *,
                         resume: bool = False, stage: str | None = None) -> tuple[list[Candidate], list[dict[str, Any]]]:
        candidates, summaries = super().train_candidates(ctx, run_phases, resume=resume, stage=stage)
        ctx.write_artifact(ALLOCATION, allocation_record(ctx.model, self.name, self.options.model_dump(mode="json"),
                                                         families=task_families(ctx)))
        summary = summaries[-1] if summaries else {}
        rows = checkpoint_rows(Path(ctx.run_dir) / "metrics.jsonl", [t.name for t in ctx.tasks],
                               selected_step=summary.get("best_step") if summary.get("selection") == "score" else None)
        if rows:
            ctx.write_artifact(CHECKPOINTS, checkpoint_table(rows))
        return candidates, summaries

    def results(self, ctx: MethodContext, model: MultiTaskModel) -> dict[str, Any]:
        """``results.json``'s ``allocation``: the pattern's task similarity and family separation."""
        assert isinstance(model, RoutedNetwork)
        record = allocation_record(model, self.name, {}, families=task_families(ctx))
        out: dict[str, Any] = {"allocation": {k: record[k] for k in ("total_components", "active_fraction",
                                                                     "similarity")}}
        table = ctx.read_artifact(CHECKPOINTS)
        if isinstance(table, str):
            out["checkpoints"] = checkpoint_summary(table, len(model.tasks))
        return out

    @classmethod
    def report_sections(cls, run_dir: Path, plots_dir: Path) -> list[str]:
        from .report import allocation_report

        return allocation_report(Path(run_dir), Path(plots_dir))


def task_families(ctx: MethodContext) -> dict[str, str] | None:
    """Task → family where the data knows it (``task_families``: the source of each task); for the
    plots and the separation score only, never given to the model."""
    meta = getattr(ctx.data, "meta", None) or {}
    families = meta.get("families")
    return dict(families) if isinstance(families, dict) else None


def allocation_record(model: RoutedNetwork, method: str, options: dict[str, Any],
                      families: dict[str, str] | None = None) -> dict[str, Any]:
    """``allocation.json``: per routed layer and task ``p`` and the binary pattern ``1[p ≥ 0.5]``,
    with the similarity of the tasks' concatenated patterns (§6), grouped by ``families`` (task →
    family; default from the task names)."""
    names = model.task_names
    with torch.no_grad():
        probs = [p.detach().cpu() for p in model.probabilities()]
        patterns = [z.detach().cpu() for z in model.allocation()]
    layers = [{"layer": f"layer{r}", "components": int(p.shape[1]),
               "p": {t: p[i].tolist() for i, t in enumerate(names)},
               "pattern": {t: [int(v) for v in z[i].tolist()] for i, t in enumerate(names)}}
              for r, (p, z) in enumerate(zip(probs, patterns))]
    binary = torch.cat(patterns, dim=1).numpy()
    soft = torch.cat(probs, dim=1).numpy()
    return {"method": method, "router": "learned" if model.learned else "fixed", "aggregation": model.aggregation,
            "tasks": names, "total_components": model.total_components, "layers": layers,
            "active_fraction": {t: float(binary[i].mean()) for i, t in enumerate(names)},
            "similarity": similarity_summary(names, binary, soft,
                                             [families[t] for t in names] if families else None),
            "options": options}


@register_method
class GumbelMatrix(_Routing):
    name = "gumbel_matrix"
    description = ("parameter allocation: routed layers of parallel components, each task's connections learned as "
                   "straight-through Gumbel-sigmoid samples (round-robin over tasks)")
    Options = GumbelMatrixOptions
    options: GumbelMatrixOptions
    # p0 near 1: six updates cannot switch a connection off (cost checks need no all-zero layer)
    conformance_options = {"network": "mlp", "widths": [8, 8], "p0": 0.9, "budget_penalty": 1.0, "budget": 0.5,
                           "entropy": 0.1}

    def make_router(self, num_tasks: int, num_components: int) -> nn.Module:
        return gumbel_router(num_tasks, num_components, self.options.p0)

    def model_options(self) -> dict[str, Any]:
        o = self.options
        return {"tau": tuple(o.tau), "budget": o.budget, "budget_penalty": o.budget_penalty, "entropy": o.entropy,
                "entropy_alpha": o.entropy_alpha, "l2": o.l2}


@register_method
class NoSharing(_Routing):
    name = "no_sharing"
    description = "routed network with a fixed identity router: task i uses component i of every routed layer"
    Options = FixedRouterOptions
    options: FixedRouterOptions
    conformance_options = {"network": "mlp", "widths": [8, 8], "components": "tasks"}

    def make_router(self, num_tasks: int, num_components: int) -> nn.Module:
        if num_components != num_tasks:
            raise ConfigError(f"method no_sharing: every routed layer needs one component per task (C = T = "
                              f"{num_tasks}), a layer has {num_components}; set method.components: tasks "
                              f"(mnist, mlp) or use shared_bottom")
        return identity_router(num_tasks, num_components)

    def model_options(self) -> dict[str, Any]:
        return {"l2": self.options.l2}


@register_method
class SharedBottom(_Routing):
    name = "shared_bottom"
    description = "routed network with a fixed all-ones router: every task uses every component (summed by default)"
    Options = SharedBottomOptions
    options: SharedBottomOptions
    conformance_options = {"network": "mlp", "widths": [8, 8]}

    def make_router(self, num_tasks: int, num_components: int) -> nn.Module:
        return all_ones_router(num_tasks, num_components)

    def model_options(self) -> dict[str, Any]:
        return {"aggregation": self.options.aggregation, "l2": self.options.l2}


__all__ = ["ALLOCATION", "CHECKPOINTS", "task_families", "FixedRouterOptions", "GumbelMatrix", "GumbelMatrixOptions", "NetworkOptions", "NoSharing",
           "SharedBottom", "SharedBottomOptions", "allocation_record"]
