"""AdaShare's execution of gated backbones: batched search steps and tree execution of fixed policies.

Both replace *how* a gated backbone is computed, never *what* it computes (AdaShare §10):

- :func:`batched_gated_features`: a soft or hard policy over T tasks. The blocks that every task
  executes with the padding row (1, 0), and the branches of the first block in the window, are
  computed once on the shared input; from there the activations of all tasks are one
  task-interleaved ``(B·T, ...)`` tensor and each block runs once on it, with per-task gate
  weights (or, for large activations on a CPU, one pass per task). Task-aware BatchNorm
  (``sharewise.layers.norm``) keeps batch and running statistics per task exactly as T separate passes
  would. :func:`loop_gated_features` is the reference (one full pass per task).
- :func:`tree_features`: binary decisions per task. Two tasks have identical activations after
  block l iff their decisions agree on blocks 0..l, so the computation is a prefix tree: every
  distinct prefix is computed once (forward and, through autograd, backward) and a skipped block
  costs only its shortcut (nothing for an identity).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...backbones.base import apply_block, block_branches
from ...layers import (has_per_task_norms, repeated_passes, single_task, supports_task_groups, task_aware_norms,
                      task_groups)

PADDING_ROW = (1.0, 0.0)


def loop_gated_features(blocks: Sequence[nn.Module], h0: torch.Tensor, policy: torch.Tensor,
                        pool: nn.Module, ids: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The reference semantics: one pass over the blocks per task. ``policy``: (T, L, 2);
    ``ids``: the rows' task indices (for per-task BatchNorm; default 0..T−1)."""
    out = []
    for i, row in enumerate(policy):
        with single_task(ids[i] if ids is not None else i):
            h = h0
            for block, gate in zip(blocks, row):
                h = apply_block(block, h, gate)
            out.append(pool(h))
    return out


# auto execution stacks the tasks while T copies of a block's input hold at most this many values
# (4 MB in float32): above it the arithmetic dominates, the stacked activations leave the CPU's
# caches and T per-task passes are as fast or faster (benchmarks/adashare_speed.py, full window,
# 32-px ResNet: 1.01–1.05× stacked against 1.06–1.10× per task with 2 tasks, 1.06–1.17× against
# 1.14–1.15× with 4; before the engine kept freed host memory, stacking was 0.63–0.92×); on a
# GPU the tasks are always stacked
STACK_LIMIT = 2 ** 20


def batched_gated_features(blocks: Sequence[nn.Module], h0: torch.Tensor, policy: torch.Tensor, pool: nn.Module,
                           shared_blocks: int = 0, stack: bool | None = True,
                           ids: Sequence[int] | None = None, per_task_norms: bool | None = None,
                           columns: bool = False) -> list[torch.Tensor] | torch.Tensor:
    """Per-task pooled features for ``policy`` (T, L, 2), equal to :func:`loop_gated_features`.

    ``shared_blocks``: how many lowest gated blocks hold the padding row (1, 0) for every task
    (the part below AdaShare's curriculum window); they are computed once. The first block in the
    window still has one input for all tasks, so F and S are computed once there too and mixed
    per task. From then on, ``stack=True``: the activations are one task-interleaved
    ``(B·T, ...)`` tensor (row ``b·T + t``), which task-aware BatchNorm views as ``(B, T·C, ...)``
    without a copy, and each block runs once; ``stack=False``: one pass per task over the
    remaining blocks; ``stack=None``: stacked on a GPU, where no block remains after the first
    one in the window (only pooling and heads follow), or while T copies of the input hold at
    most :data:`STACK_LIMIT` elements, else per-task passes.

    With per-task BatchNorm (``task_bn``; ``ids`` gives the rows' task indices) no block has the
    same output for two tasks, so nothing is shared: the tasks are stacked from the first block
    (or run one pass each). ``per_task_norms``: whether the blocks hold such layers (None: look;
    a model that knows saves walking every module at every step). ``columns``: where the tasks
    end stacked, return their features as one ``(B, T, D)`` tensor (task t in column t), for
    heads run as one batched product (``TaskHeads.columns``); a list otherwise.
    """
    num_tasks, num_blocks = policy.shape[0], policy.shape[1]
    if per_task_norms is None:
        per_task_norms = any(has_per_task_norms(block) for block in blocks)
    if per_task_norms:
        return _per_task_norm_features(blocks, h0, policy, pool, stack, ids, columns)
    pad = torch.tensor(PADDING_ROW, dtype=policy.dtype, device=policy.device)
    h = h0
    for index in range(shared_blocks):
        with repeated_passes(num_tasks):
            h = apply_block(blocks[index], h, pad)
    if shared_blocks == num_blocks:
        features = pool(h)
        return [features] * num_tasks
    if stack is None:  # nothing left after the first block in the window: no block runs stacked
        stack = h.is_cuda or shared_blocks + 1 == num_blocks or num_tasks * h.numel() <= STACK_LIMIT
    with repeated_passes(num_tasks):  # one input for every task: F and S once, mixed T ways
        f, s = block_branches(blocks[shared_blocks], h)
    exec_w, skip_w = _gate_views(policy, h.dim())
    stacked = torch.addcmul(skip_w[shared_blocks] * s.unsqueeze(1), exec_w[shared_blocks], f.unsqueeze(1))
    if not stack:
        out = []
        for t in range(num_tasks):
            h = stacked[:, t]
            for index in range(shared_blocks + 1, num_blocks):
                h = apply_block(blocks[index], h, policy[t, index])
            out.append(pool(h))
        return out
    return _stacked_features(blocks, stacked, policy, pool, shared_blocks + 1, None, columns)


