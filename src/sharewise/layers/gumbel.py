"""Gumbel sampling of discrete choices and the temperature schedules that anneal it.

Logits hold one column per option in the last dimension (AdaShare: (execute, skip) per task and
block; Gumbel-matrix routing: (on, off) per task and component). A *soft* sample is
``y = softmax((Φ + g) / τ)`` with ``g = −log(−log U)``; a *straight-through* sample has the exact
one-hot of ``argmax y`` as its forward value and the gradient of ``y`` as its backward.
Gumbel-sigmoid is the two-option case read as one probability of "on": ``z = y[..., 0]``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

NoiseForm = Literal["clamp", "offset"]


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 form: NoiseForm = "clamp") -> torch.Tensor:
    """``g = −log(−log U)``, ``U ~ Uniform(0, 1)`` (CPU, from ``generator``).

    ``clamp`` (AdaShare §4): U clamped to ``[1e-20, 1)``; ``offset`` (parameter allocation §2.2):
    ``−log(−log(U + 1e-20) + 1e-20)``."""
    u = torch.rand(shape, generator=generator)
    if form == "clamp":
        return -torch.log(-torch.log(u.clamp_min(1e-20)))
    if form == "offset":
        return -torch.log(-torch.log(u + 1e-20) + 1e-20)
    raise ValueError(f"unknown Gumbel noise form {form!r} (clamp, offset)")


class _StraightThrough(torch.autograd.Function):
    """Forward: ``hard`` (exact values); backward: the gradient reaches ``soft`` unchanged."""

    @staticmethod
    def forward(ctx, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return hard

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # noqa: D102
        return None, grad


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass (exactly, no ``hard + soft − soft`` rounding), the gradient of
    ``soft`` in the backward pass."""
    return _StraightThrough.apply(hard.detach(), soft)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None, *,
                   hard: bool = False, noise: torch.Tensor | None = None,
                   form: NoiseForm = "clamp") -> torch.Tensor:
    """One sample per row of ``logits`` (options in the last dimension): ``softmax((Φ + g) / τ)``,
    or with ``hard`` the one-hot of its argmax (the first option on a tie) with its gradient.
    ``noise``: the Gumbel noise to use (drawn with ``generator`` when None)."""
    if noise is None:
        noise = gumbel_noise(tuple(logits.shape), generator, form).to(device=logits.device, dtype=logits.dtype)
    y = torch.softmax((logits + noise) / tau, dim=-1)
    if not hard:
        return y
    return straight_through(F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype), y)


def gumbel_sigmoid(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None, *,
                   hard: bool = True, noise: torch.Tensor | None = None,
                   form: NoiseForm = "offset") -> torch.Tensor:
    """Two logits (on, off) per entry -> a sample of "on", shape ``logits.shape[:-1]``.

    ``P(on) = σ(Φ[..., 0] − Φ[..., 1])``. Hard (default): forward exactly 1 where
    ``y_on ≥ y_off`` (a tie counts as on), else 0; backward ``∂ y_on`` of the soft sample
    ``y = softmax((Φ + g) / τ)`` (parameter allocation §2.2). Soft: ``y_on``."""
    if logits.shape[-1] != 2:
        raise ValueError(f"gumbel_sigmoid needs two logits (on, off) in the last dimension, got {logits.shape[-1]}")
    if noise is None:
        noise = gumbel_noise(tuple(logits.shape), generator, form).to(device=logits.device, dtype=logits.dtype)
    y = torch.softmax((logits + noise) / tau, dim=-1)
    on = y[..., 0]
    if not hard:
        return on
    return straight_through((y[..., 0] >= y[..., 1]).to(y.dtype), on)


def exponential_temperature(step: int, init_temp: float = 5.0, decay: float = 0.965,
                            min_temp: float | None = None) -> float:
    """``τ = τ_0 · γ^step``, floored at ``min_temp`` (AdaShare §5: ``step`` = completed policy epochs)."""
    tau = init_temp * decay ** step
    return max(tau, min_temp) if min_temp is not None else tau


def inverse_sqrt_temperature(step: int, init_temp: float = 50.0, min_temp: float = 0.5) -> float:
    """``τ = max(τ_min, τ_0 / √(step + 1))`` (parameter allocation §2.3: ``step`` = task updates)."""
    return max(min_temp, init_temp / math.sqrt(step + 1))


def steps_to_temperature(target: float, init_temp: float = 5.0, decay: float = 0.965) -> int:
    """Steps after which ``τ_0 · γ^step ≤ target`` (exponential schedule; ``math.inf`` when it never is)."""
    if init_temp <= target:
        return 0
    if decay >= 1.0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(math.log(target / init_temp) / math.log(decay) - 1e-12)


__all__ = ["exponential_temperature", "gumbel_noise", "gumbel_sigmoid", "gumbel_softmax", "inverse_sqrt_temperature",
           "steps_to_temperature", "straight_through"]
