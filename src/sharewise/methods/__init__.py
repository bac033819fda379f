"""Methods (sharing strategies), one file each, found through a registry."""

from .base import Candidate, Method, MultiTaskModel, OptimSpec, Phase, PhaseState, Stretch, get_method, methods, register_method

__all__ = ["Candidate", "Method", "MultiTaskModel", "OptimSpec", "Phase", "PhaseState", "Stretch", "get_method", "methods",
           "register_method"]
