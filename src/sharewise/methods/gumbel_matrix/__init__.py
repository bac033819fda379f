"""Parameter allocation by Gumbel-matrix routing (Maziarz et al., arXiv 1910.04915): the methods
``gumbel_matrix``, ``no_sharing`` and ``shared_bottom`` (``method.py``), their routed networks
(``network.py``), task similarity of allocations (``similarity.py``) and the report section
(``report.py``)."""

from .method import (ALLOCATION, FixedRouterOptions, GumbelMatrix, GumbelMatrixOptions, NetworkOptions, NoSharing,
                     SharedBottom, SharedBottomOptions, allocation_record)
from .network import RoutedNetwork

__all__ = ["ALLOCATION", "FixedRouterOptions", "GumbelMatrix", "GumbelMatrixOptions", "NetworkOptions", "NoSharing",
           "RoutedNetwork", "SharedBottom", "SharedBottomOptions", "allocation_record"]
