"""Progress of a training phase: a live bar on a terminal, one summary line kept per phase.

The bar (redrawn in place, on standard error, only when it is a terminal) fits the terminal's
width as it is at each redraw and shows the phase, the steps done, elapsed and remaining time,
the latest validation metrics (each task's primary metric) and the recent training loss::

    search  45% ███████▌         270/600 0:12<0:15 | val digit acc 0.944, value MAE 0.31 | loss 0.512

When the phase ends the bar is replaced by one line that stays (also written when standard error
is a file, so a log keeps one line per phase)::

    search: 600 steps in 0:27 | selected (step 540, cycle 45): val digit acc 0.951, value MAE 0.29 | loss 0.433

The rendering is pure functions of the numbers and the width (:func:`render_bar`,
:func:`render_summary`); :class:`PhaseProgress` holds the state and writes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

SHORT_METRIC = {"accuracy": "acc", "balanced_accuracy": "bal.acc", "macro_f1": "F1", "auroc": "AUROC",
                "mae": "MAE", "rmse": "RMSE", "r2": "R²", "pearson_r": "r", "gap_at_20": "GAP@20",
                "map_at_10": "mAP@10", "map_at_10_over_positives": "mAP@10+", "hit_at_1": "Hit@1", "loss": "loss"}
PARTIAL = " ▏▎▍▌▋▊▉"  # eighths of a cell


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.4g}"


def validation_text(val: Mapping[str, Mapping[str, float]], primary: Mapping[str, str]) -> str:
    """``val digit acc 0.944, value MAE 0.31``: each task's primary validation metric."""
    parts = [f"{task} {SHORT_METRIC.get(metric, metric)} {format_value(val[task].get(metric))}"
             for task, metric in primary.items() if task in val]
    return "val " + ", ".join(parts) if parts else ""


def fit_width(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the cut marked with ``…``."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:width - 1] + "…"


def _bar(fraction: float, cells: int, unicode: bool) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    if not unicode:
        full = int(fraction * cells)
        return "#" * full + " " * (cells - full)
    eighths = int(fraction * cells * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (PARTIAL[part] if full < cells else "")
    return text + " " * (cells - len(text))


def render_bar(label: str, step: int, total: int | None, elapsed: float, fields: Sequence[str], width: int, *,
               start_step: int = 0, unicode: bool = True) -> str:
    """The live line, at most ``width`` characters: label, percentage, a bar as wide as what is
    left allows (10 to 40 cells; none below 10), ``step/total``, ``elapsed<remaining``, then the
    ``fields`` (validation, loss) in order, the last one shown cut with ``…`` when the line is full.
    The remaining time is extrapolated from the steps taken since ``start_step`` (a resumed phase)."""
    known = bool(total) and total > 0
    done = step - start_step
    remaining = (elapsed / done * (total - step)) if known and done > 0 else math.nan
    pct = f"{100 * step / total:3.0f}%" if known else ""
    counts = f"{step}/{total}" if known else f"{step}"
    times = f"{format_duration(elapsed)}<{format_duration(remaining)}" if known else format_duration(elapsed)
    head = " ".join(p for p in (label, pct) if p)
    tail = f"{counts} {times}"
    extra = "".join(f" | {f}" for f in fields if f)
    fixed = len(head) + 1 + len(tail)
    cells = 0
    if known:
        room = width - fixed - 1 - len(extra)  # one more space: the bar sits between two
        cells = max(10, min(40, room)) if width - fixed - 1 >= 10 else 0
    line = f"{head} {_bar(step / total, cells, unicode)} {tail}" if cells else f"{head} {tail}"
    return fit_width(line + extra, width)


def render_summary(label: str, steps: int, elapsed: float, fields: Sequence[str], width: int | None = None) -> str:
    """The line a finished phase leaves: ``<label>: <steps> steps in <time> | <fields>`` (cut to
    ``width`` when given)."""
    text = f"{label}: {steps} steps in {format_duration(elapsed)}" + "".join(f" | {f}" for f in fields if f)
    return text if width is None else fit_width(text, width)


def terminal_width(stream: TextIO, default: int = 80) -> int:
    """The width of the terminal ``stream`` writes to (``COLUMNS`` when set, as shells export it;
    ``default`` when neither says)."""
    try:
        return max(20, int(os.environ["COLUMNS"]))
    except (KeyError, ValueError):
        pass
    try:
        return max(20, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        return default


class PhaseProgress:
    """A phase's bar and summary. ``live`` (default: whether ``stream`` is a terminal) draws the
    bar; the summary is written either way."""

    def __init__(self, label: str, total: int | None, *, initial: int = 0, primary: Mapping[str, str] | None = None,
                 stream: TextIO | None = None, live: bool | None = None, min_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.label, self.total, self.start_step, self.step = label, total, initial, initial
        self.primary = dict(primary or {})
        self.clock, self.min_interval = clock, min_interval
        self.started = clock()
        self._drawn = -math.inf
        self._losses: deque[float] = deque(maxlen=50)
        self.validation = ""
        self.selected = ""
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.unicode = encoding.startswith("utf")

    def fields(self) -> list[str]:
        loss = f"loss {format_value(sum(self._losses) / len(self._losses))}" if self._losses else ""
        return [self.validation, loss]

    def update(self, steps: int = 1, loss: float | None = None) -> None:
        self.step += steps
        if loss is not None and math.isfinite(loss):
            self._losses.append(loss)
        self._draw()

    def set_validation(self, val: Mapping[str, Mapping[str, Any]], *, selected: bool = False,
                       cycle: int | None = None) -> None:
        """The latest evaluation's metrics, on the bar. ``selected``: the selection took this
        evaluation's model, and the summary line shows its step, cycle and metrics (else the
        summary shows the last evaluation's)."""
        self.validation = validation_text(val, self.primary)
        if selected:
            where = f"step {self.step}" + (f", cycle {cycle}" if cycle is not None else "")
            self.selected = f"selected ({where}): {self.validation}"
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = self.clock()
        if not force and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        width = terminal_width(self.stream) - 1  # the last column would wrap on some terminals
        line = render_bar(self.label, self.step, self.total, now - self.started, self.fields(), width,
                          start_step=self.start_step, unicode=self.unicode)
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def close(self, note: str = "") -> str:
        """Replace the bar with the phase's summary line (kept): the selected evaluation (or the
        last one, marked so), ``note`` (e.g. ``stopped early``) and the recent loss; returns it."""
        loss = self.fields()[1]
        evaluation = self.selected or (f"last {self.validation}" if self.validation else "")
        width = terminal_width(self.stream) - 1 if self.live else None
        text = render_summary(self.label, self.step, self.clock() - self.started, [evaluation, note, loss], width)
        self.stream.write(("\r\x1b[K" if self.live else "") + text + "\n")
        self.stream.flush()
        return text

    def abandon(self) -> None:
        """Clear a live bar (the phase stopped on an error or Ctrl-C; its own message follows)."""
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
