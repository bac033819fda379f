"""MRN, the multilinear relationship network (Long et al., NIPS 2017; TAAN specification §4.4).

Per-task weights stacked as ``𝒲 ∈ R^{T×d_out×d_in}`` (conv: ``d_in = c_in·k·k``) carry a
tensor-normal prior with precision matrices ``Ω_T (T×T)``, ``Ω_out``, ``Ω_in`` (buffers, identity
at first)::

    R(𝒲) = vec(𝒲)ᵀ (Ω_T ⊗ Ω_out ⊗ Ω_in) vec(𝒲) = ⟨𝒲, 𝒲 ×₁ Ω_T ×₂ Ω_out ×₃ Ω_in⟩

``regularization(c) = c · R`` (biases not penalised), computed by mode products, never by a
Kronecker product. The precisions are re-estimated from the detached weights by an explicit
:meth:`MRNLinear.update_precisions` (the method calls it every ``update_interval`` optimiser
steps from its phase's after-step hook; ``forward`` changes nothing). Rules (``rule``):

- ``official`` (the MRN authors' code as the TAAN reference ported it)::

      Σ̂_T = 𝒲_(1) (Ω_out ⊗ Ω_in) 𝒲_(1)ᵀ + 1e−5 I;   Σ̂_T = U diag(s) Uᵀ;
      s_k ↦ 1/s_k if s_k > 0.1 else s_k;   Ω_T = U diag(s') Uᵀ;   if tr Ω_T > 3000: Ω_T ← 3000 Ω_T / tr Ω_T

  likewise for Ω_out (mode 2, with Ω_T and Ω_in); Ω_in is updated additively,
  ``Ω_in ← Ω_in + 0.0003 · estimate``;
- ``mle`` (textbook flip-flop): ``Σ_T = 𝒲_(1) (Ω_out ⊗ Ω_in) 𝒲_(1)ᵀ / (d_out·d_in) + 1e−5 I``,
  ``Ω_T = Σ_T⁻¹``, likewise for the other modes.

Which precisions update: ``update_task/update_output/update_input`` (default true/false/false, as
the official code); ``update_order``: ``sequential`` (task → output → input, each from the latest
other two) or ``simultaneous`` (every estimate from the precisions before the update). The
eigen-decompositions run in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .task_weights import TaskConv2d, TaskLinear

MRN_RULES = ("official", "mle")
MRN_ORDERS = ("sequential", "simultaneous")
MODES = ("task", "output", "input")
EPS = 1e-5
OFFICIAL_THRESHOLD = 0.1
OFFICIAL_TRACE_CAP = 3000.0
OFFICIAL_INPUT_RATE = 0.0003


def mode_products(weight: torch.Tensor, omegas: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``𝒲 ×₁ Ω_T ×₂ Ω_out ×₃ Ω_in`` for ``weight (T, O, I)``; a None precision is the identity
    (skipped). The precisions are symmetric, so ``×_k Ω`` multiplies along mode k by Ω."""
    out = weight
    task, output, inp = omegas
    if task is not None:
        out = torch.einsum("ts,soi->toi", task, out)
    if output is not None:
        out = torch.einsum("op,tpi->toi", output, out)
    if inp is not None:
        out = torch.einsum("ij,toj->toi", inp, out)
    return out


