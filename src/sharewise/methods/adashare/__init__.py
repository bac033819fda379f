"""``adashare``: per-task execute/skip policies over residual blocks (Sun et al., NeurIPS 2020).

The method (:mod:`.method`), its policy mathematics (:mod:`.policy`), its fast execution of
gated backbones (:mod:`.execution`: batched search steps, tree execution of fixed policies) and
its part of ``report.md`` (:mod:`.report`).
"""

from .method import (AdaShare, AdaShareArchitecture, AdaShareNet, AdaShareOptions, PolicyLogits, RemovedBlock,
                     load_matching)

__all__ = ["AdaShare", "AdaShareArchitecture", "AdaShareNet", "AdaShareOptions", "PolicyLogits", "RemovedBlock",
           "load_matching"]
