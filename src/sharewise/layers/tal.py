"""TAL, the task-adaptive activation layer of TAAN, and its functional regularisers.

Liu et al., "Adaptive Activation Network and Functional Regularization for Efficient and Flexible
Deep Multi-Task Learning", AAAI-20 (arXiv 1911.08065); sharewise's TAAN specification §2.

A TAL is a shared affine map, an optional shared BatchNorm, and a per-task activation::

    z      = BN(W x + b)                                        (shared by all tasks)
    f_t(z) = ReLU(z) + Σ_{m=1}^{M} α_{t,m} · ReLU(β_m − z)      (hinges β ∈ R^M shared, slopes α ∈ R^{T×M} per task)

The activation is evaluated with the hinges sorted: for ``k = #{m: β_m ≤ z}``,
``f_t(z) = ReLU(z) + Bᵗ_k − z · Aᵗ_k`` with the suffix sums ``Aᵗ_k = Σ_{m ≥ k} α_{t,(m)}`` and
``Bᵗ_k = Σ_{m ≥ k} α_{t,(m)} β_(m)``, so no (batch, width, M) tensor is formed: on a CPU by one
autograd node with compiled loops (:mod:`._tal_kernel`, with numba installed), otherwise by torch
ops (``searchsorted`` and gathers); the two give the same numbers.

The regularisers treat each f_t as a function in L²(p) with ``z ~ N(μ, σ²)`` and use the closed
forms of :func:`gaussian_moments` (``E00``, ``U``, ``W``) for the Gram matrix
``G_st = E00 + (α_s + α_t)·U + α_sᵀ W α_t`` (:func:`function_gram`).
"""

from __future__ import annotations

import abc

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._task_arg import check_task_names, resolve_task
from .per_task import TaskRows

REGULARIZERS = ("none", "distance", "cosine", "l21", "nuclear")
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / _SQRT_2PI


def _cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(x)


