"""User-facing errors: one clear line, exit code 2, no traceback unless ``--debug``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SharewiseError(Exception):
    """An error caused by the user's input (file, column, config key, flag).

    The message names the offending file, key or column; the CLI prints it on one line and
    exits with :attr:`exit_code`.
    """

    exit_code = 2


class ConfigError(SharewiseError):
    """A configuration key is unknown, has the wrong type or an impossible value.

    ``key`` (``"train.epochs"``) and ``problem`` (``"must be >= 0 (got -3)"``) are set when one
    key's value is at fault, so that the CLI can name the flag that set it.
    """

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.key, self.problem = key, problem


class UsageError(SharewiseError):
    """A command-line flag is unknown, lacks its value or has a value of the wrong form."""


class DataError(SharewiseError):
    """A data file is missing, unreadable, or its content does not fit the request."""


class RunDirError(SharewiseError):
    """The run directory would be overwritten, or a needed run artefact is missing."""


class WriteError(RunDirError):
    """An output cannot be written: no space left, a read-only file system, no permission.

    The message names the file or directory and what happened; the earlier file is kept.
    """


class TrainingError(SharewiseError):
    """Training cannot continue (non-finite loss or gradient)."""

    exit_code = 3


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` for the close matches of ``name``, or ``""``."""
    cands = [str(c) for c in candidates]
    hits = difflib.get_close_matches(name, cands, n=n, cutoff=0.6)
    if not hits:
        lowered = {c.lower(): c for c in cands}
        hits = [lowered[h] for h in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)]
    return f" (did you mean: {', '.join(hits)}?)" if hits else ""


def first_line(err: BaseException, default: str = "") -> str:
    """The first line of an exception's message (library errors can span many), or ``default``."""
    text = str(err).strip()
    return text.splitlines()[0] if text else default
