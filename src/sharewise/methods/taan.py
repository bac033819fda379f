"""``taan``: task-adaptive activation network (Liu et al., AAAI-20; TAAN specification §2, §5.4).

Every weight is shared; each hidden layer is a :class:`~sharewise.layers.TALLinear`
``f_t(W x + b)`` whose activation ``f_t(z) = ReLU(z) + Σ_m α_{t,m} ReLU(β_m − z)`` is the only
task-specific part (T·M slopes per layer). The functional regulariser ``c · Σ_layers R`` (§2.2:
``distance``, ``cosine``, ``l21``, ``nuclear``) is returned by :meth:`TAANModel.aux_losses` and
added once per optimisation step. After the first TAL the features differ per task, so all T
tasks cost the first affine map once plus T times the rest (§3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..errors import ConfigError
from ..layers import TALConv2d, TALLinear
from ..layers.tal import check_regularizer
from ..tasks import Task
from ._soft import SoftMethod, SoftOptions, SoftSharingModel, check_trunk
from .base import BuildContext, OptimSpec, Phase, register_method


class TAANOptions(SoftOptions):
    num_basis: int = Field(24, ge=1, description="M hinges per layer (Youtube-8M README runs: 64)")
    regularizer: str = Field("none", description="none, distance, cosine, l21 or nuclear (§2.2)")
    c: float = Field(0.1, ge=0, description="coefficient of the functional regulariser")
    measure: Literal["standard", "ema"] = Field("standard", description="the Gaussian measure of z (§2.2)")
    bn: bool | None = Field(None, description="BatchNorm after each affine map (default: mlp false as "
                                              "Youtube-8M, conv true)")
    bn_stats: Literal["per_task", "pooled"] = Field("per_task", description="BN statistics with several tasks")
    basis_grad: bool | None = Field(None, description="force the regulariser's gradient to β on/off "
                                                      "(default: distance and nuclear yes, cosine no)")
    cosine_detach_norms: bool = Field(False, description="cosine: stop-gradient through the norms (the reference)")
    nuclear_metric: Literal["euclidean", "function"] = Field("euclidean", description="nuclear: ‖α‖_* or ‖α W^½‖_*")
    padding: Literal["same", "valid"] = Field("same", description="conv: same (k // 2) or valid (none: TAAN's "
                                                                    "Omniglot network, §6)")
    fc_widths: list[int] = Field(default_factory=list, description="conv: TALLinear layers on the flattened feature "
                                                                   "maps before the heads (§6: [512]); none: heads "
                                                                   "on the spatial mean")
    head_init_std: float | None = Field(None, gt=0, description="heads' weights N(0, std²), biases 0 (§6: 0.01); "
                                                                "default: nn.Linear's initialisation")
    no_decay: list[Literal["alpha", "beta"]] = Field(
        default_factory=list, description="the slopes α and/or hinges β stepped without weight decay (§5.5; the "
                                          "reference decays every parameter)")

    @field_validator("regularizer")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            return check_regularizer(v)
        except Exception as err:  # the layer's message (e.g. tracenorm → l21 or nuclear), as a validation error
            raise ValueError(str(err)) from None


class TAANModel(SoftSharingModel):
    """``in_features``: the input width (conv trunk: its channels); ``input_shape`` ``(C, H, W)``
    is needed for ``fc_widths`` (the flattened maps' size). ``layers``: every TAL, the
    convolutions first (``num_conv`` of them), then the fully connected ones."""

    def __init__(self, in_features: int, tasks: Sequence[Task], opts: TAANOptions,
                 input_shape: Sequence[int] | None = None) -> None:
        fc = list(opts.fc_widths) if opts.trunk == "conv" else []
        super().__init__(tasks, fc[-1] if fc else opts.widths[-1], opts)
        names = [t.name for t in tasks]
        dims = [in_features, *opts.widths]
        common = dict(task_names=names, regularizer=opts.regularizer, measure=opts.measure, basis_grad=opts.basis_grad,
                      cosine_detach_norms=opts.cosine_detach_norms, nuclear_metric=opts.nuclear_metric,
                      bn_stats=opts.bn_stats)
        if self.conv:
            k = opts.kernel_size
            pad = k // 2 if opts.padding == "same" else 0
            layers = [TALConv2d(a, b, k, len(names), opts.num_basis, padding=pad,
                                bn=True if opts.bn is None else opts.bn, **common) for a, b in zip(dims[:-1], dims[1:])]
            if fc:
                if input_shape is None:
                    raise ValueError("fc_widths needs the input shape (C, H, W)")
                height, width = int(input_shape[-2]), int(input_shape[-1])
                for _ in opts.widths:
                    height, width = height - 2 * (k // 2 - pad), width - 2 * (k // 2 - pad)
                    if opts.pool:
                        height, width = height // 2, width // 2
                if height < 1 or width < 1:
                    raise ConfigError(f"method.widths: {len(opts.widths)} {opts.padding} convolutions"
                                      f"{' and pools' if opts.pool else ''} leave no pixel of a "
                                      f"{input_shape[-2]}×{input_shape[-1]} image")
                flat = [opts.widths[-1] * height * width, *fc]
                layers += [TALLinear(a, b, len(names), opts.num_basis, bn=False, **common)
                           for a, b in zip(flat[:-1], flat[1:])]
        else:
            layers = [TALLinear(a, b, len(names), opts.num_basis, bn=bool(opts.bn), **common)
                      for a, b in zip(dims[:-1], dims[1:])]
        self.layers = nn.ModuleList(layers)
        self.num_conv = len(opts.widths) if self.conv else 0
        self.c = float(opts.c)
        if opts.head_init_std is not None:
            with torch.no_grad():
                for t in self.task_names:
                    self.heads[t].weight.normal_(0.0, opts.head_init_std)
                    self.heads[t].bias.zero_()

    def _after(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Pooling after a convolution; the maps flattened ``(B, n, C·H·W)`` before the first
        fully connected TAL."""
        if index < self.num_conv:
            h = self._after_layer(h)
            if index == self.num_conv - 1 and len(self.layers) > self.num_conv:
                h = h.flatten(2)
        return h

    def features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        h = self._after(0, self.layers[0](x, ids))  # the first affine map once for every task
        for index, layer in enumerate(self.layers[1:], 1):
            h = self._after(index, layer(h, ids))
        return h

    def stacked_features(self, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
        h = x
        for index, layer in enumerate(self.layers):
            h = self._after(index, layer(h, ids))
        return h

    def forward_all_tasks(self, batches: Mapping[str, torch.Tensor], **kw: Any) -> dict[str, torch.Tensor]:
        if self.layers[0].norm is not None and len({len(x) for x in batches.values()}) > 1:
            # BatchNorm: a column of repeated rows would skew its task's statistics; one call per task
            return {t: self(x, tasks=[t])[t] for t, x in batches.items()}
        return super().forward_all_tasks(batches, **kw)

    def shared_modules(self) -> list[nn.Module]:
        return [self.layers]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        slopes = [layer.alpha for layer in self.layers]
        hinges = [layer.beta for layer in self.layers]
        special = {id(p) for p in slopes + hinges}
        return self._split_no_decay({"backbone": [p for p in self.layers.parameters() if id(p) not in special],
                                     "activations": slopes + hinges, "heads": list(self.heads.parameters())})

    def decay_kinds(self) -> dict[str, list[nn.Parameter]]:
        return {"alpha": [layer.alpha for layer in self.layers], "beta": [layer.beta for layer in self.layers]}

    def aux_losses(self, **_: Any) -> dict[str, torch.Tensor]:
        if self.layers[0].regularizer == "none":
            return {}
        return {"functional_regularizer": sum(layer.regularization(self.c) for layer in self.layers)}

    @torch.no_grad()
    def sync_running_moments(self) -> None:
        """Average the TAL layers' running moments of z over processes (each process updated them
        on its shard of the batch; the mean is the global batch's update), so replicas agree."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        size = torch.distributed.get_world_size()
        for layer in self.layers:
            for buf in layer.running_moments():
                torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
                buf.div_(size)

    @torch.no_grad()
    def similarity(self, grid_points: int = 121) -> list[dict[str, Any]]:
        """Per TAL layer (§2.3): ``‖f_s − f_t‖²`` and the cosine similarity (T×T) under the
        layer's measure ``(μ, σ)``, the observed mean and sd of its pre-activations (§2.2: the
        standard measure is only nominal without BN), and every task's ``f_t`` on ``grid_points``
        points of [−3, 3]."""
        out = []
        for layer in self.layers:
            sim = layer.similarity()
            mu, sigma = layer.measure_params()
            z = torch.linspace(-3.0, 3.0, grid_points, dtype=layer.alpha.dtype, device=layer.alpha.device)
            out.append({"distance": sim["distance"].tolist(), "cosine": sim["cosine"].tolist(),
                        "measure": [float(mu), float(sigma)], "z_mean": float(layer.z_mean), "z_sd": float(layer.z_sd),
                        "curves": {"z": z.tolist(), "f": layer.curves(z).tolist()}})
        return out


@register_method
class TAAN(SoftMethod):
    name = "taan"
    description = ("task-adaptive activation network: shared weights, per-task activations with shared hinges; "
                   "functional regularisers (distance, cosine, l21, nuclear)")
    Options = TAANOptions
    conformance_options = {"widths": [16, 16], "num_basis": 4, "regularizer": "distance"}

    def build(self, ctx: BuildContext) -> TAANModel:
        check_trunk(self.options, ctx.input_spec)
        spec = ctx.input_spec
        return TAANModel(spec.in_channels if self.options.trunk == "conv" else spec.in_features, ctx.tasks, self.options,
                         input_shape=spec.shape)

    def optim(self, model: TAANModel) -> OptimSpec:
        """``optim.backbone_lr`` (when set) for the whole trunk, the activations α and β included;
        ``optim.lr`` for the heads (TAAN's Omniglot set-up: 1e−5 and 50× for the heads, §6)."""
        groups = list(model.param_groups())
        spec = self.default_optim(groups, backbone_groups=[g for g in groups if not g.startswith("heads")])
        spec.no_decay = tuple(g for g in groups if g.endswith("_no_decay"))
        return spec

    def phases(self, model: TAANModel, steps_per_epoch: int) -> list[Phase]:
        phases = super().phases(model, steps_per_epoch)
        phases[0].after_step = lambda state, split: model.sync_running_moments()
        return phases

    def results(self, ctx, model) -> dict[str, Any]:
        return {"tal_layers": model.similarity(), "task_order": model.task_names}

    @classmethod
    def report_sections(cls, run_dir: Path, plots_dir: Path) -> list[str]:
        from ._taan_report import taan_report

        return taan_report(Path(run_dir), Path(plots_dir))
