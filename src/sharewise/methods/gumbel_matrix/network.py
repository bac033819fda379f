"""The routed multi-task network of parameter allocation and its presets (spec §1, §2, §7).

A network is a stack of layers: routed layers (:class:`~sharewise.layers.routing.RoutedLayer`,
C parallel components, one router each) and trivial layers shared by every task (pooling,
GroupNorm, ReLU, flatten, the stem convolution), then dropout and one linear head per task.

Execution (never what is computed): in training the current task's routed layers evaluate every
component (the straight-through gradient reaches the gates of unselected ones, §2.4), those of a
kind as one grouped operation, and the parameters of components behind a zero weight get no
gradient (exact: their weight is 0); at inference a component no task selects is not computed,
and tasks with the same allocation so far share one activation (a component several tasks
select on the same input is computed once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ...layers import (ConvComponent, DenseComponent, FixedRouter, GumbelMatrixRouter, IdentityComponent,
                       PoolComponent, RoutedLayer, bernoulli_entropy, combine, gumbel_noise, inverse_sqrt_temperature)
from ...seeding import generator
from ...tasks import Task
from ..base import MultiTaskModel, TaskHeads

Preset = Literal["mnist", "omniglot", "clusters", "mlp"]
PRESET_COMPONENTS = {"mnist": 4, "omniglot": 7, "clusters": 16}


# ----------------------------------------------------------------------------- presets


def mnist_layers(in_channels: int, components: int = 4, filters: int = 4) -> list[nn.Module]:
    """§7.1: conv5×5+ReLU (routed) → AvgPool2 → conv3×3+ReLU (routed) → AvgPool2 → conv3×3+ReLU
    (routed) → flatten; C components of ``filters`` filters, valid padding (28 → 24 → 12 → 10 → 5 → 3)."""

    def conv(cin: int, k: int) -> ConvComponent:
        return ConvComponent(cin, [(filters, (k, k), 1, None, True)], padding="valid")

    return [RoutedLayer([conv(in_channels, 5) for _ in range(components)]), nn.AvgPool2d(2),
            RoutedLayer([conv(filters, 3) for _ in range(components)]), nn.AvgPool2d(2),
            RoutedLayer([conv(filters, 3) for _ in range(components)]), nn.Flatten()]


def _norm_relu(channels: int, eps: float) -> list[nn.Module]:
    return [nn.GroupNorm(4, channels, eps=eps), nn.ReLU()]


OMNIGLOT_STRIDED = tuple(sorted({int(1.6 * i) for i in range(5)}))  # (0, 1, 3, 4, 6): 105 → 4 in 8 layers


def omniglot_layers(in_channels: int, filters: int = 48, eps: float = 1e-6, num_layers: int = 8,
                    strided: Sequence[int] = OMNIGLOT_STRIDED) -> list[nn.Module]:
    """§7.2: stem conv1×1 → GN(4) → ReLU, then 8 routed layers of 7 components ("same"): conv3×3²,
    conv5×5², conv7×7², conv1×7→conv7×1 (each conv + GN(4) + ReLU), max- and average-pool 3×3,
    identity; a shared GN(4) + ReLU after each. Layers ⌊1.6·i⌋ (i = 0..4) stride the last op of
    every component by 2 (the identity becomes a 1×1 conv of stride 2, no norm, no activation);
    ``strided`` names other layers to stride (a smaller image that should keep the published final
    4×4 map: 28 × 28 with layers 0, 1, 3 gives 28 → 14 → 7 → 7 → 4 → 4 → 4 → 4 → 4)."""
    strided = set(strided)
    layers: list[nn.Module] = [ConvComponent(in_channels, [(filters, (1, 1), 1, 4, True)], padding="same", eps=eps)]
    for index in range(num_layers):
        stride = 2 if index in strided else 1

        def chain(kernels: Sequence[tuple[int, int]], stride: int = stride) -> ConvComponent:
            ops = [(filters, k, stride if i == len(kernels) - 1 else 1, 4, True) for i, k in enumerate(kernels)]
            return ConvComponent(filters, ops, padding="same", eps=eps)

        identity = (ConvComponent(filters, [(filters, (1, 1), 2, None, False)], padding="same", eps=eps)
                    if stride == 2 else IdentityComponent())
        layers.append(RoutedLayer([chain([(3, 3), (3, 3)]), chain([(5, 5), (5, 5)]), chain([(7, 7), (7, 7)]),
                                   chain([(1, 7), (7, 1)]), PoolComponent("max", 3, stride),
                                   PoolComponent("avg", 3, stride), identity]))
        layers.extend(_norm_relu(filters, eps))
    layers.append(nn.Flatten())
    return layers


def clusters_layers(in_channels: int, filters: int = 8, eps: float = 1e-6, per_kernel: int = 8) -> list[nn.Module]:
    """§7.3: stem conv1×1 (8) → GN(4) → ReLU, then 3 routed layers of 8 × conv3×3 and 8 × conv5×5
    (8 filters, "same", stride 2, each + GN(4) + ReLU), a shared GN(4) + ReLU after each; 32 → 16 → 8 → 4."""
    layers: list[nn.Module] = [ConvComponent(in_channels, [(filters, (1, 1), 1, 4, True)], padding="same", eps=eps)]
    for _ in range(3):
        comps = [ConvComponent(filters, [(filters, (k, k), 2, 4, True)], padding="same", eps=eps)
                 for k in (3, 5) for _ in range(per_kernel)]
        layers.append(RoutedLayer(comps))
        layers.extend(_norm_relu(filters, eps))
    layers.append(nn.Flatten())
    return layers


def mlp_layers(in_features: int, components: int, widths: Sequence[int]) -> list[nn.Module]:
    """Routed linear layers (+ ReLU) on flattened inputs: for tables and small images."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for w in widths:
        layers.append(RoutedLayer([DenseComponent(width, w) for _ in range(components)]))
        width = w
    return layers


