"""Number formats of docs/benchmarks.md's generated tables (shared by tables.py and renderers.py)."""

from __future__ import annotations

import statistics


def grouped(n: float) -> str:
    """81162 -> '81 162' (the docs' thousands separator)."""
    return f"{int(round(n)):,}".replace(",", " ")


def mean_sd(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"
