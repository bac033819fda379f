"""AdaShare's policy mathematics as pure functions (spec ``adashare.md`` §3–§7, §8.3).

Notation: logits ``Φ`` of shape (tasks, blocks, 2), column 0 = execute, column 1 = skip; blocks
are the gated blocks only, 0 = the lowest. A *policy* is a tensor of gate weights of the same
shape, ``policy[t, l] = (v_exec, v_skip)``; a *decision* table is (tasks, blocks) with 1 = execute.
The curriculum window at policy epoch ``e`` is the top ``n(e)`` blocks; rows below it use the
padding row ``(1, 0)`` exactly.
"""

from __future__ import annotations

from typing import Literal

import torch

from ...layers.gumbel import exponential_temperature, gumbel_softmax, steps_to_temperature

InitMethod = Literal["equal", "random", "all_chosen"]
SparsityForm = Literal["ce_skip", "log_exec"]
SharingForm = Literal["paper", "reference"]


def init_logits(num_tasks: int, num_blocks: int, method: InitMethod = "equal", neg_logits: float = -10.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial Φ (§3): ``equal`` every entry 0.5 (p_exec = 0.5); ``random`` 1e-3 · N(0, 1);
    ``all_chosen`` column 0 = 0 and column 1 = ``neg_logits`` (−10 gives p_exec ≈ 0.99995)."""
    shape = (num_tasks, num_blocks, 2)
    if method == "equal":
        return torch.full(shape, 0.5)
    if method == "random":
        return 1e-3 * torch.randn(shape, generator=generator)
    if method == "all_chosen":
        out = torch.zeros(shape)
        out[..., 1] = neg_logits
        return out
    raise ValueError(f"unknown init_method {method!r} (equal, random, all_chosen)")


def exec_prob(logits: torch.Tensor) -> torch.Tensor:
    """``p_exec = softmax(Φ)[..., 0] = σ(Φ[..., 0] − Φ[..., 1])``, shape (tasks, blocks)."""
    return torch.softmax(logits, dim=-1)[..., 0]


def temperature(cycle: int, init_temp: float = 5.0, decay: float = 0.965, min_temp: float | None = None) -> float:
    """``τ_e = τ_0 · γ^e`` after ``e`` completed policy stretches (§5), floored at ``min_temp``."""
    return exponential_temperature(cycle, init_temp, decay, min_temp)


def window_size(cycle: int, num_blocks: int, speed: int = 3, curriculum: bool = True) -> int:
    """``n(e) = min(L, ⌊e / speed⌋ + 1)`` gated blocks from the top use sampled decisions (§7)."""
    if not curriculum:
        return num_blocks
    return min(num_blocks, cycle // speed + 1)


def curriculum_complete_cycle(num_blocks: int, speed: int = 3, curriculum: bool = True) -> int:
    """The first policy epoch with a full window: ``(L − 1) · speed`` (0 without curriculum)."""
    return (num_blocks - 1) * speed if curriculum else 0


def window_mask(num_blocks: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(blocks,) bool, True for the top ``window`` blocks."""
    mask = torch.zeros(num_blocks, dtype=torch.bool, device=device)
    if window > 0:
        mask[num_blocks - window:] = True
    return mask


def pad_below_window(policy: torch.Tensor, window: int) -> torch.Tensor:
    """``policy`` with the rows below the window replaced by the constant ``(1, 0)`` (no gradient)."""
    num_blocks = policy.shape[1]
    if window >= num_blocks:
        return policy
    pad = torch.zeros_like(policy)
    pad[..., 0] = 1.0
    inside = window_mask(num_blocks, window, policy.device)[None, :, None]
    return torch.where(inside, policy, pad)


def sample_policy(logits: torch.Tensor, tau: float, window: int, generator: torch.Generator | None = None,
                  hard: bool = False) -> torch.Tensor:
    """One Gumbel-softmax sample per task and block, shared by the whole batch (§4).

    ``y = softmax((Φ + g) / τ)``; soft mode returns ``y``, hard mode the one-hot of ``argmax y``
    with the straight-through gradient of ``y`` (forward values exactly 0/1). Noise is drawn for
    every row (so a row's noise does not depend on the window); rows below the window are then
    replaced by the padding row ``(1, 0)``.
    """
    y = gumbel_softmax(logits, tau, generator, hard=hard)
    return pad_below_window(y, window)


def decisions_to_policy(decisions: torch.Tensor) -> torch.Tensor:
    """(tasks, blocks) 0/1 decisions -> (tasks, blocks, 2) one-hot gates ``(u, 1 − u)``."""
    u = decisions.to(torch.float32)
    return torch.stack([u, 1.0 - u], dim=-1)


def argmax_decisions(probs: torch.Tensor) -> torch.Tensor:
    """``u = 1[p_exec ≥ 0.5]`` (a tie executes), shape (tasks, blocks), bool (§8.3)."""
    return probs >= 0.5


def sample_decisions(probs: torch.Tensor, seed: int) -> torch.Tensor:
    """``u ~ Bernoulli(p_exec)`` independently per task and block, from a generator seeded with
    ``seed`` alone: the same seed always gives the same architecture (§8.3)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    u = torch.rand(tuple(probs.shape), generator=g, dtype=torch.float64)
    return u < probs.detach().cpu().to(torch.float64)


def sparsity_loss(logits: torch.Tensor, window: int, form: SparsityForm = "ce_skip",
                  depth_weights: bool = False) -> torch.Tensor:
    """Sparsity regulariser over the curriculum window W (§6.2), summed over tasks.

    ``ce_skip`` (default, the reference's): ``Σ_t (1/|W|) Σ_{l∈W} −log p_skip(l,t)``; with
    ``depth_weights`` the mean becomes ``2 · mean_{l∈W}((l+1)/L · (−log p_skip))``.
    ``log_exec`` (the paper's form as recalled, unverified): ``Σ_t Σ_{l∈W} log p_exec(l,t)``.
    Warning: ``log_exec`` is unbounded below (a constant pull towards "skip" as p_exec → 0, only
    the logits' weight decay stops it) and can collapse every task to "skip everything".
    """
    num_blocks = logits.shape[1]
    window = min(window, num_blocks)
    if window <= 0:
        return logits.sum() * 0.0
    logp = torch.log_softmax(logits, dim=-1)[:, num_blocks - window:]  # (tasks, |W|, 2)
    if form == "log_exec":
        return logp[..., 0].sum()
    if form != "ce_skip":
        raise ValueError(f"unknown sparsity_form {form!r} (ce_skip, log_exec)")
    neg_log_skip = -logp[..., 1]  # (tasks, |W|)
    if depth_weights:
        depth = torch.arange(num_blocks - window, num_blocks, dtype=logits.dtype, device=logits.device)
        return (2.0 * ((depth + 1) / num_blocks * neg_log_skip).mean(dim=1)).sum()
    return neg_log_skip.mean(dim=1).sum()


def sharing_loss(logits: torch.Tensor, form: SharingForm = "paper", depth_weights: bool = True) -> torch.Tensor:
    """Sharing regulariser over all gated blocks and unordered task pairs (§6.3).

    ``paper`` (default): ``Σ_{t<s} Σ_l ((L − l)/L) · |p_exec(l,t) − p_exec(l,s)|`` on probabilities,
    weights 1, (L−1)/L, …, 1/L from the lowest block up. ``reference`` (the reference code's):
    ``Σ_{t<s} Σ_l ((l + 1)/L) · |Φ[t,l,0] − Φ[s,l,0]|`` on raw execute logits, weight 1 for every
    block when ``depth_weights`` is off (its ``diff_sparsity_weights: false``). Zero for one task.
    """
    num_tasks, num_blocks = logits.shape[:2]
    if num_tasks < 2:
        return logits.sum() * 0.0
    depth = torch.arange(num_blocks, dtype=logits.dtype, device=logits.device)
    if form == "paper":
        values = exec_prob(logits)
        weights = (num_blocks - depth) / num_blocks
    elif form == "reference":
        values = logits[..., 0]
        weights = (depth + 1) / num_blocks if depth_weights else torch.ones_like(depth)
    else:
        raise ValueError(f"unknown sharing_form {form!r} (paper, reference)")
    first, second = torch.triu_indices(num_tasks, num_tasks, offset=1, device=logits.device)
    diffs = (values[first] - values[second]).abs()  # (pairs, blocks)
    return (diffs * weights).sum()


def sharing_similarity(probs: torch.Tensor) -> torch.Tensor:
    """Task-sharing similarity ``1 − mean_l |p_exec(l,t) − p_exec(l,s)|``, shape (tasks, tasks)."""
    return 1.0 - (probs[:, None, :] - probs[None, :, :]).abs().mean(-1)


def search_cycles_needed(num_blocks: int, speed: int, curriculum: bool = True) -> int:
    """Cycles recommended by §9.2: ``(L − 1) · speed + 20``."""
    return curriculum_complete_cycle(num_blocks, speed, curriculum) + 20


def cycles_to_temperature(target: float, init_temp: float = 5.0, decay: float = 0.965) -> int:
    """Completed cycles after which ``τ_0 · γ^e ≤ target``."""
    return steps_to_temperature(target, init_temp, decay)