def preset_layers(preset: Preset, input_shape: Sequence[int], *, components: int | None, widths: Sequence[int],
                  eps: float, filters: int | None = None,
                  strided_layers: Sequence[int] | None = None) -> list[nn.Module]:
    """The layers of a preset; ``filters`` (default the preset's: mnist 4, omniglot 48, clusters 8);
    ``strided_layers`` (omniglot: default :data:`OMNIGLOT_STRIDED`)."""
    channels = int(input_shape[0]) if len(input_shape) == 3 else 1
    width = {"filters": filters} if filters else {}
    if preset == "mnist":
        return mnist_layers(channels, components or PRESET_COMPONENTS["mnist"], **width)
    if preset == "omniglot":
        strides = {"strided": tuple(strided_layers)} if strided_layers is not None else {}
        return omniglot_layers(channels, eps=eps, **width, **strides)
    if preset == "clusters":
        return clusters_layers(channels, eps=eps, **width)
    features = 1
    for d in input_shape:
        features *= int(d)
    return mlp_layers(features, components or 1, widths)


def keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels and Dense weights, zero biases (§7)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- the model


class RoutedNetwork(MultiTaskModel):
    """Routed layers with one router each, then dropout and a linear head per task (§1).

    ``forward(x, tasks=None, step=None, tau=None)``: in training, each task's allocation is one
    straight-through Gumbel-sigmoid sample per connection for update ``step`` (noise from the run's
    ``gumbel`` stream at that step, so a resumed run draws the same), at temperature ``tau``
    (default τ(step), §2.3); in evaluation the deterministic pattern ``p ≥ 0.5``. Fixed routers
    use their matrix in both. ``aggregation``: ``mean`` of the selected components (§2.4) or ``sum``
    (``shared_bottom``'s reference)."""

    def __init__(self, layers: Sequence[nn.Module], routers: Sequence[nn.Module], tasks: list[Task], *,
                 input_shape: Sequence[int], aggregation: Literal["mean", "sum"] = "mean", dropout: float = 0.5,
                 seed: int = 0, tau: tuple[float, float] = (50.0, 0.5), budget: float = 1.0,
                 budget_penalty: float = 0.0, entropy: float = 0.0, entropy_alpha: float = 1.0,
                 total_updates: int | None = None, l2: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.layers = nn.ModuleList(layers)
        self.routed_index = [i for i, layer in enumerate(self.layers) if isinstance(layer, RoutedLayer)]
        if len(routers) != len(self.routed_index):
            raise ValueError(f"{len(self.routed_index)} routed layers need as many routers, got {len(routers)}")
        for r, (i, router) in enumerate(zip(self.routed_index, routers)):
            if router.num_components != len(self.layers[i]):
                raise ValueError(f"routed layer {r}: {len(self.layers[i])} components, its router has "
                                 f"{router.num_components}")
        self.routers = nn.ModuleList(routers)
        self.aggregation = aggregation
        self.seed = int(seed)
        self.tau = (float(tau[0]), float(tau[1]))
        self.budget, self.budget_penalty = float(budget), float(budget_penalty)
        self.entropy, self.entropy_alpha = float(entropy), float(entropy_alpha)
        self.total_updates = total_updates
        self.l2 = float(l2)
        self._task_index = {t.name: i for i, t in enumerate(self.tasks)}
        # per-example output shape of every routed layer and the feature width (a dry run)
        shapes, h = [], torch.zeros(1, *input_shape)
        with torch.no_grad():
            for layer in self.layers:
                h = layer(h, [0])[:, 0] if isinstance(layer, RoutedLayer) else layer(h)
                if isinstance(layer, RoutedLayer):
                    shapes.append(tuple(h.shape[1:]))
        self.out_shapes = shapes
        self.out_features = int(h[0].numel())
        self.dropout = nn.Dropout(dropout)
        self.heads = TaskHeads(self.out_features, self.tasks)

    # -- routing -----------------------------------------------------------------------------

    @property
    def num_components(self) -> list[int]:
        return [len(self.layers[i]) for i in self.routed_index]

    @property
    def total_components(self) -> int:
        """C_tot = Σ_ℓ C_ℓ over the routers built (§3)."""
        return sum(r.num_components for r in self.routers)

    @property
    def learned(self) -> bool:
        return any(getattr(r, "learned", False) for r in self.routers)

    def temperature(self, step: int) -> float:
        return inverse_sqrt_temperature(step, *self.tau)

    def probabilities(self) -> list[torch.Tensor]:
        """``p`` (T, C_ℓ) per routed layer."""
        return [r.probabilities() for r in self.routers]

    def allocation(self) -> list[torch.Tensor]:
        """The deterministic binary pattern (T, C_ℓ) per routed layer (§2.5)."""
        return [r.allocation() for r in self.routers]

    def _samples(self, ids: Sequence[int], step: int | None, tau: float | None) -> list[dict[int, torch.Tensor]]:
        if not self.training:
            patterns = self.allocation()
            return [{t: p[t] for t in ids} for p in patterns]
        noise: list[torch.Tensor | None] = [None] * len(self.routers)
        if self.learned:
            gen = generator(self.seed, "gumbel", step) if step is not None else None
            total = gumbel_noise((len(self.tasks), self.total_components, 2), gen, "offset")
            device = next(self.parameters()).device
            noise = list(total.to(device).split(self.num_components, dim=1))
            if tau is None:
                tau = self.temperature(step) if step is not None else self.tau[1]
        return [{t: router.sample(t, tau, None if n is None else n[t]) for t in ids}
                for router, n in zip(self.routers, noise)]

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, step: int | None = None,
                tau: float | None = None, **_: Any) -> dict[str, torch.Tensor]:
        names = list(tasks or self.task_names)
        ids = [self._task_index[t] for t in names]
        samples = self._samples(ids, step, tau)
        groups: list[tuple[list[int], torch.Tensor]] = [(ids, x)]  # tasks sharing one activation
        r = 0
        for layer in self.layers:
            if not isinstance(layer, RoutedLayer):
                groups = [(g, layer(h)) for g, h in groups]
                continue
            z = samples[r]
            groups = [part for g, h in groups for part in self._routed(layer, r, g, h, z)]
            r += 1
        out: dict[int, torch.Tensor] = {}
        for g, h in groups:
            features = self.dropout(h)
            for t in g:
                out[t] = self.heads[self.tasks[t].name](features)
        return {name: out[t] for name, t in zip(names, ids)}

    def _routed(self, layer: RoutedLayer, r: int, group: list[int], h: torch.Tensor,
                z: dict[int, torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
        """One routed layer for the tasks ``group`` sharing the input ``h``."""
        used = sorted({j for t in group for j in torch.nonzero(z[t]).flatten().tolist()})
        if self.training and self.routers[r].learned:
            # dense: every component, for the straight-through gradient of every gate; the
            # parameters of components no task here selects get none (their weight is exactly 0)
            outputs = layer(h, detached=[j for j in range(len(layer)) if j not in used])
            return [([t], combine(outputs, z[t], self.aggregation)) for t in group]
        if not self.training:
            return self._routed_eval(layer, r, group, h, z)
        # a fixed pattern in training: only the selected components, each task its own activation
        # (its own dropout and gradient path)
        by_pattern: dict[tuple[int, ...], list[int]] = {}
        for t in group:
            by_pattern.setdefault(tuple(torch.nonzero(z[t]).flatten().tolist()), []).append(t)
        outputs = layer(h, used) if used else None
        position = {j: i for i, j in enumerate(used)}
        result = []
        for pattern, tasks in by_pattern.items():
            if not pattern:
                result.append((tasks, h.new_zeros((h.shape[0], *self.out_shapes[r]))))
                continue
            picked = outputs if len(pattern) == len(used) else outputs[:, [position[j] for j in pattern]]
            ones = h.new_ones(len(pattern))
            result.extend(([t], combine(picked, ones, self.aggregation)) for t in tasks)
        return result

    def _routed_eval(self, layer: RoutedLayer, r: int, group: list[int], h: torch.Tensor,
                     z: dict[int, torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
        """Inference for the tasks ``group`` sharing the input ``h``: the components some task
        selects, each computed once (those of one kind as one grouped operation); a pattern of one
        component is that component's output (a view), the patterns of several are mixed in one
        product ``(patterns, B, …)`` without gathering their components first; tasks with one
        pattern share its activation; a task that selects nothing gets zeros (§2.4)."""
        by_pattern: dict[tuple[int, ...], list[int]] = {}
        for t in group:
            by_pattern.setdefault(tuple(torch.nonzero(z[t]).flatten().tolist()), []).append(t)
        result = [(tasks, h.new_zeros((h.shape[0], *self.out_shapes[r])))
                  for pattern, tasks in by_pattern.items() if not pattern]
        used = sorted({j for pattern in by_pattern for j in pattern})
        if not used:
            return result
        outputs = layer(h, used)  # (B, len(used), …)
        position = {j: i for i, j in enumerate(used)}
        several = [pattern for pattern in by_pattern if len(pattern) > 1]
        if several:
            weights = h.new_zeros(len(several), len(used))  # (patterns, used components)
            for i, pattern in enumerate(several):
                weights[i, [position[j] for j in pattern]] = 1.0 / len(pattern) if self.aggregation == "mean" else 1.0
            mixed = dict(zip(several, torch.einsum("pc,bc...->pb...", weights, outputs)))
        for pattern, tasks in by_pattern.items():
            if len(pattern) == 1:
                result.append((tasks, outputs[:, position[pattern[0]]]))
            elif pattern:
                result.append((tasks, mixed[pattern]))
        return result

    # -- the method contract -----------------------------------------------------------------

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.layers.parameters()), "heads": list(self.heads.parameters()),
                "router": list(self.routers.parameters())}

    def aux_losses(self, tasks: Sequence[str] | None = None, step: int | None = None,
                   **_: Any) -> dict[str, torch.Tensor]:
        """The current task's auxiliary losses (§3): ``budget`` = λ_b · max(0, Σ_{ℓ,j} p_tj / C_tot − b)
        on the expected fraction of active connections; ``entropy`` = λ_H · (t / T_total)^α · H_t;
        ``l2`` = l2 · Σ_w ½‖w‖² (:meth:`l2_tensors`)."""
        out: dict[str, torch.Tensor] = {}
        if self.l2 > 0:
            out["l2"] = self.l2 * 0.5 * sum(w.square().sum() for w in self.l2_tensors())
        if not self.learned:
            return out
        ids = [self._task_index[t] for t in (tasks or self.task_names)]
        p = torch.cat(self.probabilities(), dim=1)[ids]  # (tasks, C_tot)
        if self.budget_penalty > 0:
            fraction = p.sum(1) / self.total_components
            out["budget"] = self.budget_penalty * torch.relu(fraction - self.budget).sum()
        if self.entropy > 0 and step is not None and self.total_updates:
            anneal = (step / self.total_updates) ** self.entropy_alpha
            out["entropy"] = self.entropy * anneal * bernoulli_entropy(p).sum()
        return out

    def l2_tensors(self) -> list[torch.Tensor]:
        """What the L2 term of §3 covers: every trainable tensor but biases and router logits
        (convolution and linear weights, heads included; GroupNorm γ and β)."""
        out: list[torch.Tensor] = []
        for m in [*self.layers.modules(), *self.heads.modules()]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out.append(m.weight)
            elif isinstance(m, nn.GroupNorm) and m.affine:
                out.extend([m.weight, m.bias])
        return out

    def task_entropy(self) -> torch.Tensor:
        """``H_t = Σ_ℓ Σ_j H(Bern(p_tj))`` per task (T,) (§2.6, logged)."""
        with torch.no_grad():
            return bernoulli_entropy(torch.cat(self.probabilities(), dim=1)).sum(1)

    def task_modules(self, task: str) -> list[nn.Module]:
        """The task's selected components (deterministic pattern), the shared layers and its head;
        below a routed layer where the task selects nothing (an all-zero output) nothing is on its path."""
        index = self._task_index[task]
        patterns = [p[index] for p in self.allocation()]
        empty = [r for r, z in enumerate(patterns) if not bool(z.any())]
        first_on_path = self.routed_index[empty[-1]] + 1 if empty else 0
        modules: list[nn.Module] = []
        r = 0
        for i, layer in enumerate(self.layers):
            if isinstance(layer, RoutedLayer):
                if i >= first_on_path:
                    modules.extend(layer.components[j] for j in torch.nonzero(patterns[r]).flatten().tolist())
                r += 1
            elif i >= first_on_path:
                modules.append(layer)
        return [*modules, self.heads[task]]


def identity_router(num_tasks: int, num_components: int) -> FixedRouter:
    return FixedRouter(torch.eye(num_tasks, num_components))


def all_ones_router(num_tasks: int, num_components: int) -> FixedRouter:
    return FixedRouter(torch.ones(num_tasks, num_components))


def gumbel_router(num_tasks: int, num_components: int, p0: float) -> GumbelMatrixRouter:
    return GumbelMatrixRouter(num_tasks, num_components, p0)
