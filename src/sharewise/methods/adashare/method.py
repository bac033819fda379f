"""``adashare``: learning which residual blocks each task executes (Sun et al., NeurIPS 2020).

Spec: ``adashare.md``. One shared residual backbone and one head per task; for every task t and
gated block l a 2-way policy (execute, skip) mixes the block with its shortcut,
``x_{l+1} = v_exec · F_l(x_l) + v_skip · S_l(x_l)`` (§2, the residual added once inside ``F_l``).
Stages (``Method.stages``):

- ``train``: **warm-up** (all blocks, hard sharing, Adam β=(0.5, 0.999), StepLR per iteration;
  the initial weights are saved as checkpoint ``init`` first), then **search**: cycles of a weight
  stretch on ``train1`` (SGD, sampled policy detached) and a policy stretch on ``train2`` (Adam on
  the logits only; task losses + λ_sp·L_sparsity + λ_sh·L_sharing), Gumbel-softmax samples at
  temperature ``τ_e = τ_0·γ^e`` under a curriculum that opens the blocks from the top (§4–§8.2).
  Validation uses the argmax policy; the policy checkpoint is the best one among cycles with a
  complete curriculum (``checkpoints/search/best.pt``), else the last one with a warning.
- ``retrain``: for every ``exp_id`` an architecture drawn from Bernoulli(p_exec) with its own
  seed (or the argmax one) is re-trained in ``arch_<exp_id>/`` from the saved ``init`` weights
  (``retrain_from``); blocks no task executes are removed. Each is a :class:`Candidate`; the
  engine selects among them on validation only (§8.3).

Checkpoint names of the spec map onto the engine's: ``init`` = ``checkpoints/init.pt``,
``warmup`` = ``checkpoints/warmup/last.pt``, ``search_last``/``search_best`` =
``checkpoints/search/{last,best}.pt``. ``policy.json`` holds the learned distributions and
every re-trained architecture.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ...errors import ConfigError, RunDirError
from ...layers import per_task_norms
from ...seeding import seed_global, stream_seed
from ...tasks import Task
from ..base import (BuildContext, Candidate, Method, MethodContext, MultiTaskModel, OptimSpec, Phase, PhaseState,
                    Stretch, TaskHeads, register_method)
from . import diagnostics as D
from . import policy as P
from .execution import PADDING_ROW, batched_gated_features, can_batch, loop_gated_features, tree_features


class AdaShareOptions(BaseModel):
    """``method.*`` keys of ``adashare`` (names follow the reference's where it has one)."""

    model_config = ConfigDict(extra="forbid")
    # lengths, in iterations (optimiser steps)
    total_iters: int | None = Field(None, ge=1, description="warm-up + search; default train.max_steps or train.epochs epochs")
    warm_up_iters: int | None = Field(None, ge=0, description="default 0.2 · total_iters")
    cycle_iters: list[int] | None = Field(None, description="[weight, policy] stretch lengths; default one pass over train1/train2")
    search_cycles: int | None = Field(None, ge=1, description="default (total_iters − warm_up_iters) // sum(cycle_iters)")
    retrain_total_iters: int | None = Field(None, ge=1, description="default total_iters")
    decay_lr_freq: int | None = Field(None, ge=1, description="StepLR period of warm-up/re-training; default 0.2 · total_iters")
    decay_lr_rate: float = Field(0.5, gt=0)
    search_decay_lr_freq: int | None = Field(None, ge=1, description="optional StepLR of the search's SGD (default constant)")
    search_decay_lr_rate: float = Field(0.5, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    recipe: Literal["paper", "optim"] = Field(
        "paper", description="how warm-up and re-training train the weights: paper = Adam with method.betas and a "
                             "StepLR (decay_lr_freq/decay_lr_rate) stepped per iteration (spec §8.1, §8.3); optim = "
                             "the config's optim section and, for re-training, the train section's length "
                             "(train.epochs / train.max_steps, eval_every, patience): exactly what hard and "
                             "independent use, for comparisons at equal recipe (issue 23)")
    # policy (§3–§5, §7)
    skip_layer: int = Field(0, ge=0, description="lowest blocks that are always executed and have no logits")
    init_method: Literal["equal", "random", "all_chosen"] = "equal"
    init_neg_logits: float = -10.0
    policy_lr: float = Field(0.01, gt=0)
    policy_weight_decay: float = Field(5e-4, ge=0)
    init_temp: float = Field(5.0, gt=0)
    decay_temp: float = Field(0.965, gt=0, le=1)
    min_temp: float | None = Field(None, gt=0)
    hard_sampling: bool = False
    is_curriculum: bool = True
    curriculum_speed: int = Field(3, ge=1)
    curriculum_freeze_logits: bool = False
    # regularisers (§6)
    is_sparse: bool = True
    reg_w: float = Field(0.05, ge=0, description="λ_sp")
    sparsity_form: Literal["ce_skip", "log_exec"] = "ce_skip"
    sparsity_depth_weights: bool = False
    is_sharing: bool = True
    reg_w_hamming: float = Field(0.05, ge=0, description="λ_sh")
    sharing_form: Literal["paper", "reference"] = "paper"
    diff_sparsity_weights: bool = True
    # selection and extraction (§8.2–§8.3)
    search_val_policy: Literal["argmax", "soft", "sample"] = "argmax"
    policy_checkpoint: Literal["best", "last"] = "best"
    num_archs: int = Field(8, ge=1, description="architectures re-trained by default (exp_ids 0..num_archs−1)")
    extract: Literal["sampled", "argmax"] = "sampled"
    arch_seeds: list[int] | None = Field(None, description="explicit seed per exp_id (default derived from the run seed)")
    retrain_from: Literal["init", "scratch", "search"] = "init"
    task_bn: bool = Field(False, description="separate BatchNorm parameters and statistics per task in the gated "
                                             "blocks (§10.1); tasks then share no computation in those blocks")
    # execution (§10): how the search network is computed, never what it computes
    execution: Literal["auto", "batched", "loop"] = Field(
        "auto", description="batched: the part below the window and the first block in it computed once, then the "
                            "task dimension folded into the batch; auto: the same, but per-task passes after the "
                            "first block where T copies of the activations are large on a CPU; loop: one full pass "
                            "per task (the reference); all three compute the same")

    @model_validator(mode="after")
    def _one_length(self) -> "AdaShareOptions":
        if self.recipe == "optim" and self.retrain_total_iters is not None:
            raise ValueError("retrain_total_iters: with recipe optim re-training lasts train.epochs / train.max_steps, "
                             "as hard and independent do; leave retrain_total_iters out")
        return self

    @field_validator("cycle_iters")
    @classmethod
    def _two_lengths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or any(int(x) < 1 for x in v)):
            raise ValueError("cycle_iters needs two positive lengths: [weight_iters, policy_iters]")
        return v


# --------------------------------------------------------------------------------- models


class PolicyLogits(nn.Module):
    """The policy logits Φ, (tasks, gated blocks, 2): their own parameter group ``policy``."""

    def __init__(self, num_tasks: int, num_blocks: int, init_method: str = "equal", init_neg_logits: float = -10.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(P.init_logits(num_tasks, num_blocks, init_method, init_neg_logits))  # (T, L, 2)

    def exec_prob(self) -> torch.Tensor:
        return P.exec_prob(self.logits)


def _check_blocks(backbone: nn.Module) -> None:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not hasattr(backbone, "stem") or not hasattr(backbone, "pool"):
        raise ConfigError(f"method adashare: backbone {type(backbone).__name__} has no stem/blocks/pool (the block interface)")
    for i, block in enumerate(blocks):
        if not hasattr(block, "shortcut"):
            raise ConfigError(f"method adashare: block {i} of {type(backbone).__name__} exposes no shortcut S(x); "
                              "AdaShare needs blocks whose forward is the whole F(x) and a separate shortcut")


def _split_blocks(backbone: nn.Module, skip_layer: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """(ungated, gated) blocks as plain lists: slicing an ``nn.ModuleList`` builds a new module
    (about 10 µs, a tenth of a small network's tree inference)."""
    blocks = list(backbone.blocks)
    return blocks[:skip_layer], blocks[skip_layer:]


def _task_norms(backbone: nn.Module, skip_layer: int, num_tasks: int, task_bn: bool) -> bool:
    """``task_bn``: per-task BatchNorm in the gated blocks (the stem and ungated blocks stay shared)."""
    if not task_bn:
        return False
    if any(isinstance(m, nn.SyncBatchNorm) for m in backbone.modules()):
        raise ConfigError("method.task_bn: per-task BatchNorm cannot be synchronised across processes; "
                          "set train.sync_bn=false (or method.task_bn=false)")
    if not per_task_norms(nn.ModuleList(backbone.blocks[skip_layer:]), num_tasks):
        raise ConfigError("method.task_bn: the backbone's gated blocks have no BatchNorm (backbone.norm: batch)")
    return True


class AdaShareNet(MultiTaskModel):
    """The search network: backbone blocks gated per task by a policy given to ``forward``.

    ``forward(x, tasks, policy=None)``: ``policy`` (all tasks, gated blocks, 2) of gate weights
    (a Gumbel sample, a padded argmax, ...), rows in the order of ``self.tasks``; None executes
    every block (the plain backbone, computed once for all tasks). Nothing is mutated in
    ``forward``; the stem and the ``skip_layer`` ungated blocks are computed once.
    """

    def __init__(self, backbone: nn.Module, tasks: list[Task], *, skip_layer: int = 0, init_method: str = "equal",
                 init_neg_logits: float = -10.0, execution: str = "auto", task_bn: bool = False) -> None:
        super().__init__()
        _check_blocks(backbone)
        if skip_layer >= len(backbone.blocks):
            raise ConfigError(f"method.skip_layer: {skip_layer} leaves no gated block (the backbone has "
                              f"{len(backbone.blocks)} blocks)")
        self.task_bn = _task_norms(backbone, skip_layer, len(tasks), task_bn)
        # stacked execution needs task-aware BatchNorm (make_norm builds it); otherwise the loop
        self.execution = execution if execution == "loop" or can_batch(backbone) else "loop"
        self.tasks = list(tasks)
        self.skip_layer = skip_layer
        self.backbone = backbone
        self.heads = TaskHeads(backbone.out_features, tasks)
        self.policy = PolicyLogits(len(tasks), len(backbone.blocks) - skip_layer, init_method, init_neg_logits)
        self._task_index = {t.name: i for i, t in enumerate(self.tasks)}

    @property
    def num_gated(self) -> int:
        return len(self.backbone.blocks) - self.skip_layer

    @property
    def block_names(self) -> list[str]:
        return [f"block{i}" for i in range(self.skip_layer, len(self.backbone.blocks))]

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone.stem(x)
        for block in _split_blocks(self.backbone, self.skip_layer)[0]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, policy: torch.Tensor | None = None,
                shared_blocks: int = 0, **_: Any) -> dict[str, torch.Tensor]:
        """``shared_blocks``: lowest gated blocks whose rows are the padding row (1, 0) for every
        task (below the curriculum window); batched execution computes them once (§10.1)."""
        names = list(tasks or self.task_names)
        h0 = self._trunk(x)
        gated = _split_blocks(self.backbone, self.skip_layer)[1]
        if policy is None and self.task_bn:  # every block, but each task with its own normalisation
            policy = h0.new_tensor(PADDING_ROW).expand(len(self.tasks), self.num_gated, 2)
        if policy is None:
            h = h0
            for block in gated:
                h = block(h)
            features = self.backbone.pool(h)
            return {t: self.heads[t](features) for t in names}
        ids = [self._task_index[t] for t in names]
        rows = policy[ids]  # (tasks asked, L, 2)
        if self.execution != "loop":  # v_exec · F(h) + v_skip · S(h), the common part once
            features = batched_gated_features(gated, h0, rows, self.backbone.pool, shared_blocks,
                                              stack=True if self.execution == "batched" else None, ids=ids,
                                              per_task_norms=self.task_bn, columns=True)
            if isinstance(features, torch.Tensor):  # the tasks ended stacked: (B, T, D)
                return self.heads.columns(features, names)
        else:
            features = loop_gated_features(gated, h0, rows, self.backbone.pool, ids)
        return {t: self.heads[t](f) for t, f in zip(names, features)}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()), "heads": list(self.heads.parameters()),
                "policy": [self.policy.logits]}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.backbone, self.heads[task]]

    def aux_losses(self, window: int | None = None, sparsity_weight: float = 0.0, sharing_weight: float = 0.0,
                   sparsity_form: str = "ce_skip", sparsity_depth_weights: bool = False, sharing_form: str = "paper",
                   sharing_depth_weights: bool = True, freeze_below_window: bool = False,
                   **_: Any) -> dict[str, torch.Tensor]:
        """``{"sparsity": λ_sp · L_sparsity(window), "sharing": λ_sh · L_sharing(all blocks)}`` (§6).

        ``freeze_below_window`` detaches the rows below the window from the sharing term
        (``curriculum_freeze_logits``)."""
        logits = self.policy.logits
        n = self.num_gated if window is None else window
        out: dict[str, torch.Tensor] = {}
        if sparsity_weight > 0:
            out["sparsity"] = sparsity_weight * P.sparsity_loss(logits, n, sparsity_form, sparsity_depth_weights)
        if sharing_weight > 0 and len(self.tasks) > 1:
            if freeze_below_window and n < self.num_gated:
                inside = P.window_mask(self.num_gated, n, logits.device)[None, :, None]
                logits = torch.where(inside, logits, logits.detach())
            out["sharing"] = sharing_weight * P.sharing_loss(logits, sharing_form, sharing_depth_weights)
        return out


