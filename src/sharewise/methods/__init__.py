"""Methods (sharing strategies), one module each, found through a registry: every public module
(or package) here is imported by :func:`methods` and registers itself with ``@register_method``."""

from .base import (BuildContext, Candidate, Method, MethodContext, MultiTaskModel, OptimSpec, Phase, PhaseState, Stretch,
                   get_method, methods, register_method)

__all__ = ["BuildContext", "Candidate", "Method", "MethodContext", "MultiTaskModel", "OptimSpec", "Phase", "PhaseState",
           "Stretch", "get_method", "methods", "register_method"]
