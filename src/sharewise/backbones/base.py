"""The backbone contract shared by every method.

A backbone has ``stem``, ``blocks`` (an ordered ``nn.ModuleList``), ``pool`` and
``out_features``. ``block(x)`` returns the whole block output F(x) (shortcut and activation
included) and ``block.shortcut(x)`` returns S(x) (identity or projection), so a gate can mix
``v_exec · F(x) + v_skip · S(x)`` without ever adding the residual twice.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from ..config import validate_options
from ..errors import ConfigError, close_matches


class Block(nn.Module, abc.ABC):
    """A residual block: ``forward(x) = act(shortcut(x) + residual(x))``; ``shortcut(x) = S(x)``."""

    shortcut: nn.Module
    act: nn.Module

    @abc.abstractmethod
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """G(x), the block's residual branch without the shortcut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.residual(x))


class Backbone(nn.Module):
    """stem → blocks → pool. ``gates`` (L, 2) or (L, B, 2) mixes each block with its shortcut."""

    stem: nn.Module
    blocks: nn.ModuleList
    pool: nn.Module
    out_features: int

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(x)
        for index, block in enumerate(self.blocks):
            h = apply_block(block, h, None if gates is None else gates[index])
        return self.pool(h)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


def apply_block(block: nn.Module, h: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``gate`` None: F(x). Otherwise ``gate[..., 0] · F(x) + gate[..., 1] · S(x)``, where the
    gate is (2,) for the whole batch or (B, 2) per example.

    For a residual :class:`Block` the shortcut is computed once and shared by both branches,
    ``s = S(x); F(x) = act(s + G(x))`` (the residual still added exactly once), so a projection
    costs one pass, as in the reference's count; other blocks compute F and S separately."""
    if gate is None:
        return block(h)
    exec_w, skip_w = gate[..., 0], gate[..., 1]
    if exec_w.dim() == 1:
        view = (-1,) + (1,) * (h.dim() - 1)
        exec_w, skip_w = exec_w.view(view), skip_w.view(view)
    f, s = block_branches(block, h)
    return exec_w * f + skip_w * s


def block_branches(block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F(h), S(h))``; for a residual :class:`Block` S is computed once and reused inside F."""
    if isinstance(block, Block) and type(block).forward is Block.forward:
        s = block.shortcut(h)
        return block.act(s + block.residual(h)), s
    return block(h), block.shortcut(h)


def make_norm(kind: str, channels: int, dims: int) -> nn.Module:
    """Normalisation by name for 1-D features (dims=0), images (2) or volumes (3)."""
    if kind == "batch":
        from ..layers.norm import TaskBatchNorm1d, TaskBatchNorm2d, TaskBatchNorm3d

        return {0: TaskBatchNorm1d, 1: TaskBatchNorm1d, 2: TaskBatchNorm2d, 3: TaskBatchNorm3d}[dims](channels)
    if kind == "group":
        # at least 4 channels a group: vectors have one value per channel, and deep feature maps
        # can shrink to 1 voxel, where a one-channel group has nothing to normalise over
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 4 or g == 1)
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        return nn.LayerNorm(channels) if dims == 0 else nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"backbone.norm: unknown normalisation {kind!r} (batch, group, layer, none)")


@dataclass
class BackboneInfo:
    name: str
    build: Callable[..., Backbone]
    options: type[BaseModel]
    description: str
    input_kinds: tuple[str, ...]


_BACKBONES: dict[str, BackboneInfo] = {}


def register_backbone(name: str, options: type[BaseModel], description: str, input_kinds: tuple[str, ...]):
    def deco(fn: Callable[..., Backbone]):
        _BACKBONES[name] = BackboneInfo(name, fn, options, description, input_kinds)
        return fn
    return deco


def backbones() -> dict[str, BackboneInfo]:
    from . import convnet, mlp, plain_mlp, resnet, resnet3d  # noqa: F401  (registration)

    return dict(_BACKBONES)


def backbone_factory(name: str, options: dict[str, Any], input_spec: Any) -> Callable[[], Backbone]:
    """Validate ``backbone.*`` once and return a function that builds a fresh backbone."""
    table = backbones()
    if name not in table:
        raise ConfigError(f"backbone.name: unknown backbone {name!r}{close_matches(name, table)} ({', '.join(table)})")
    info = table[name]
    if input_spec.kind not in info.input_kinds:
        raise ConfigError(
            f"backbone.name: {name!r} takes {'/'.join(info.input_kinds)} inputs, but the data gives "
            f"{input_spec.kind} inputs of shape {list(input_spec.shape)}"
        )
    opts = validate_options(info.options, options, "backbone")
    return lambda: info.build(input_spec, opts)


DEFAULT_BACKBONES = {"vector": "mlp", "image": "convnet", "volume": "resnet3d"}
"""The backbone family a run gets from the kind of its inputs when ``backbone.name`` is not set."""


def default_backbone(input_spec: Any, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The default backbone for ``input_spec`` and the options it needs beyond the user's
    ``options``: tables (vectors) the residual MLP, images the conv net, volumes the 3-D ResNet.
    An image too small for the conv net's default pooling (a 2×2 max-pool in each of its blocks)
    pools in as many leading blocks as it can (8×8 digits: three of four), so the default always
    builds."""
    name = DEFAULT_BACKBONES.get(input_spec.kind, "mlp")
    extra: dict[str, Any] = {}
    options = options or {}
    if name == "convnet" and "pool" not in options:
        from .convnet import ConvNetOptions

        stride = int(options.get("stem_stride", 1))
        side = min(int(s) for s in input_spec.shape[1:]) // max(1, stride)
        blocks = len(options.get("widths") or ConvNetOptions().widths)
        pools = max(0, side.bit_length() - 1)  # halvings that keep at least one pixel
        if pools < blocks:
            extra["pool"] = [True] * pools + [False] * (blocks - pools)
    return name, extra
