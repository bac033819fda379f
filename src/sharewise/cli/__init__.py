"""The command-line interface (``sharewise``), one function per command in ``commands``."""

from .main import main

__all__ = ["main"]
