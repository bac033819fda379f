"""Checkpoints: written atomically, loaded without executing code (``weights_only=True``)."""

from __future__ import annotations

import errno
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirError
from ..files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write with ``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``; a missing or unreadable file is a :class:`RunDirError` naming it
    with a short reason (never torch's advice to load with ``weights_only=False``)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"checkpoint not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise _unreadable(path, "empty file")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = "Unsupported global" in str(err)
        raise _unreadable(path, "not a weights-only checkpoint (refused: it would execute code)" if refused
                          else "truncated or corrupt") from None
    except (EOFError, RuntimeError, ValueError, OSError) as err:
        denied = isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM)
        raise _unreadable(path, "permission denied" if denied else "truncated or corrupt") from None


def _unreadable(path: Path, reason: str) -> RunDirError:
    return RunDirError(f"{path}: unreadable checkpoint ({reason}); remove it, or start again with --overwrite")