def tensor_normal_penalty(weight: torch.Tensor, omegas: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``R = ⟨𝒲, 𝒲 ×₁ Ω_T ×₂ Ω_out ×₃ Ω_in⟩ = vec(𝒲)ᵀ (Ω_T ⊗ Ω_out ⊗ Ω_in) vec(𝒲)``."""
    return (weight * mode_products(weight, omegas)).sum()


def mode_scatter(weight: torch.Tensor, mode: int, omegas: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``Σ̂_k = 𝒲_(k) (⊗ of the other two precisions) 𝒲_(k)ᵀ`` (no ε), e.g. for the task mode
    ``Σ̂_T[t, t'] = Σ 𝒲[t,o,i] Ω_out[o,o'] Ω_in[i,i'] 𝒲[t',o',i']``."""
    others = [None if k == mode else om for k, om in enumerate(omegas)]
    product = mode_products(weight, others)
    spec = ("toi,soi->ts", "toi,tpi->op", "toi,toj->ij")[mode]
    return torch.einsum(spec, weight, product)


def official_precision(scatter: torch.Tensor) -> torch.Tensor:
    """The official rule's precision from a raw scatter ``Σ̂`` (float64 in, float64 out):
    ``Σ̂ + 1e−5 I = U diag(s) Uᵀ``; ``s ↦ 1/s`` where ``s > 0.1``; capped at trace 3000."""
    eye = torch.eye(scatter.shape[0], dtype=scatter.dtype, device=scatter.device)
    s, u = torch.linalg.eigh(scatter + EPS * eye)
    s = torch.where(s > OFFICIAL_THRESHOLD, 1.0 / s, s)
    omega = (u * s) @ u.T
    trace = torch.trace(omega)
    if trace > OFFICIAL_TRACE_CAP:
        omega = omega * (OFFICIAL_TRACE_CAP / trace)
    return omega


def mle_precision(scatter: torch.Tensor, count: int) -> torch.Tensor:
    """The flip-flop estimate's precision ``(Σ̂ / count + 1e−5 I)⁻¹`` (``count``: the product of
    the other two modes' sizes), by a symmetric eigen-decomposition."""
    eye = torch.eye(scatter.shape[0], dtype=scatter.dtype, device=scatter.device)
    s, u = torch.linalg.eigh(scatter / count + EPS * eye)
    return (u / s) @ u.T


class _MRNPrior:
    """The tensor-normal prior over a per-task-weight layer's ``weight (T, O, I)`` (mixed into
    :class:`MRNLinear` and :class:`MRNConv2d`)."""

    def _init_prior(self, update_task: bool, update_output: bool, update_input: bool, update_order: str,
                    rule: str) -> None:
        if rule not in MRN_RULES:
            raise ValueError(f"rule must be one of {MRN_RULES} (got {rule!r})")
        if update_order not in MRN_ORDERS:
            raise ValueError(f"update_order must be one of {MRN_ORDERS} (got {update_order!r})")
        self.rule, self.update_order = rule, update_order
        self.updates = {"task": bool(update_task), "output": bool(update_output), "input": bool(update_input)}
        sizes = (self.num_tasks, self.out_features, self.fan_in)
        for name, n in zip(MODES, sizes):
            self.register_buffer(f"omega_{name}", torch.eye(n))
        # the precisions still at their identity initialisation (their products are skipped)
        self._identity = {name: True for name in MODES}

    def precisions(self) -> list[torch.Tensor]:
        """``[Ω_T, Ω_out, Ω_in]``."""
        return [self.omega_task, self.omega_output, self.omega_input]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for name, omega in zip(MODES, self.precisions()):  # loaded precisions need not be the identity
            self._identity[name] = bool(torch.equal(omega, torch.eye(omega.shape[0], dtype=omega.dtype,
                                                                     device=omega.device)))

    def penalty(self) -> torch.Tensor:
        """``R(𝒲)`` with the current precisions (identities skipped)."""
        omegas = [None if self._identity[n] else om for n, om in zip(MODES, self.precisions())]
        return tensor_normal_penalty(self.weight, omegas)

    def regularization(self, c: float) -> torch.Tensor:
        """``c · R(𝒲)``; exactly 0 (no graph through the weights) for ``c = 0``."""
        if c == 0:
            return self.weight.new_zeros(())
        return c * self.penalty()

    @torch.no_grad()
    def update_precisions(self) -> dict[str, torch.Tensor]:
        """Re-estimate the enabled precisions from the detached weights (the rule and order of the
        layer); returns the new ones by mode name."""
        weight = self.weight.detach().to(torch.float64)
        current = [om.to(torch.float64) for om in self.precisions()]
        before = list(current)
        sizes = weight.shape
        new = {}
        for mode, name in enumerate(MODES):
            if not self.updates[name]:
                continue
            source = current if self.update_order == "sequential" else before
            scatter = mode_scatter(weight, mode, source)
            if self.rule == "official":
                estimate = official_precision(scatter)
                if name == "input":
                    estimate = current[mode] + OFFICIAL_INPUT_RATE * estimate
            else:
                count = 1
                for k, n in enumerate(sizes):
                    if k != mode:
                        count *= n
                estimate = mle_precision(scatter, count)
            current[mode] = estimate
            new[name] = estimate
        for name, value in new.items():
            buf = getattr(self, f"omega_{name}")
            buf.copy_(value.to(buf.dtype))
            self._identity[name] = False
        return new


class MRNLinear(_MRNPrior, TaskLinear):
    """``MRNLinear(in_features, out_features, num_tasks)``: per-task weights ``(T, out, in)`` with
    the tensor-normal prior; ``forward`` as :class:`~.task_weights.TaskLinear` (no activation),
    ``regularization(c) = c · R(𝒲)``, :meth:`update_precisions` explicit."""

    def __init__(self, in_features: int, out_features: int, num_tasks: int, *, bias: bool = True,
                 task_names: Sequence[str] | None = None, update_task: bool = True, update_output: bool = False,
                 update_input: bool = False, update_order: str = "sequential", rule: str = "official") -> None:
        super().__init__(in_features, out_features, num_tasks, bias=bias, task_names=task_names)
        self._init_prior(update_task, update_output, update_input, update_order, rule)


class MRNConv2d(_MRNPrior, TaskConv2d):
    """``MRNConv2d(in_channels, out_channels, kernel_size, num_tasks, ...)``: per-task kernels,
    the prior on ``𝒲 ∈ R^{T×c_out×(c_in·k·k)}``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, num_tasks: int, *, stride=1, padding=0,
                 dilation=1, bias: bool = True, task_names: Sequence[str] | None = None, update_task: bool = True,
                 update_output: bool = False, update_input: bool = False, update_order: str = "sequential",
                 rule: str = "official") -> None:
        super().__init__(in_channels, out_channels, kernel_size, num_tasks, stride=stride, padding=padding,
                         dilation=dilation, bias=bias, task_names=task_names)
        self._init_prior(update_task, update_output, update_input, update_order, rule)
