"""``dmtrl``: deep multi-task representation learning by tensor factorisation (Yang & Hospedales,
ICLR 2017; TAAN specification §4.5).

Each hidden layer's per-task weights ``𝒲 ∈ R^{d_in×d_out×T}`` are stored factorised
(:class:`~sharewise.layers.DMTRLLinear`: ``factorization`` tucker, tt or laf) and rebuilt once per
forward; a ReLU follows every layer (the original method; the TAAN reference's DMTRL is linear);
per-task linear heads. Sharing comes from the factors common to all tasks; there is no regulariser.

Initialisation (``init``): ``stl`` (default, as the original method) first trains single-task
networks of the same architecture (phase ``stl_pretrain``, the run's budget: ``train.epochs``,
``max_steps``, ``patience``, selected on validation), then decomposes each layer's stacked
weights (Tucker: truncated HOSVD, TT: TT-SVD, LAF: truncated SVD) with ranks ``ranks`` or by
relative precision ``eps`` (keep ``s_i > eps · s_1``), heads and biases taken from the single-task
networks; the factorised model is then trained (phase ``train``). ``random``: factors of
``0.01·N(0, 1)`` noise at explicit ranks (the reference's choice). The ranks found are the
candidate's (``selection.json``), so a checkpoint loads into a model of its own shape.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..errors import ConfigError
from ..layers import DMTRLConv2d, DMTRLLinear, TaskConv2d, TaskLinear
from ..layers.dmtrl import default_ranks
from ..tasks import Task
from ._soft import SoftMethod, SoftOptions, check_trunk
from ._task_columns import TaskColumnsModel, layer_dims, make_columns
from .base import BuildContext, Candidate, MethodContext, Phase, register_method


class DMTRLOptions(SoftOptions):
    factorization: Literal["tucker", "tt", "laf"] = Field("tucker", description="the spec's key `method`: tucker, "
                                                                                "tt (tensor train) or laf")
    init: Literal["stl", "random"] = Field("stl", description="stl: decompose single-task networks trained first; "
                                                              "random: factors of 0.01·N(0, 1) noise")
    eps: float = Field(0.1, ge=0, lt=1, description="stl: keep singular values > eps · the largest (when no ranks)")
    ranks: list[int] | list[list[int]] | None = Field(
        None, description="explicit ranks, for every layer ([r1, r2, r3] tucker, [r1, r2] tt, [k] laf) or one list "
                          "per layer; random init default tucker [32, 32, T], tt [32, T], laf [5]")
    no_decay: list[Literal["factors"]] = Field(default_factory=list,
                                               description="factors: the factorised weights stepped without weight decay")

    @field_validator("ranks")
    @classmethod
    def _positive(cls, v):
        if v is not None:
            flat = [r for item in v for r in (item if isinstance(item, list) else [item])]
            if not flat or any(r < 1 for r in flat):
                raise ValueError("ranks must be positive integers")
        return v

    def layer_ranks(self, layers: int, num_tasks: int) -> list[list[int] | None]:
        """The explicit ranks of each layer (None: chosen by eps)."""
        want = {"tucker": 3, "tt": 2, "laf": 1}[self.factorization]
        if self.ranks is None:
            default = default_ranks(self.factorization, num_tasks) if self.init == "random" else None
            return [default] * layers
        per_layer = self.ranks if isinstance(self.ranks[0], list) else [self.ranks] * layers
        if len(per_layer) != layers:
            raise ConfigError(f"method.ranks: {len(per_layer)} lists for {layers} layers (method.widths)")
        for r in per_layer:
            if len(r) != want:
                raise ConfigError(f"method.ranks: {self.factorization} needs {want} ranks per layer (got {r})")
        return [list(r) for r in per_layer]


def _conv_kw(layer: nn.Module) -> dict[str, Any]:
    if layer.feature_dims == 1:
        return {}
    return {"in_features": layer.in_features, "kernel_size": layer.kernel_size, "padding": layer.padding,
            "stride": layer.stride, "dilation": layer.dilation}


class DMTRLModel(TaskColumnsModel):
    """Factorised columns. ``DMTRLModel(in_features, tasks, opts, ranks)`` builds factors of the
    given ranks per layer from noise; :meth:`from_single_task` decomposes a trained single-task model."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: DMTRLOptions,
                 ranks: Sequence[Sequence[int]] | None = None) -> None:
        names = [t.name for t in tasks]
        dims = layer_dims(in_features, opts.widths)
        ranks = list(ranks) if ranks is not None else opts.layer_ranks(len(dims), len(names))
        if any(r is None for r in ranks):
            raise ValueError("DMTRLModel needs ranks for every layer (or from_single_task)")
        k = opts.kernel_size
        if opts.trunk == "conv":
            columns = [DMTRLConv2d(a, b, k, len(names), opts.factorization, ranks=r, padding=k // 2, task_names=names)
                       for (a, b), r in zip(dims, ranks)]
        else:
            columns = [DMTRLLinear(a, b, len(names), opts.factorization, ranks=r, task_names=names)
                       for (a, b), r in zip(dims, ranks)]
        super().__init__(tasks, opts, [], columns)

    @classmethod
    def from_single_task(cls, stl: TaskColumnsModel, opts: DMTRLOptions) -> "DMTRLModel":
        """Every layer of ``stl`` (a single-task model of the same architecture) decomposed at the
        options' ranks or precision ``eps``; its heads copied."""
        model = cls.__new__(cls)
        TaskColumnsModel.__init__(model, stl.tasks, opts, [], [])
        explicit = opts.layer_ranks(len(stl.columns), len(stl.tasks))
        kind = DMTRLConv2d if opts.trunk == "conv" else DMTRLLinear
        model.columns = nn.ModuleList(
            kind.from_weights(layer.weight, layer.bias, opts.factorization, ranks=r, eps=opts.eps,
                              task_names=stl.task_names, **_conv_kw(layer))
            for layer, r in zip(stl.columns, explicit))
        model.heads = copy.deepcopy(stl.heads)
        return model

    def ranks(self) -> list[list[int]]:
        return [layer.ranks for layer in self.columns]

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        return {"factors": [p for layer in self.columns for name, p in layer.named_parameters() if "biases" not in name]}


class SingleTaskModel(TaskColumnsModel):
    """The single-task networks DMTRL's ``stl`` initialisation trains first: dense columns of the
    same architecture (:class:`~sharewise.layers.TaskLinear` / ``TaskConv2d``), ReLU after each."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: SoftOptions) -> None:
        names = [t.name for t in tasks]
        super().__init__(tasks, opts, [], make_columns(opts, layer_dims(in_features, opts.widths), names,
                                                       TaskLinear, TaskConv2d))


@register_method
class DMTRL(SoftMethod):
    name = "dmtrl"
    description = ("deep multi-task representation learning: per-task layers stored as a Tucker, tensor-train or "
                   "LAF factorisation of the stacked weights, initialised from single-task networks")
    Options = DMTRLOptions
    conformance_options = {"widths": [16, 16], "factorization": "tucker"}

    def _in_features(self, ctx: BuildContext) -> int:
        spec = ctx.input_spec
        return spec.in_channels if self.options.trunk == "conv" else spec.in_features

    def build(self, ctx: BuildContext) -> TaskColumnsModel:
        """``stl``: the single-task model trained first (the factorised model is built from it);
        ``random``: the factorised model."""
        check_trunk(self.options, ctx.input_spec)
        if self.options.init == "stl":
            return SingleTaskModel(self._in_features(ctx), ctx.tasks, self.options)
        return DMTRLModel(self._in_features(ctx), ctx.tasks, self.options)

    def train_candidates(self, ctx: MethodContext, run_phases, *, resume: bool = False, stage: str | None = None):
        steps = ctx.batches_per_epoch("train")
        summaries: list[dict[str, Any]] = []
        model = ctx.model
        if self.options.init == "stl":
            stl = ctx.model
            pretrain = super().phases(stl, steps)[0]
            pretrain.name = "stl_pretrain"
            summaries += run_phases(stl, [pretrain], resume=resume)  # leaves the best-validation state in stl
            model = DMTRLModel.from_single_task(stl, self.options).to(ctx.device)
        phases = self.phases(model, steps)
        summaries += run_phases(model, phases, resume=resume)
        info = {"factorization": self.options.factorization, "init": self.options.init, "ranks": model.ranks()}
        return [Candidate("main", f"checkpoints/{phases[-1].name}/best.pt", info=info)], summaries

    def candidate_model(self, ctx: MethodContext, candidate: Candidate) -> DMTRLModel:
        return DMTRLModel(self._model_in_features(ctx), ctx.tasks, self.options,
                          candidate.info["ranks"]).to(ctx.device)

    @staticmethod
    def _model_in_features(ctx: MethodContext) -> int:
        """The trunk's input width (conv: channels), from the run's model (built for this data)."""
        return ctx.model.columns[0].in_features

    def results(self, ctx, model) -> dict[str, Any]:
        return {"dmtrl": {"factorization": self.options.factorization, "init": self.options.init,
                          "ranks": model.ranks(), "task_order": model.task_names}}
