"""Backbones with the block interface (stem, blocks, pool, out_features) and their registry."""

from .base import (DEFAULT_BACKBONES, Backbone, Block, apply_block, backbone_factory, backbones, default_backbone,
                   make_norm, register_backbone)

__all__ = ["DEFAULT_BACKBONES", "Backbone", "Block", "apply_block", "backbone_factory", "backbones", "default_backbone",
           "make_norm", "register_backbone"]
