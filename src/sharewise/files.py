"""Atomic file writes: a reader sees the old file or the new one, never a part.

The lowest layer of the package (it imports nothing of sharewise): the config, the engine, the
report and the methods' artefacts all write through it."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (``mkstemp`` makes 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# read once: os.umask can only be read by setting it, which must not race with other threads
_FILE_MODE = _file_mode()


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``: a reader sees the
    old file or the new one, never a part. The file gets the usual permissions (umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON: NaN and ±Infinity (which ``json`` would write as bare tokens
    that other readers reject) are written as ``null``."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, allow_nan=False, default=_json_default) + "\n")


def _finite(o: Any) -> Any:
    """``o`` with every non-finite float (NumPy and tensor scalars included) replaced by None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int)):
        return o
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [_finite(v) for v in o]
    try:
        converted = _json_default(o)
    except (TypeError, ValueError, RuntimeError):
        return o  # json.dumps reports it
    return _finite(converted)


def _json_default(o: Any) -> Any:
    if getattr(o, "ndim", 0) and hasattr(o, "tolist"):  # arrays and tensors; .item() is for scalars
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``metrics.jsonl``); none when it is missing, and a line
    cut by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
