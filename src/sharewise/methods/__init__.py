"""Methods (sharing strategies), one file each, found through a registry."""

from .base import Method, MultiTaskModel, OptimSpec, Phase, PhaseState, Stretch, get_method, methods, register_method

__all__ = ["Method", "MultiTaskModel", "OptimSpec", "Phase", "PhaseState", "Stretch", "get_method", "methods",
           "register_method"]