class RemovedBlock(nn.Module):
    """A block that no task executes: only its shortcut is kept (identity or projection)."""

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x)


class AdaShareArchitecture(MultiTaskModel):
    """A re-trained architecture: a fixed binary policy; blocks skipped by every task removed.

    ``decisions[task]`` lists 1 (execute) / 0 (skip) per gated block. A skipped block runs
    only its shortcut (nothing for an identity), an executed one the whole ``F_l``; tasks are
    computed as a prefix tree (§10.2), so a block several tasks execute on the same input runs once.
    State-dict names match :class:`AdaShareNet`'s, so its checkpoints load into this model.
    """

    def __init__(self, backbone: nn.Module, tasks: list[Task], decisions: dict[str, Sequence[int]], *,
                 skip_layer: int = 0, task_bn: bool = False) -> None:
        super().__init__()
        _check_blocks(backbone)
        self.task_bn = _task_norms(backbone, skip_layer, len(tasks), task_bn)
        self.tasks = list(tasks)
        self.skip_layer = skip_layer
        num_gated = len(backbone.blocks) - skip_layer
        for t in self.tasks:
            if t.name not in decisions or len(decisions[t.name]) != num_gated:
                raise ValueError(f"architecture: task {t.name!r} needs {num_gated} decisions")
        self.decisions = {t.name: tuple(int(bool(u)) for u in decisions[t.name]) for t in self.tasks}
        self.removed = [j for j in range(num_gated) if not any(self.decisions[t][j] for t in self.decisions)]
        for j in self.removed:
            backbone.blocks[skip_layer + j] = RemovedBlock(backbone.blocks[skip_layer + j].shortcut)
        self.backbone = backbone
        self.heads = TaskHeads(backbone.out_features, tasks)

    def forward(self, x: torch.Tensor, tasks: Sequence[str] | None = None, **_: Any) -> dict[str, torch.Tensor]:
        ungated, gated = _split_blocks(self.backbone, self.skip_layer)
        h0 = self.backbone.stem(x)
        for block in ungated:
            h0 = block(h0)
        names = list(tasks or self.task_names)
        task_ids = {t.name: i for i, t in enumerate(self.tasks)} if self.task_bn else None
        # tasks sharing a leaf: their heads as one matrix product, as the leaf is reached
        return tree_features(gated, h0, self.decisions, self.backbone.pool, names, task_ids=task_ids,
                             at_leaf=self.heads.shared_input)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()), "heads": list(self.heads.parameters())}

    def task_modules(self, task: str) -> list[nn.Module]:
        ungated, gated = _split_blocks(self.backbone, self.skip_layer)
        mods: list[nn.Module] = [self.backbone.stem, *ungated]
        for block, u in zip(gated, self.decisions[task]):
            mods.append(block if u else block.shortcut)
        return [*mods, self.backbone.pool, self.heads[task]]


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the entries of ``state`` that ``model`` has (a pruned model from a full checkpoint)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RunDirError(f"{source}: does not fit the architecture (missing {missing[:3]})")
    model.load_state_dict({k: state[k] for k in own})