def gaussian_moments(beta: torch.Tensor, mu: float | torch.Tensor = 0.0, sigma: float | torch.Tensor = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``E00 = E[ReLU(z)²]``, ``U_m = E[ReLU(z) ReLU(β_m − z)]`` (M,), ``W_mn = E[ReLU(β_m − z) ReLU(β_n − z)]``
    (M, M) for ``z ~ N(μ, σ²)`` (spec §2.2), with ``a₀ = −μ/σ``, ``b_m = (β_m − μ)/σ``::

        E00  = σ² [(1 + a₀²)(1 − Φ(a₀)) − a₀ φ(a₀)]
        U_m  = σ² 1[β_m > 0] [b_m φ(a₀) − a₀ φ(b_m) − (1 + a₀ b_m)(Φ(b_m) − Φ(a₀))]
        W_mn = σ² [(1 + b_m b_n) Φ(min(b_m, b_n)) + max(b_m, b_n) φ(min(b_m, b_n))]

    φ and Φ are the exact standard normal pdf and cdf. The indicator 1[β_m > 0] (the two ReLUs
    overlap only when β_m > 0) is what the reference replaced by ReLU(β_m); not reproduced here.
    """
    mu = torch.as_tensor(mu, dtype=beta.dtype, device=beta.device)
    sigma = torch.as_tensor(sigma, dtype=beta.dtype, device=beta.device)
    var = sigma * sigma
    a0 = -mu / sigma
    b = (beta - mu) / sigma
    e00 = var * ((1 + a0 * a0) * (1 - _cdf(a0)) - a0 * _pdf(a0))
    u = var * (b * _pdf(a0) - a0 * _pdf(b) - (1 + a0 * b) * (_cdf(b) - _cdf(a0)))
    u = torch.where(beta > 0, u, torch.zeros_like(u))
    b_min = torch.minimum(b[:, None], b[None, :])
    b_max = torch.maximum(b[:, None], b[None, :])
    w = var * ((1 + b[:, None] * b[None, :]) * _cdf(b_min) + b_max * _pdf(b_min))
    return e00, u, w


def function_gram(alpha: torch.Tensor, e00: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``G_st = ⟨f_s, f_t⟩ = E00 + (α_s + α_t)·U + α_sᵀ W α_t`` (T, T)."""
    au = alpha @ u
    return e00 + au[:, None] + au[None, :] + alpha @ w @ alpha.T


def function_distances(alpha: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``‖f_s − f_t‖² = (α_s − α_t)ᵀ W (α_s − α_t)`` (T, T); the ReLU part cancels."""
    diff = alpha[:, None, :] - alpha[None, :, :]
    return torch.einsum("stm,mn,stn->st", diff, w, diff)


def functional_penalty(alpha: torch.Tensor, beta: torch.Tensor, regularizer: str, *, mu=0.0, sigma=1.0,
                       basis_grad: bool | None = None, cosine_detach_norms: bool = False,
                       nuclear_metric: str = "euclidean") -> torch.Tensor:
    """The penalty R of one TAL (spec §2.2 table); ``regularization(c)`` is ``c · R``.

    - ``distance``: ``(2/T) Σ_t (α_t − ᾱ)ᵀ W (α_t − ᾱ)`` (= ``(1/T²) Σ_{s,t} ‖f_s − f_t‖²``);
      the gradient reaches β through W by default (as the reference);
    - ``cosine``: ``−(1/T²) Σ_{s,t} G_st / (√G_ss √G_tt)``; U and W detached by default (gradient
      to α only), the norms not detached unless ``cosine_detach_norms``;
    - ``l21``: ``Σ_t √(‖α_t‖² + 1e−12)``, the L2,1 group penalty on the rows of α (the reference's
      "tracenorm"): it shrinks whole rows, i.e. pulls activations towards ReLU;
    - ``nuclear``: ``‖α‖_*`` (sum of singular values), or with ``nuclear_metric="function"``
      ``Σ_i √λ_i(α W αᵀ)``, the trace norm of the task parts in function space (β gets a gradient
      through W by default).

    ``basis_grad`` forces (True) or stops (False) the gradient to β for every regulariser.
    """
    if regularizer == "none":
        return alpha.new_zeros(())
    if regularizer == "l21":
        return torch.sqrt((alpha * alpha).sum(1) + 1e-12).sum()
    if regularizer == "nuclear" and nuclear_metric == "euclidean":
        return torch.linalg.svdvals(alpha).sum()
    grad_to_beta = basis_grad if basis_grad is not None else regularizer in ("distance", "nuclear")
    b = beta if grad_to_beta else beta.detach()
    e00, u, w = gaussian_moments(b, mu, sigma)
    num_tasks = alpha.shape[0]
    if regularizer == "distance":
        centred = alpha - alpha.mean(0, keepdim=True)
        return (2.0 / num_tasks) * torch.einsum("tm,mn,tn->", centred, w, centred)
    if regularizer == "cosine":
        gram = function_gram(alpha, e00, u, w)
        norms = torch.sqrt(torch.diagonal(gram).clamp_min(1e-12))
        if cosine_detach_norms:
            norms = norms.detach()
        return -(gram / (norms[:, None] * norms[None, :])).sum() / num_tasks ** 2
    if regularizer == "nuclear":
        if nuclear_metric != "function":
            raise ValueError(f"nuclear_metric must be 'euclidean' or 'function' (got {nuclear_metric!r})")
        inner = alpha @ w @ alpha.T
        eig = torch.linalg.eigvalsh(0.5 * (inner + inner.T))
        return torch.sqrt(eig.clamp_min(1e-12)).sum()
    raise ValueError(f"unknown regularizer {regularizer!r} (one of {', '.join(REGULARIZERS)})")


def check_regularizer(regularizer: str) -> str:
    if regularizer == "tracenorm":
        raise ConfigError("regularizer 'tracenorm' is ambiguous: the TAAN reference computed the L2,1 norm Σ_t ‖α_t‖₂ "
                          "(use 'l21'); the true trace norm of α is 'nuclear'")
    if regularizer not in REGULARIZERS:
        raise ConfigError(f"regularizer must be one of {', '.join(REGULARIZERS)} (got {regularizer!r})")
    return regularizer


def adaptive_activation(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, *, stacked: bool,
                        kernel: str = "auto") -> torch.Tensor:
    """``f_t(z) = ReLU(z) + Σ_m α_{t,m} ReLU(β_m − z)`` for the rows of ``alpha`` (n, M).

    ``stacked=False``: ``z`` (B, ...) shared by the n tasks → (B, n, ...); ``stacked=True``: ``z``
    (B, n, ...), task i on column i → (B, n, ...). ``kernel``: ``fused`` (one autograd node with
    compiled CPU loops, :mod:`sharewise.layers._tal_kernel`; needs numba), ``reference`` (torch
    ops: hinges sorted once, ``searchsorted`` per element) or ``auto`` (fused where it applies:
    CPU, float32/float64, numba installed). Both give the same values and gradients.
    """
    if kernel not in ("auto", "fused", "reference"):
        raise ValueError(f"kernel must be 'auto', 'fused' or 'reference' (got {kernel!r})")
    if kernel != "reference":
        from . import _tal_kernel

        if _tal_kernel.supported(z, alpha, beta):
            return _tal_kernel.TALActivation.apply(z, alpha, beta, stacked)
        if kernel == "fused":
            raise ValueError("the fused TAL kernel needs numba and CPU float32/float64 tensors of one dtype")
    return _reference_activation(z, alpha, beta, stacked=stacked)


def _reference_activation(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, *, stacked: bool) -> torch.Tensor:
    """:func:`adaptive_activation` by torch ops (any device and dtype; autograd differentiates it)."""
    n = alpha.shape[0]
    beta_sorted, perm = torch.sort(beta)
    a = alpha[:, perm]
    zeros = a.new_zeros(n, 1)
    slope_sum = torch.cat([a.flip(1).cumsum(1).flip(1), zeros], 1)  # (n, M+1): Σ_{m ≥ k} α_(m)
    offset_sum = torch.cat([(a * beta_sorted).flip(1).cumsum(1).flip(1), zeros], 1)  # Σ_{m ≥ k} α_(m) β_(m)
    k = torch.searchsorted(beta_sorted.detach().contiguous(), z.detach().contiguous(), right=True)
    if stacked:
        rows = torch.arange(n, device=z.device).view(1, n, *([1] * (z.ndim - 2)))
        return F.relu(z) + offset_sum[rows, k] - z * slope_sum[rows, k]
    sel_a = slope_sum[:, k].movedim(0, 1)  # (B, n, ...)
    sel_b = offset_sum[:, k].movedim(0, 1)
    zz = z.unsqueeze(1)
    return F.relu(zz) + sel_b - zz * sel_a


class _TAL(nn.Module, abc.ABC):
    """Shared parts of :class:`TALLinear` and :class:`TALConv2d`."""

    feature_dims = 1

    def _init_tal(self, num_tasks: int, num_basis: int, task_names, regularizer: str, measure, basis_grad,
                  cosine_detach_norms: bool, nuclear_metric: str, bn_stats: str, dropout: float, kernel: str) -> None:
        self.num_tasks, self.num_basis = int(num_tasks), int(num_basis)
        if kernel not in ("auto", "fused", "reference"):
            raise ValueError(f"kernel must be 'auto', 'fused' or 'reference' (got {kernel!r})")
        self.kernel = kernel
        self.task_names = check_task_names(self.num_tasks, task_names)
        if self.num_basis < 1:
            raise ValueError(f"num_basis must be >= 1 (got {num_basis})")
        self.regularizer = check_regularizer(regularizer)
        if not (measure in ("standard", "ema") or (isinstance(measure, Sequence) and len(measure) == 2)):
            raise ValueError(f"measure must be 'standard', 'ema' or (mu, sigma) (got {measure!r})")
        if not isinstance(measure, str) and float(measure[1]) <= 0:
            raise ValueError(f"measure sigma must be > 0 (got {measure[1]})")
        if bn_stats not in ("per_task", "pooled"):
            raise ValueError(f"bn_stats must be 'per_task' or 'pooled' (got {bn_stats!r})")
        if nuclear_metric not in ("euclidean", "function"):
            raise ValueError(f"nuclear_metric must be 'euclidean' or 'function' (got {nuclear_metric!r})")
        self.measure = measure if isinstance(measure, str) else (float(measure[0]), float(measure[1]))
        self.basis_grad, self.cosine_detach_norms, self.nuclear_metric = basis_grad, cosine_detach_norms, nuclear_metric
        self.bn_stats, self.dropout = bn_stats, float(dropout)
        self.slopes = TaskRows(torch.randn(self.num_tasks, self.num_basis) * 0.01)  # α (tasks, basis), N(0, 0.01²)
        self.beta = nn.Parameter(torch.rand(self.num_basis) - 0.5)  # hinges, Uniform(−0.5, 0.5)
        # running first and second moments of z over batch and units (momentum 0.1, like BatchNorm's
        # statistics), giving the mean and sd of the 'ema' measure and what to log to judge the
        # standard-normal assumption. Moments, not the sd itself, because they are linear in the
        # batch: the mean over processes of their updates is the update of the global batch
        # (:meth:`running_moments`, averaged by the method after a step)
        self.register_buffer("z_mean", torch.zeros(()))
        self.register_buffer("z_sq", torch.ones(()))

    @property
    def z_sd(self) -> torch.Tensor:
        """The running sd of z, ``√(E[z²] − E[z]²)`` from the running moments."""
        return (self.z_sq - self.z_mean.square()).clamp_min(0).sqrt()

    def running_moments(self) -> list[torch.Tensor]:
        """The buffers of the running statistics (averaged over processes after a step)."""
        return [self.z_mean, self.z_sq]

    @property
    def alpha(self) -> nn.Parameter:
        """The task-specific slopes α (T, M) (stored in ``slopes``, a row per task on each task's path)."""
        return self.slopes.value

    # ------------------------------------------------------------ forward

    @abc.abstractmethod
    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        """The shared affine part: ``W x + b`` (linear) or the convolution."""

    def _normalise(self, z: torch.Tensor, copies: int, stacked: bool) -> torch.Tensor:
        norm = self.norm
        if norm is None:
            return z
        if stacked:
            if self.bn_stats == "pooled":
                return norm(z.flatten(0, 1)).view(z.shape)
            # unbind, not z[:, i]: one backward node for all columns instead of a full-size zero
            # gradient per column (T² memory traffic with T tasks)
            return torch.stack([norm(column) for column in z.unbind(1)], 1)
        if copies > 1 and self.bn_stats == "per_task" and self.training and norm.track_running_stats:
            # T calls on the same batch: the same normalisation, running statistics updated T times
            momentum = 1.0 - (1.0 - norm.momentum) ** copies
            out = F.batch_norm(z, norm.running_mean, norm.running_var, norm.weight, norm.bias, True, momentum, norm.eps)
            norm.num_batches_tracked.add_(copies)
            return out
        return norm(z)

    def forward(self, x: torch.Tensor, task=None) -> torch.Tensor:
        """``task`` = int index or name → (B, d_out[, H, W]); None (or a ``single_task`` context
        giving the index) or a list of ids → (B, n, d_out[, H, W]). The input is shared, (B, d_in[, H, W]),
        or per task, (B, n, d_in[, H, W]) with one column per requested task."""
        single, ids = resolve_task(task, self.num_tasks, self.task_names)
        shared = x.ndim == 1 + self.feature_dims
        if not shared and x.ndim != 2 + self.feature_dims:
            raise ValueError(f"{type(self).__name__}: expected a ({'B, ' if shared else ''}...) input with "
                             f"{1 + self.feature_dims} (shared) or {2 + self.feature_dims} (per-task) dimensions, "
                             f"got {tuple(x.shape)}")
        if not shared and (single is not None or x.shape[1] != len(ids)):
            raise ValueError(f"{type(self).__name__}: a per-task input (B, n, ...) needs task=None or a list of n ids "
                             f"(got {x.shape[1]} columns for tasks {ids})")
        z = self._affine(x)
        z = self._normalise(z, 1 if single is not None else len(ids), not shared)
        if self.training and z.numel() > 1:
            with torch.no_grad():
                self.z_mean.mul_(0.9).add_(0.1 * z.mean())
                self.z_sq.mul_(0.9).add_(0.1 * z.square().mean())
        alpha = self.alpha if ids == list(range(self.num_tasks)) else self.alpha[ids]
        out = adaptive_activation(z, alpha, self.beta, stacked=not shared, kernel=self.kernel)
        if single is not None:
            out = out[:, 0]
        return F.dropout(out, self.dropout, self.training) if self.dropout else out

    # ------------------------------------------------------------ regulariser and analysis

    def measure_params(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(μ, σ) of the measure the closed forms use (detached)."""
        if self.measure == "standard":
            return 0.0, 1.0
        if self.measure == "ema":
            return self.z_mean.detach(), self.z_sd.detach().clamp_min(1e-6)
        return self.measure

    def penalty(self) -> torch.Tensor:
        mu, sigma = self.measure_params()
        return functional_penalty(self.alpha, self.beta, self.regularizer, mu=mu, sigma=sigma,
                                  basis_grad=self.basis_grad, cosine_detach_norms=self.cosine_detach_norms,
                                  nuclear_metric=self.nuclear_metric)

    def regularization(self, c: float) -> torch.Tensor:
        """``c · R`` (the layer's functional regulariser, :func:`functional_penalty`); 0 for ``none``."""
        if self.regularizer == "none":
            return self.alpha.new_zeros(())
        return c * self.penalty()

    @torch.no_grad()
    def similarity(self) -> dict[str, torch.Tensor]:
        """The T×T matrices ``‖f_s − f_t‖²`` and ``G_st / √(G_ss G_tt)`` under the layer's measure (§2.3)."""
        mu, sigma = self.measure_params()
        e00, u, w = gaussian_moments(self.beta, mu, sigma)
        gram = function_gram(self.alpha, e00, u, w)
        norms = torch.sqrt(torch.diagonal(gram).clamp_min(1e-12))
        return {"distance": function_distances(self.alpha, w), "cosine": gram / (norms[:, None] * norms[None, :])}

    @torch.no_grad()
    def curves(self, z: torch.Tensor) -> torch.Tensor:
        """Every task's activation on the points ``z`` (n,) → (T, n), e.g. on ``linspace(−3, 3)``."""
        return adaptive_activation(z, self.alpha, self.beta, stacked=False, kernel=self.kernel).T


class TALLinear(_TAL):
    """Task-adaptive activation layer on vectors: ``f_t(BN(W x + b))`` (spec §2.1).

    ``TALLinear(in_features, out_features, num_tasks, num_basis=24, bn=False)``; ``forward(x, task)``:
    ``task`` an int or a name of ``task_names`` → ``(B, out_features)``; None (all tasks, or the
    index of a ``single_task`` context) or a list of ids → ``(B, n, out_features)``. The input is
    ``(B, in_features)`` (the affine part is computed once for all tasks) or ``(B, n, in_features)``.
    ``regularization(c)`` is ``c ·`` :func:`functional_penalty` of ``regularizer``.
    BatchNorm statistics with several tasks: ``bn_stats="per_task"`` as T separate calls (the
    running statistics updated once per task), ``"pooled"`` over batch × tasks.
    ``kernel``: how the activation is computed (:func:`adaptive_activation`; same numbers).
    """

    def __init__(self, in_features: int, out_features: int, num_tasks: int, num_basis: int = 24, *, bn: bool = False,
                 bias: bool = True, task_names: Sequence[str] | None = None, regularizer: str = "none",
                 measure="standard", basis_grad: bool | None = None, cosine_detach_norms: bool = False,
                 nuclear_metric: str = "euclidean", bn_stats: str = "per_task", dropout: float = 0.0,
                 kernel: str = "auto") -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.norm = nn.BatchNorm1d(out_features) if bn else None
        self.in_features, self.out_features = in_features, out_features
        self._init_tal(num_tasks, num_basis, task_names, regularizer, measure, basis_grad, cosine_detach_norms,
                       nuclear_metric, bn_stats, dropout, kernel)

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class TALConv2d(_TAL):
    """Task-adaptive activation layer on feature maps: ``f_t(BN(conv(x)))``, BatchNorm2d over
    channels, the activation elementwise (spec §2.1).

    ``TALConv2d(in_channels, out_channels, kernel_size, num_tasks, num_basis=24, stride=1, padding=0,
    bn=True)``; ``forward(x, task)`` as :class:`TALLinear` with ``(B, C, H, W)`` (shared) or
    ``(B, n, C, H, W)`` (per task) inputs.
    """

    feature_dims = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size, num_tasks: int, num_basis: int = 24, *,
                 stride=1, padding=0, dilation=1, bias: bool = True, bn: bool = True,
                 task_names: Sequence[str] | None = None, regularizer: str = "none", measure="standard",
                 basis_grad: bool | None = None, cosine_detach_norms: bool = False, nuclear_metric: str = "euclidean",
                 bn_stats: str = "per_task", dropout: float = 0.0, kernel: str = "auto") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels) if bn else None
        self._init_tal(num_tasks, num_basis, task_names, regularizer, measure, basis_grad, cosine_detach_norms,
                       nuclear_metric, bn_stats, dropout, kernel)

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            b, n = x.shape[:2]
            z = self.conv(x.flatten(0, 1))
            return z.view(b, n, *z.shape[1:])
        return self.conv(x)
