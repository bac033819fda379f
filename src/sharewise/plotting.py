"""Matplotlib for report pictures: pyplot with the file-only Agg backend, imported only when a
picture is drawn (``import sharewise`` never loads matplotlib)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed; pictures go to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
