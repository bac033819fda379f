"""DMTRL, tensor-factorised per-task layers (Yang & Hospedales, ICLR 2017; TAAN specification §4.5).

The per-task weights form ``𝒲 ∈ R^{d_in×d_out×T}`` (task axis last; conv: ``d_in = c_in·k·k``),
stored factorised and rebuilt at every forward for the tasks called; ``W_t = 𝒲[:, :, t]`` and
task t's output is ``x W_t + b_t`` (no activation inside the layer: the model puts a ReLU between
DMTRL layers, as the original method). Factorisations (``method``):

- ``tucker``: ``𝒲 = 𝒮 ×₁ U₁ ×₂ U₂ ×₃ U₃``, ``U_k ∈ R^{n_k×r_k}``, core ``𝒮 ∈ R^{r₁×r₂×r₃}``;
- ``tt`` (tensor train): ``𝒲[i, j, t] = G₁[i, :] · G₂[:, j, :] · G₃[:, t]``, ``G₁ ∈ R^{d_in×r₁}``,
  ``G₂ ∈ R^{r₁×d_out×r₂}``, ``G₃ ∈ R^{r₂×T}``;
- ``laf`` (last-axis flattening): ``𝒲`` reshaped to ``(d_in·d_out)×T`` is ``U V``, ``U ∈ R^{(d_in·d_out)×k}``,
  ``V ∈ R^{k×T}``.

The task-axis factor (``U₃``, ``G₃``, ``V``) and the biases are stored with a row per task
(``TaskRows``: ``(T, r)``, i.e. transposed), so a task's path holds its own row only.
Initialisation: :meth:`DMTRLLinear.from_weights` decomposes given per-task weights (the
single-task networks' stacked, as the original method): Tucker by truncated HOSVD, TT by TT-SVD,
LAF by truncated SVD; the ranks are given or chosen by relative precision ε (keep the singular
values ``s_i > ε · s_1``). Without weights the layer decomposes ``0.01·N(0, 1)`` noise at the
given ranks (the TAAN reference's choice). No regulariser: ``regularization(c)`` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .per_task import TaskRows
from .task_weights import TaskWeightLayer, linear_init

DMTRL_METHODS = ("tucker", "tt", "laf")


def default_ranks(method: str, num_tasks: int) -> list[int]:
    """The explicit ranks used with random initialisation (spec §4.5, ours): Tucker (32, 32, T),
    TT (32, T), LAF k = 5 (the reference's LAF rank)."""
    return {"tucker": [32, 32, num_tasks], "tt": [32, num_tasks], "laf": [5]}[method]


def _keep(s: torch.Tensor, rank: int | None, eps: float | None) -> int:
    """How many singular values (descending) to keep: ``rank`` (capped at their number), or those
    ``> eps · s_1`` (at least one)."""
    if rank is not None:
        return max(1, min(int(rank), s.numel()))
    return max(1, int((s > eps * s[0]).sum()))


def _check_ranks(method: str, ranks: Sequence[int] | None, eps: float | None) -> None:
    if method not in DMTRL_METHODS:
        raise ValueError(f"method must be one of {DMTRL_METHODS} (got {method!r})")
    if ranks is None and eps is None:
        raise ValueError("give ranks or eps")
    if ranks is not None:
        want = {"tucker": 3, "tt": 2, "laf": 1}[method]
        if len(ranks) != want or any(int(r) < 1 for r in ranks):
            raise ValueError(f"{method}: ranks must be {want} positive integers (got {list(ranks)})")
    if eps is not None and not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1) (got {eps})")


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float64 with each singular pair's sign fixed (the largest-magnitude entry of the
    left vector positive): weights that differ by rounding give factors that differ by rounding,
    not by sign flips of whole columns."""
    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs, s, vh * signs[:, None]


def tucker_decompose(w: torch.Tensor, ranks: Sequence[int] | None = None, eps: float | None = None
                     ) -> dict[str, torch.Tensor]:
    """Truncated HOSVD of ``w (d_in, d_out, T)``: ``U_k`` = the leading left singular vectors of the
    mode-k unfolding, ``𝒮 = 𝒲 ×₁ U₁ᵀ ×₂ U₂ᵀ ×₃ U₃ᵀ`` (float64)."""
    w = w.to(torch.float64)
    factors = []
    for k in range(3):
        unfolding = w.movedim(k, 0).reshape(w.shape[k], -1)
        u, s, _ = _svd(unfolding)
        factors.append(u[:, :_keep(s, None if ranks is None else ranks[k], eps)])
    core = torch.einsum("ijt,ia,jb,tc->abc", w, *factors)
    return {"core": core, "u1": factors[0], "u2": factors[1], "u3": factors[2]}


def tt_decompose(w: torch.Tensor, ranks: Sequence[int] | None = None, eps: float | None = None
                 ) -> dict[str, torch.Tensor]:
    """TT-SVD of ``w (d_in, d_out, T)``: sequential truncated SVDs, ``G₁ (d_in, r₁)``,
    ``G₂ (r₁, d_out, r₂)``, ``G₃ (r₂, T)`` (float64)."""
    w = w.to(torch.float64)
    d_in, d_out, t = w.shape
    u, s, vh = _svd(w.reshape(d_in, d_out * t))
    r1 = _keep(s, None if ranks is None else ranks[0], eps)
    g1 = u[:, :r1]
    rest = (s[:r1, None] * vh[:r1]).reshape(r1 * d_out, t)
    u, s, vh = _svd(rest)
    r2 = _keep(s, None if ranks is None else ranks[1], eps)
    return {"g1": g1, "g2": u[:, :r2].reshape(r1, d_out, r2), "g3": s[:r2, None] * vh[:r2]}


def laf_decompose(w: torch.Tensor, ranks: Sequence[int] | None = None, eps: float | None = None
                  ) -> dict[str, torch.Tensor]:
    """Truncated SVD of ``w`` reshaped to ``(d_in·d_out, T)``: ``U`` the left vectors, ``V = diag(s) Vᵀ``."""
    w = w.to(torch.float64)
    u, s, vh = _svd(w.reshape(-1, w.shape[2]))
    k = _keep(s, None if ranks is None else ranks[0], eps)
    return {"u": u[:, :k], "v": s[:k, None] * vh[:k]}


DECOMPOSE = {"tucker": tucker_decompose, "tt": tt_decompose, "laf": laf_decompose}


class DMTRLLinear(TaskWeightLayer):
    """``DMTRLLinear(in_features, out_features, num_tasks, method="tucker", ranks=None)``: per-task
    weights stored factorised (module docstring). ``ranks``: Tucker ``[r₁, r₂, r₃]``, TT ``[r₁, r₂]``,
    LAF ``[k]`` (default :func:`default_ranks`); the factors decompose ``0.01·N(0, 1)`` noise
    unless built by :meth:`from_weights`. ``forward`` as :class:`~.task_weights.TaskLinear`."""

    def __init__(self, in_features: int, out_features: int, num_tasks: int, method: str = "tucker", *,
                 ranks: Sequence[int] | None = None, bias: bool = True, task_names: Sequence[str] | None = None,
                 kernel_size=None, stride=1, padding=0, dilation=1) -> None:
        super().__init__()
        self._init_tasks(num_tasks, task_names, in_features, out_features, kernel_size, stride, padding, dilation)
        ranks = list(ranks) if ranks is not None else default_ranks(method, self.num_tasks)
        _check_ranks(method, ranks, None)
        self.method = method
        noise = torch.randn(self.fan_in, self.out_features, self.num_tasks) * 0.01
        _, b = linear_init(self.num_tasks, self.out_features, self.fan_in)
        self._set_factors(DECOMPOSE[method](noise, ranks), b if bias else None)

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor | None, method: str = "tucker", *,
                     ranks: Sequence[int] | None = None, eps: float | None = 0.1, in_features: int | None = None,
                     task_names: Sequence[str] | None = None, kernel_size=None, stride=1, padding=0,
                     dilation=1) -> "DMTRLLinear":
        """The layer whose factors decompose per-task weights ``weight (T, d_out, d_in)`` (a
        :class:`~.task_weights.TaskLinear` 's, i.e. ``𝒲`` transposed) at ``ranks`` or precision
        ``eps``; biases ``(T, d_out)`` copied. With full ranks (or ``eps = 0``) it computes
        exactly the given weights (to float rounding)."""
        _check_ranks(method, ranks, None if ranks is not None else eps)
        num_tasks, out_features, fan_in = weight.shape
        layer = cls.__new__(cls)
        TaskWeightLayer.__init__(layer)
        layer._init_tasks(num_tasks, task_names, in_features or fan_in, out_features, kernel_size, stride, padding,
                          dilation)
        if layer.fan_in != fan_in:
            raise ValueError(f"weight has d_in = {fan_in}, the layer's is {layer.fan_in}")
        layer.method = method
        dense = weight.detach().permute(2, 1, 0)  # 𝒲 (d_in, d_out, T)
        layer._set_factors(DECOMPOSE[method](dense, ranks, None if ranks is not None else eps),
                           None if bias is None else bias.detach(), weight.dtype)
        return layer.to(weight.device)

    def _set_factors(self, factors: dict[str, torch.Tensor], bias: torch.Tensor | None,
                     dtype: torch.dtype | None = None) -> None:
        dtype = dtype or torch.get_default_dtype()
        if self.method == "tucker":
            self.core = nn.Parameter(factors["core"].to(dtype))
            self.u1 = nn.Parameter(factors["u1"].to(dtype))
            self.u2 = nn.Parameter(factors["u2"].to(dtype))
            self.task_factor = TaskRows(factors["u3"].to(dtype))  # U₃ (T, r₃)
        elif self.method == "tt":
            self.g1 = nn.Parameter(factors["g1"].to(dtype))
            self.g2 = nn.Parameter(factors["g2"].to(dtype))
            self.task_factor = TaskRows(factors["g3"].T.contiguous().to(dtype))  # G₃ transposed (T, r₂)
        else:
            self.u = nn.Parameter(factors["u"].to(dtype))
            self.task_factor = TaskRows(factors["v"].T.contiguous().to(dtype))  # V transposed (T, k)
        self.biases = TaskRows(bias.to(dtype).clone()) if bias is not None else None

    @property
    def ranks(self) -> list[int]:
        """Tucker ``[r₁, r₂, r₃]``, TT ``[r₁, r₂]``, LAF ``[k]``."""
        if self.method == "tucker":
            return list(self.core.shape)
        if self.method == "tt":
            return [self.g2.shape[0], self.g2.shape[2]]
        return [self.u.shape[1]]

    def _rows(self, holder: TaskRows, ids: list[int]) -> torch.Tensor:
        return holder.value if ids == list(range(self.num_tasks)) else holder.value[ids]

    def dense(self, ids: list[int] | None = None) -> torch.Tensor:
        """``𝒲[:, :, ids]`` rebuilt from the factors, ``(d_in, d_out, n)`` (all tasks by default)."""
        return self.task_weights(list(range(self.num_tasks)) if ids is None else ids).permute(2, 1, 0)

    def task_weights(self, ids: list[int]) -> torch.Tensor:
        rows = self._rows(self.task_factor, ids)  # (n, r)
        if self.method == "tucker":
            m = torch.einsum("abc,nc->nab", self.core, rows)  # 𝒮 ×₃ U₃[ids]
            m = torch.einsum("nab,jb->naj", m, self.u2)  # ×₂ U₂
            return torch.einsum("naj,ia->nji", m, self.u1)  # ×₁ U₁, as (n, d_out, d_in)
        if self.method == "tt":
            m = torch.einsum("ajb,nb->naj", self.g2, rows)  # G₂ · G₃[:, ids]
            return torch.einsum("ia,naj->nji", self.g1, m)
        flat = rows @ self.u.T  # (n, d_in·d_out)
        return flat.view(len(ids), self.fan_in, self.out_features).transpose(1, 2)

    def task_bias(self, ids: list[int]) -> torch.Tensor | None:
        return None if self.biases is None else self._rows(self.biases, ids)

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, in={self.in_features}, out={self.out_features}, method={self.method}, " \
               f"ranks={self.ranks}"


class DMTRLConv2d(DMTRLLinear):
    """``DMTRLConv2d(in_channels, out_channels, kernel_size, num_tasks, method, ranks, stride, padding)``:
    the kernels ``(c_in, k, k)`` flattened into the first mode of ``𝒲``; build from a
    :class:`~.task_weights.TaskConv2d` 's weights with :meth:`from_weights` (``kernel_size`` given)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, num_tasks: int, method: str = "tucker", *,
                 ranks: Sequence[int] | None = None, stride=1, padding=0, dilation=1, bias: bool = True,
                 task_names: Sequence[str] | None = None) -> None:
        super().__init__(in_channels, out_channels, num_tasks, method, ranks=ranks, bias=bias, task_names=task_names,
                         kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