# --------------------------------------------------------------------------------- method


@dataclass
class _Plan:
    """Lengths of every phase, in iterations, resolved from the options and the data."""

    steps_per_epoch: int
    total_iters: int
    warm_up_iters: int
    cycle_iters: tuple[int, int]
    search_cycles: int
    retrain_iters: int
    decay_lr_freq: int
    eval_every: int

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@register_method
class AdaShare(Method):
    name = "adashare"
    description = ("AdaShare: per-task execute/skip policies over residual blocks (Gumbel-softmax search with "
                   "curriculum), then re-training of sampled architectures")
    Options = AdaShareOptions
    stages = ("train", "retrain")
    artifacts = ("policy.json",)
    conformance_options = {"warm_up_iters": 3, "cycle_iters": [1, 1], "search_cycles": 2, "curriculum_speed": 1,
                           "num_archs": 2, "retrain_total_iters": 3}
    options: AdaShareOptions

    def __init__(self, options: BaseModel, cfg: Any) -> None:
        super().__init__(options, cfg)
        self._plan: _Plan | None = None
        self._frozen_rows: tuple[int, torch.Tensor] | None = None
        self._aux_grads: dict[str, torch.Tensor] | None = None  # the regularisers' gradients of the step

    def build(self, ctx: BuildContext) -> AdaShareNet:
        o = self.options
        return AdaShareNet(ctx.backbone_factory(), ctx.tasks, skip_layer=o.skip_layer, init_method=o.init_method,
                           init_neg_logits=o.init_neg_logits, execution=o.execution, task_bn=o.task_bn)

    # ------------------------------------------------------------------ sizing

    def plan(self, steps_per_epoch: int, train1_batches: int | None = None, train2_batches: int | None = None) -> _Plan:
        """Resolve the phase lengths (spec §9.2 defaults)."""
        o, t = self.options, self.cfg.train
        spe = max(1, steps_per_epoch)
        total = o.total_iters or t.max_steps or max(1, t.epochs) * spe
        warm = o.warm_up_iters if o.warm_up_iters is not None else int(round(0.2 * total))
        if o.cycle_iters:
            cycle = (int(o.cycle_iters[0]), int(o.cycle_iters[1]))
        else:
            half = max(1, -(-spe // 2))
            cycle = (max(1, train1_batches or half), max(1, train2_batches or half))
        cycles = o.search_cycles or max(1, (total - warm) // sum(cycle))
        return _Plan(spe, total, warm, cycle, cycles, o.retrain_total_iters or total,
                     o.decay_lr_freq or max(1, int(round(0.2 * total))), t.eval_every or spe)

    def _plan_for(self, ctx: MethodContext) -> _Plan:
        return self.plan(ctx.batches_per_epoch("train"), ctx.batches_per_epoch("train1"),
                         ctx.batches_per_epoch("train2"))

    def check_sizing(self, plan: _Plan, num_blocks: int) -> list[str]:
        """Warnings of §9.2: a curriculum that never completes, τ that never falls below 1."""
        o = self.options
        problems = []
        complete = P.curriculum_complete_cycle(num_blocks, o.curriculum_speed, o.is_curriculum)
        tau_end = P.temperature(plan.search_cycles, o.init_temp, o.decay_temp, o.min_temp)
        if plan.search_cycles <= complete:
            problems.append(f"the curriculum never completes ({plan.search_cycles} search cycles, it needs more than "
                            f"{complete} for {num_blocks} gated blocks at curriculum_speed {o.curriculum_speed}); "
                            "the lowest blocks keep untrained policies")
        if tau_end > 1.0:
            need = P.cycles_to_temperature(1.0, o.init_temp, o.decay_temp)
            problems.append(f"the temperature ends at {tau_end:.2f} (> 1: soft mixtures) after {plan.search_cycles} "
                            f"cycles; about {need} cycles anneal it below 1")
        if problems:
            recommended = P.search_cycles_needed(num_blocks, o.curriculum_speed, o.is_curriculum)
            problems.append(f"size the search for at least {max(recommended, P.cycles_to_temperature(1.0, o.init_temp, o.decay_temp))} "
                            "cycles (method.search_cycles, method.cycle_iters or method.total_iters)")
        return problems

    # ------------------------------------------------------------------ phases

    @staticmethod
    def _regulariser_gradients(model: AdaShareNet, aux_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """∂(λ_sp L_sparsity)/∂Φ and ∂(λ_sh L_sharing)/∂Φ at the current logits (both depend on Φ
        alone: no pass through the network); a term that is off has none."""
        logits = model.policy.logits
        with torch.enable_grad():
            terms = model.aux_losses(**aux_kwargs)
            out = {}
            for name, value in terms.items():
                grad = torch.autograd.grad(value, logits, allow_unused=True)[0]
                out[name] = torch.zeros_like(logits) if grad is None else grad.detach()
        return out

    def _optim(self, kind: str, groups: Sequence[str], **kw: Any) -> OptimSpec:
        o = self.cfg.optim
        lrs = {g: (o.backbone_lr or o.lr) if g == "backbone" else o.lr for g in groups}
        return OptimSpec(kind, lrs, o.weight_decay, momentum=o.momentum, grad_clip=o.grad_clip, **kw)

    def _adam_step(self, plan: _Plan) -> OptimSpec:
        """Warm-up and re-training: Adam β=(0.5, 0.999), StepLR stepped per iteration (§8.1), or with
        ``recipe: optim`` the ``optim`` section as ``hard`` and ``independent`` use it."""
        if self.options.recipe == "optim":
            return self.default_optim(["backbone", "heads"])
        return self._optim("adam", ["backbone", "heads"], betas=tuple(self.options.betas), schedule="step",
                           step_size=plan.decay_lr_freq, gamma=self.options.decay_lr_rate)

    def phases(self, model: MultiTaskModel, steps_per_epoch: int) -> list[Phase]:
        """``warmup`` then ``search`` on the gated model (the ``train`` stage)."""
        assert isinstance(model, AdaShareNet)
        o = self.options
        plan = self._plan or self.plan(steps_per_epoch)
        L = model.num_gated
        problems = self.check_sizing(plan, L)
        if problems:
            warnings.warn("adashare: " + "; ".join(problems))
        seed = self.cfg.train.seed
        logits = model.policy.logits

        def window(cycle: int) -> int:
            return P.window_size(cycle, L, o.curriculum_speed, o.is_curriculum)

        def tau(cycle: int) -> float:
            return P.temperature(cycle, o.init_temp, o.decay_temp, o.min_temp)

        def sampled(state: PhaseState) -> torch.Tensor:
            g = torch.Generator()
            g.manual_seed(stream_seed(seed, "gumbel", state.step))
            return P.sample_policy(logits, tau(state.cycle), window(state.cycle), g, o.hard_sampling)

        def weight_kwargs(state: PhaseState) -> dict[str, Any]:
            with torch.no_grad():
                return {"policy": sampled(state), "shared_blocks": L - window(state.cycle)}

        def policy_kwargs(state: PhaseState) -> dict[str, Any]:
            n = window(state.cycle)
            if o.curriculum_freeze_logits and n < L:
                self._frozen_rows = (L - n, logits.detach()[:, :L - n].clone())
            self._aux_grads = self._regulariser_gradients(model, aux_kwargs(state))
            return {"policy": sampled(state), "shared_blocks": L - window(state.cycle)}

        def aux_kwargs(state: PhaseState) -> dict[str, Any]:
            return {"window": window(state.cycle),
                    "sparsity_weight": o.reg_w if o.is_sparse else 0.0,
                    "sharing_weight": o.reg_w_hamming if o.is_sharing else 0.0,
                    "sparsity_form": o.sparsity_form, "sparsity_depth_weights": o.sparsity_depth_weights,
                    "sharing_form": o.sharing_form, "sharing_depth_weights": o.diff_sparsity_weights,
                    "freeze_below_window": o.curriculum_freeze_logits}

        def after_step(state: PhaseState, split: str) -> None:
            if split != "train2":
                return
            if logits.grad is not None and self._aux_grads is not None:  # the step's gradient on Φ by term
                parts = D.split_gradient(logits.grad.detach(), self._aux_grads)
                D.accumulate(state.extra.setdefault("grad_acc", {}), D.gradient_norms(parts, model.task_names))
            self._aux_grads = None
            if self._frozen_rows is not None:
                k, rows = self._frozen_rows
                with torch.no_grad():
                    logits[:, :k] = rows
                self._frozen_rows = None

        def val_kwargs(state: PhaseState) -> dict[str, Any]:
            n = window(max(0, state.cycle - 1))  # the window of the cycle just completed
            with torch.no_grad():
                probs = P.exec_prob(logits)
                if o.search_val_policy == "soft":
                    policy = torch.stack([probs, 1 - probs], -1)
                elif o.search_val_policy == "sample":
                    policy = P.decisions_to_policy(P.sample_decisions(probs, stream_seed(seed, "gumbel_val", state.cycle)))
                else:
                    policy = P.decisions_to_policy(P.argmax_decisions(probs))
            return {"policy": P.pad_below_window(policy.to(logits.device, logits.dtype), n)}

        def cycle_end(state: PhaseState) -> None:
            e = state.cycle  # completed policy stretches
            state.extra["temperature"] = tau(e)
            state.extra["window"] = window(e - 1)
            state.extra["curriculum_complete"] = int(e - 1 >= P.curriculum_complete_cycle(L, o.curriculum_speed, o.is_curriculum))
            probs = P.exec_prob(logits.detach()).cpu()
            hist = state.extra.setdefault("history", [])
            entry = {"cycle": e, "temperature": tau(e), "window": window(e - 1),
                     "exec_prob": [[round(float(v), 6) for v in row] for row in probs]}
            norms = D.cycle_means(state.extra.pop("grad_acc", {}))
            if norms is not None:  # mean L2 norm over the cycle's policy steps, per loss term
                entry["grad_norm"] = {k: round(v, 8) for k, v in norms.items()}
                for k in D.GRAD_TERMS:
                    state.extra[f"grad_norm_{k}"] = norms[k]  # metrics.jsonl: state/grad_norm_<term>
            hist.append(entry)

        search_opts = {
            "weights": self._optim("sgd", ["backbone", "heads"],
                                   schedule="step" if o.search_decay_lr_freq else "none",
                                   step_size=o.search_decay_lr_freq or 1000, gamma=o.search_decay_lr_rate),
            "policy": OptimSpec("adam", {"policy": o.policy_lr}, o.policy_weight_decay, betas=(0.9, 0.999)),
        }
        complete = P.curriculum_complete_cycle(L, o.curriculum_speed, o.is_curriculum)
        search = Phase(
            "search",
            [Stretch("train1", "weights", iters=plan.cycle_iters[0], forward_kwargs=weight_kwargs),
             Stretch("train2", "policy", iters=plan.cycle_iters[1], objective="task+aux", forward_kwargs=policy_kwargs,
                     aux_kwargs=aux_kwargs)],
            search_opts, cycles=plan.search_cycles, eval_split="val", selection="score",
            select_from_cycle=complete + 1, eval_kwargs=val_kwargs, on_cycle_end=cycle_end,
            after_step=after_step, save_init=plan.warm_up_iters == 0)
        if plan.warm_up_iters == 0:
            return [search]
        warmup = Phase("warmup", [Stretch("train", "main")], {"main": self._adam_step(plan)},
                       cycles=-(-plan.warm_up_iters // plan.steps_per_epoch), max_steps=plan.warm_up_iters,
                       eval_every=plan.eval_every, selection="last", save_init=True)
        return [warmup, search]

    def retrain_phases(self, plan: _Plan) -> list[Phase]:
        """One ``retrain`` phase of a fixed architecture on the full ``train`` split (§8.3); with
        ``recipe: optim`` the phase ``hard`` trains with (same optimiser, schedule, length, evaluations)."""
        if self.options.recipe == "optim":
            t = self.cfg.train
            return [Phase("retrain", [Stretch("train", "main")], {"main": self._adam_step(plan)}, cycles=t.epochs,
                          max_steps=t.max_steps, eval_every=t.eval_every, patience=t.patience, selection="score")]
        return [Phase("retrain", [Stretch("train", "main")], {"main": self._adam_step(plan)},
                      cycles=-(-plan.retrain_iters // plan.steps_per_epoch), max_steps=plan.retrain_iters,
                      eval_every=plan.eval_every, patience=self.cfg.train.patience, selection="score")]

    # ------------------------------------------------------------------ stages

    def train_candidates(self, ctx: MethodContext, run_phases: Callable[..., list[dict[str, Any]]], *, resume: bool = False,
                         stage: str | None = None) -> tuple[list[Candidate], list[dict[str, Any]]]:
        self._plan = self._plan_for(ctx)
        summaries: list[dict[str, Any]] = []
        search = None
        if stage in (None, "train"):
            phases = self.phases(ctx.model, self._plan.steps_per_epoch)
            summaries += run_phases(ctx.model, phases, resume=resume)
            search = self.search_result(ctx)
            self._write_policy(ctx, search, None)
            if stage == "train":
                return [], summaries
        search = search or self.search_result(ctx)
        candidates = []
        for exp_id in self.exp_ids():
            arch = self.architecture(exp_id, search)
            model = self._architecture_model(ctx, arch, search)
            seed_global(arch["seed"])
            summaries += run_phases(model, self.retrain_phases(self._plan), directory=arch["name"], resume=resume,
                                    seed=arch["seed"])
            candidates.append(Candidate(arch["name"], f"{arch['name']}/checkpoints/retrain/best.pt", arch["name"],
                                        exp_id=exp_id, info=arch))
        self._write_policy(ctx, search, [c.info for c in candidates])
        return candidates, summaries

    def exp_ids(self) -> list[int | str]:
        """``train.exp_ids`` (``--exp-ids``) or the default: 0..num_archs−1, or ``argmax``."""
        raw = self.cfg.train.exp_ids
        if not raw:
            return ["argmax"] if self.options.extract == "argmax" else list(range(self.options.num_archs))
        out: list[int | str] = []
        for v in raw:
            if isinstance(v, str) and v.strip().lower() == "argmax":
                out.append("argmax")
            elif isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                out.append(v)
            elif isinstance(v, str) and v.strip().isdigit():
                out.append(int(v))
            else:
                raise ConfigError(f"train.exp_ids (--exp-ids): {v!r} is not an architecture id (0, 1, ... or argmax)")
        return list(dict.fromkeys(out))

    def arch_seed(self, exp_id: int | str) -> int:
        """The architecture's seed: ``arch_seeds[exp_id]`` or ``stream_seed(seed, "arch_sample", exp_id)``."""
        seeds = self.options.arch_seeds
        if exp_id == "argmax":
            return stream_seed(self.cfg.train.seed, "arch_sample_argmax")
        if seeds is not None:
            if int(exp_id) >= len(seeds):
                raise ConfigError(f"method.arch_seeds: no seed for exp_id {exp_id} ({len(seeds)} given)")
            return int(seeds[int(exp_id)])
        return stream_seed(self.cfg.train.seed, "arch_sample", int(exp_id))

    def architecture(self, exp_id: int | str, search: dict[str, Any]) -> dict[str, Any]:
        """The binary policy of ``exp_id``: Bernoulli(p_exec) with its seed, or the argmax (ties execute)."""
        probs = torch.tensor([search["exec_prob"][t] for t in search["tasks"]], dtype=torch.float64)
        seed = self.arch_seed(exp_id)
        if exp_id == "argmax":
            decisions, kind = P.argmax_decisions(probs), "argmax"
        else:
            decisions, kind = P.sample_decisions(probs, seed), "sampled"
        policy = {t: [int(u) for u in decisions[i]] for i, t in enumerate(search["tasks"])}
        removed = [b for j, b in enumerate(search["blocks"]) if not any(policy[t][j] for t in policy)]
        return {"exp_id": exp_id, "name": f"arch_{exp_id}", "kind": kind, "seed": seed, "policy": policy,
                "removed_blocks": removed, "num_removed": len(removed), "retrain_from": self.options.retrain_from}

    def _architecture_model(self, ctx: MethodContext, arch: dict[str, Any], search: dict[str, Any]) -> AdaShareArchitecture:
        source = self.options.retrain_from
        if source == "scratch":
            torch.manual_seed(stream_seed(arch["seed"], "init"))
        model = AdaShareArchitecture(ctx.backbone_factory(), ctx.tasks, arch["policy"], skip_layer=self.options.skip_layer,
                                     task_bn=self.options.task_bn)
        if source == "init":
            load_matching(model, ctx.load_checkpoint("checkpoints/init.pt")["model"], "checkpoints/init.pt")
        elif source == "search":
            load_matching(model, ctx.load_checkpoint(search["checkpoint"])["model"], search["checkpoint"])
        return model.to(ctx.device)

    def candidate_model(self, ctx: MethodContext, candidate: Candidate) -> MultiTaskModel:
        model = AdaShareArchitecture(ctx.backbone_factory(), ctx.tasks, candidate.info["policy"],
                                     skip_layer=self.options.skip_layer, task_bn=self.options.task_bn)
        return model.to(ctx.device)

    def search_result(self, ctx: MethodContext) -> dict[str, Any]:
        """The selected search checkpoint's policy: ``best`` (complete curriculum) or ``last``."""
        last = ctx.load_phase_checkpoint("search", "last", missing_ok=True)
        if last is None:
            raise RunDirError(f"{ctx.run_dir}: no policy search found ({ctx.run_dir / 'checkpoints/search/last.pt'}); "
                              "run `sharewise train` first")
        if not last["state"].get("done"):
            raise RunDirError(f"{ctx.run_dir}: the policy search did not finish; continue it with "
                              "`sharewise train --resume`")
        chosen, which = last, "last"
        if self.options.policy_checkpoint == "best":
            best = ctx.load_phase_checkpoint("search", "best", missing_ok=True)
            if best is not None and "state" in best:
                chosen, which = best, "best"
            else:
                warnings.warn("adashare: no search checkpoint with a complete curriculum; the policy of the last "
                              "search cycle is used (checkpoints/search/last.pt)")
        state = chosen["state"]
        logits = chosen["model"]["policy.logits"].float()
        probs = P.exec_prob(logits)
        tasks = [t.name for t in ctx.tasks]
        L = logits.shape[1]
        skip = self.options.skip_layer
        blocks = [f"block{i}" for i in range(skip, skip + L)]
        o = self.options
        complete_at = P.curriculum_complete_cycle(L, o.curriculum_speed, o.is_curriculum)
        cycle = int(state["cycle"])
        win = P.window_size(max(0, cycle - 1), L, o.curriculum_speed, o.is_curriculum)
        if win < L:
            warnings.warn(f"adashare: the curriculum covered only the top {win} of {L} gated blocks; the policies of "
                          "the lower blocks are untrained (p_exec stays at its initial value)")
        return {
            "tasks": tasks, "blocks": blocks, "skip_layer": skip,
            "checkpoint": f"checkpoints/search/{which}.pt", "policy_checkpoint": which,
            "cycle": cycle, "temperature": P.temperature(cycle, o.init_temp, o.decay_temp, o.min_temp),
            "window": win, "curriculum_complete": cycle - 1 >= complete_at, "curriculum_complete_cycle": complete_at,
            "search_cycles": int(last["state"]["cycle"]),
            "logits": {t: logits[i].tolist() for i, t in enumerate(tasks)},
            "exec_prob": {t: probs[i].tolist() for i, t in enumerate(tasks)},
            "history": last["state"].get("extra", {}).get("history", []),
            "plan": self._plan.as_dict() if self._plan else None,
        }

    # ------------------------------------------------------------------ artefacts

    def _write_policy(self, ctx: MethodContext, search: dict[str, Any], archs: list[dict[str, Any]] | None) -> None:
        previous = ctx.read_artifact("policy.json") or {}
        known = {str(a["exp_id"]): a for a in previous.get("architectures", [])} if archs is not None else {}
        for a in archs or []:
            known[str(a["exp_id"])] = {**known.get(str(a["exp_id"]), {}), **a, "val_score": None, "selected": False}
        history = search.get("history", [])  # the search's p_exec per cycle (search_result read it)
        search = {k: v for k, v in search.items() if k != "history"}
        policy = {"method": "adashare", **search, "options": self.options.model_dump(mode="json"),
                  "history": history, "architectures": list(known.values())}
        ctx.write_artifact("policy.json", policy)

    def on_selection(self, ctx: MethodContext, selection: dict[str, Any]) -> None:
        """Record every architecture's validation score and the selected one in ``policy.json``."""
        policy = ctx.read_artifact("policy.json")
        if policy is None:
            return
        scores = {c["name"]: c.get("score") for c in selection.get("candidates", [])}
        for a in policy.get("architectures", []):
            a["val_score"] = scores.get(a["name"])
            a["selected"] = a["name"] == selection.get("selected")
        ctx.write_artifact("policy.json", policy)

    def results(self, ctx: MethodContext, model: MultiTaskModel) -> dict[str, Any]:
        """``results.json``'s ``adashare`` entry: p_exec over the search, the pairwise task distances
        of the selected policy and the policy-logit gradient sizes per loss term (:mod:`.diagnostics`)."""
        policy = ctx.read_artifact("policy.json")
        return {"adashare": D.diagnostics(policy)} if policy else {}

    @classmethod
    def report_sections(cls, run_dir: Path, plots_dir: Path) -> list[str]:
        from .report import adashare_report

        return adashare_report(Path(run_dir), Path(plots_dir))


__all__ = ["AdaShare", "AdaShareArchitecture", "AdaShareNet", "AdaShareOptions", "PolicyLogits", "RemovedBlock",
           "load_matching"]
