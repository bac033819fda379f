"""Backbones with the block interface (stem, blocks, pool, out_features) and their registry."""

from .base import Backbone, Block, apply_block, backbone_factory, backbones, make_norm, register_backbone

__all__ = ["Backbone", "Block", "apply_block", "backbone_factory", "backbones", "make_norm", "register_backbone"]
