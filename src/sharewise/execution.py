"""Fast execution of gated backbones: batched search steps and tree execution of fixed policies.

Both replace *how* a gated backbone is computed, never *what* it computes (AdaShare §10):

- :func:`batched_gated_features`: a soft or hard policy over T tasks. The blocks that every task
  executes with the padding row (1, 0) are computed once on the shared input; from the first
  gated block on, the activations of all tasks are one ``(T·B, ...)`` tensor and each block runs
  once on it, with per-task gate weights. Task-aware BatchNorm (``backbones.norm``) keeps batch
  and running statistics per task exactly as T separate passes would.
- :func:`tree_features`: binary decisions per task. Two tasks have identical activations after
  block l iff their decisions agree on blocks 0..l, so the computation is a prefix tree: every
  distinct prefix is computed once (forward and, through autograd, backward) and a skipped block
  costs only its shortcut (nothing for an identity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbones.base import apply_block, block_branches
from .backbones.norm import repeated_passes, supports_task_groups, task_groups

PADDING_ROW = (1.0, 0.0)


def loop_gated_features(blocks: Sequence[nn.Module], h0: torch.Tensor, policy: torch.Tensor,
                        pool: nn.Module) -> list[torch.Tensor]:
    """The reference semantics: one pass over the blocks per task. ``policy``: (T, L, 2)."""
    out = []
    for row in policy:
        h = h0
        for block, gate in zip(blocks, row):
            h = apply_block(block, h, gate)
        out.append(pool(h))
    return out


# auto execution stacks the tasks while T copies of a block's input stay below this many elements
# (8 MB in float32): above it the arithmetic dominates, the stacked activations leave the CPU's
# caches and T per-task passes are faster; on a GPU the tasks are always stacked
STACK_LIMIT = 2 ** 21


def batched_gated_features(blocks: Sequence[nn.Module], h0: torch.Tensor, policy: torch.Tensor, pool: nn.Module,
                           shared_blocks: int = 0, stack: bool | None = True) -> list[torch.Tensor]:
    """Per-task pooled features for ``policy`` (T, L, 2), equal to :func:`loop_gated_features`.

    ``shared_blocks``: how many lowest gated blocks hold the padding row (1, 0) for every task
    (the part below AdaShare's curriculum window); they are computed once. The first block in the
    window still has one input for all tasks, so F and S are computed once there too and mixed
    per task. From then on, ``stack=True``: the activations are one task-interleaved
    ``(B·T, ...)`` tensor (row ``b·T + t``), which task-aware BatchNorm views as ``(B, T·C, ...)``
    without a copy, and each block runs once; ``stack=False``: one pass per task over the
    remaining blocks; ``stack=None``: stacked on a GPU or while T copies of the input hold at
    most :data:`STACK_LIMIT` elements, else per-task passes.
    """
    num_tasks, num_blocks = policy.shape[0], policy.shape[1]
    pad = torch.tensor(PADDING_ROW, dtype=policy.dtype, device=policy.device)
    h = h0
    for index in range(shared_blocks):
        with repeated_passes(num_tasks):
            h = apply_block(blocks[index], h, pad)
    if shared_blocks == num_blocks:
        features = pool(h)
        return [features] * num_tasks
    if stack is None:
        stack = h.is_cuda or num_tasks * h.numel() <= STACK_LIMIT
    batch = h.shape[0]
    # gate weights as (L, 1, T, 1, ...) views, broadcast over the (B, T, ...) activations
    view = (num_blocks, 1, num_tasks) + (1,) * (h.dim() - 1)
    exec_w = policy[..., 0].t().reshape(view)
    skip_w = policy[..., 1].t().reshape(view)
    with repeated_passes(num_tasks):  # one input for every task: F and S once, mixed T ways
        f, s = block_branches(blocks[shared_blocks], h)
    stacked = torch.addcmul(skip_w[shared_blocks] * s.unsqueeze(1), exec_w[shared_blocks], f.unsqueeze(1))
    if not stack:
        out = []
        for t in range(num_tasks):
            h = stacked[:, t]
            for index in range(shared_blocks + 1, num_blocks):
                h = apply_block(blocks[index], h, policy[t, index])
            out.append(pool(h))
        return out
    with task_groups(num_tasks):
        for index in range(shared_blocks + 1, num_blocks):
            f, s = block_branches(blocks[index], stacked.view(batch * num_tasks, *stacked.shape[2:]))
            grouped = (batch, num_tasks) + f.shape[1:]
            stacked = torch.addcmul(skip_w[index] * s.view(grouped), exec_w[index], f.view(grouped))
    return list(pool(stacked.view(batch * num_tasks, *stacked.shape[2:])).view(batch, num_tasks, -1).unbind(1))


def can_batch(module: nn.Module) -> bool:
    """Batched search needs every BatchNorm to be task-aware (built by ``make_norm``)."""
    return supports_task_groups(module)


def tree_features(blocks: Sequence[nn.Module], h0: torch.Tensor, decisions: dict[str, Sequence[int]],
                  pool: nn.Module, tasks: Sequence[str] | None = None,
                  counts: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Pooled features per task for binary ``decisions[task][l]`` (1 execute, 0 skip).

    Walks level by level with tasks grouped by their prefix; ``counts`` (optional) receives the
    number of block evaluations (``F``), non-identity shortcut evaluations (``S``) and leaves.
    """
    names = list(tasks if tasks is not None else decisions)
    groups: list[tuple[list[str], torch.Tensor]] = [(names, h0)]
    for index, block in enumerate(blocks):
        nxt = []
        for members, h in groups:
            execute = [t for t in members if decisions[t][index]]
            skip = [t for t in members if not decisions[t][index]]
            if execute:
                nxt.append((execute, block(h)))
                if counts is not None:
                    counts["F"] = counts.get("F", 0) + 1
            if skip:
                shortcut = block.shortcut
                nxt.append((skip, shortcut(h)))
                if counts is not None and not isinstance(shortcut, nn.Identity):
                    counts["S"] = counts.get("S", 0) + 1
        groups = nxt
    out = {}
    for members, h in groups:
        features = pool(h)
        for t in members:
            out[t] = features
    if counts is not None:
        counts["leaves"] = len(groups)
    return out


def per_task_features(blocks: Sequence[nn.Module], h0: torch.Tensor, decisions: dict[str, Sequence[int]],
                      pool: nn.Module, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The reference's way: one pass over the blocks per task (skipped blocks run their shortcut)."""
    out = {}
    for t in (tasks if tasks is not None else decisions):
        h = h0
        for block, u in zip(blocks, decisions[t]):
            h = block(h) if u else block.shortcut(h)
        out[t] = pool(h)
    return out


def distinct_prefixes(decisions: dict[str, Sequence[int]], tasks: Sequence[str] | None = None) -> dict[str, int]:
    """Trie nodes by kind: prefixes ending in an execute (``F``) and in a skip (``skip``)."""
    names = list(tasks if tasks is not None else decisions)
    num_blocks = len(next(iter(decisions.values())))
    execute, skip = set(), set()
    for t in names:
        d = tuple(int(u) for u in decisions[t])
        for index in range(num_blocks):
            (execute if d[index] else skip).add(d[:index + 1])
    return {"F": len(execute), "skip": len(skip)}
