"""Checkpoints: written atomically, loaded without executing code (``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirError
from ..files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write with ``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RunDirError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0][:200]})") from None