def _per_task_norm_features(blocks, h0, policy, pool, stack, ids, columns) -> list[torch.Tensor] | torch.Tensor:
    num_tasks = policy.shape[0]
    if stack is None:
        stack = h0.is_cuda or num_tasks * h0.numel() <= STACK_LIMIT
    if not stack:
        return loop_gated_features(blocks, h0, policy, pool, ids)
    stacked = h0.unsqueeze(1).expand(h0.shape[0], num_tasks, *h0.shape[1:])
    return _stacked_features(blocks, stacked, policy, pool, 0, ids, columns)


def _gate_views(policy: torch.Tensor, dims: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Execute and skip weights per block as (1, T, 1, ...) views, broadcast over (B, T, ...)
    activations; unbound in one operation (one backward node, not one per block)."""
    view = (policy.shape[1], 1, policy.shape[0]) + (1,) * (dims - 1)
    return policy[..., 0].t().reshape(view).unbind(0), policy[..., 1].t().reshape(view).unbind(0)


def _stacked_features(blocks, stacked: torch.Tensor, policy: torch.Tensor, pool: nn.Module, start: int,
                      ids: Sequence[int] | None, columns: bool = False) -> list[torch.Tensor] | torch.Tensor:
    """Blocks ``start``.. on (B, T, ...) activations, run as one task-interleaved (B·T, ...) batch."""
    batch, num_tasks = stacked.shape[:2]
    exec_w, skip_w = _gate_views(policy, stacked.dim() - 1)
    layers = [layer for block in blocks[start:] for layer in _norms(block)]
    with task_groups(num_tasks, ids, layers):
        for index in range(start, policy.shape[1]):
            f, s = block_branches(blocks[index], stacked.reshape(batch * num_tasks, *stacked.shape[2:]))
            grouped = (batch, num_tasks) + f.shape[1:]
            stacked = torch.addcmul(skip_w[index] * s.view(grouped), exec_w[index], f.view(grouped))
    features = pool(stacked.reshape(batch * num_tasks, *stacked.shape[2:])).view(batch, num_tasks, -1)
    return features if columns else list(features.unbind(1))


_NORMS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, ...]] = weakref.WeakKeyDictionary()


def _norms(block: nn.Module) -> tuple[nn.Module, ...]:
    """The task-aware BatchNorms inside ``block``, found once per block (walking the modules at
    every step costs more than the grouping saves)."""
    if block not in _NORMS:
        _NORMS[block] = task_aware_norms(block)
    return _NORMS[block]


def can_batch(module: nn.Module) -> bool:
    """Batched search needs every BatchNorm to be task-aware (built by ``make_norm``)."""
    return supports_task_groups(module)


def tree_features(blocks: Sequence[nn.Module], h0: torch.Tensor, decisions: dict[str, Sequence[int]],
                  pool: nn.Module, tasks: Sequence[str] | None = None,
                  counts: dict[str, int] | None = None,
                  task_ids: dict[str, int] | None = None,
                  at_leaf: Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Pooled features per task for binary ``decisions[task][l]`` (1 execute, 0 skip), in the
    order of ``tasks``; with ``at_leaf(features, tasks_at_that_leaf)``, what it returns for each
    task instead (the heads, applied as each leaf is reached so its features can be freed).

    Walks the prefix tree with tasks grouped by their prefix (depth first without gradients,
    level by level with them); ``counts`` (optional) receives the number of block evaluations
    (``F``), non-identity shortcut evaluations (``S``) and leaves.
    ``task_ids`` (per-task BatchNorm, ``task_bn``): every task is its own path from the first
    block, run with its own normalisation (skipped blocks still cost nothing).
    """
    names = list(tasks if tasks is not None else decisions)
    roots = [(names, h0)] if task_ids is None else [([t], h0) for t in names]

    def scope(members: list[str]) -> contextlib.AbstractContextManager:
        return single_task(task_ids[members[0]]) if task_ids is not None else contextlib.nullcontext()

    # Without gradients (inference) depth first, the executing branch before the skipping one:
    # only the current path and its pending branches hold activations, not every prefix of a
    # level. With gradients level by level: backward keeps every activation anyway, and a
    # level's evaluations of one block run back to back (about 3 % faster on a small ResNet).
    # Both give every level's prefixes in the same order, so each layer sees its inputs (and
    # updates its running statistics) in the same order.
    depth_first = not torch.is_grad_enabled()
    pending = deque((0, members, h) for members, h in (reversed(roots) if depth_first else roots))
    out: dict[str, torch.Tensor] = {}
    leaves = 0
    while pending:
        index, members, h = pending.pop() if depth_first else pending.popleft()
        if index == len(blocks):
            with scope(members):
                features = pool(h)
            out.update(at_leaf(features, members) if at_leaf is not None else dict.fromkeys(members, features))
            leaves += 1
            continue
        block = blocks[index]
        execute = [t for t in members if decisions[t][index]]
        skip = [t for t in members if not decisions[t][index]]
        with scope(members):
            f = block(h) if execute else None
            s = block.shortcut(h) if skip else None
        del h
        children = [(index + 1, execute, f)] if execute else []
        if skip:
            children.append((index + 1, skip, s))
        pending.extend(reversed(children) if depth_first else children)  # depth first: execute on top
        if counts is not None:
            counts["F"] = counts.get("F", 0) + bool(execute)
            counts["S"] = counts.get("S", 0) + bool(skip and not isinstance(block.shortcut, nn.Identity))
        del f, s, children
    if counts is not None:
        counts["leaves"] = leaves
    return {t: out[t] for t in names}


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
