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
    """A configuration key is unknown, has the wrong type or an impossible value."""


class DataError(SharewiseError):
    """A data file is missing, unreadable, or its content does not fit the request."""


class RunDirError(SharewiseError):
    """The run directory would be overwritten, or a needed run artefact is missing."""


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
