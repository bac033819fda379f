"""Atomic file writes: a reader sees the old file or the new one, never a part.

The lowest layer of the package (it imports only ``errors``, its neighbour): the config, the
engine, the report and the methods' artefacts all write through it."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import WriteError

# what the OS says, in the words of the one-line error
_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (``mkstemp`` makes 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# read once: os.umask can only be read by setting it, which must not race with other threads
_FILE_MODE = _file_mode()


def write_failure(err: OSError, path: Path | str) -> WriteError | None:
    """``err`` as a one-line :class:`WriteError` naming ``path`` when it is the OS refusing the write
    (no space, quota, read-only, permission); None for any other error."""
    reason = _WRITE_FAILURES.get(err.errno)
    return WriteError(f"cannot write {path}: {reason}") if reason else None


def _write(fh, data) -> int:
    """The one low-level write every atomic write goes through."""
    return fh.write(data)


class _Sink:
    """The temporary file as the writer sees it: it keeps the first ``OSError`` of a write, which a
    writer may swallow (``torch.save`` reports it as ``RuntimeError: [enforce fail ...]``)."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self.failure: OSError | None = None

    def write(self, data) -> int:
        try:
            return _write(self._fh, data)
        except OSError as err:
            self.failure = self.failure or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``: a reader sees the
    old file or the new one, never a part. The file gets the usual permissions (umask).

    When the OS refuses the write (no space, read-only, permission) this is a :class:`WriteError`
    naming ``path``; the temporary file is removed and the earlier ``path`` is left as it was."""
    path = Path(path)
    tmp = None
    sink = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            sink = _Sink(fh)
            write(sink)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = err if isinstance(err, OSError) else sink.failure if sink is not None else None
        mapped = write_failure(cause, path) if isinstance(cause, OSError) else None
        if mapped is not None and isinstance(err, Exception):
            raise mapped from err
        raise


# the temporary files atomic_write leaves when it is killed: ``.<name>.<8 random characters>.tmp``
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_write` left in ``directory`` and below
    (only names of its exact form); return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.rglob(".*.tmp")):
        if p.is_file() and not p.is_symlink() and _TEMPORARY.fullmatch(p.name):
            p.unlink()
            removed.append(p)
    return removed


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
