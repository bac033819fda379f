"""``metrics.jsonl`` (every logged scalar) and TensorBoard events, written by rank 0 only.

A record of ``metrics.jsonl`` is ``{"time", "phase", "step", "split", "cycle", <name>: value, ...}``
with names such as ``loss/<task>`` (training), ``<task>/<metric>`` (evaluation), ``lr/...``,
``aux/...``. In TensorBoard each name is one scalar series per phase and split, tag
``<phase>/<split>/<name>`` (e.g. ``train/val/species/accuracy``), plotted against the phase's
step: the cycle is a field of the jsonl record, never part of a tag, so a series holds every
evaluation of the phase.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .distributed import is_main


def tensorboard_tag(phase: str, split: str | None, name: str) -> str:
    """The TensorBoard tag of a logged scalar: ``<phase>/<split>/<name>`` (``<phase>/<name>`` without
    a split), the same tag at every step."""
    return "/".join([phase, *([split] if split else []), name])


class MetricsLogger:
    def __init__(self, run_dir: Path | None, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self._fh = None
        self._tb = None
        self._tb_wanted = tensorboard
        if self.run_dir is not None and is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._fh = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def _writer(self):
        if self._tb is None and self._tb_wanted and self.run_dir is not None and is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard missing: jsonl only
                self._tb_wanted = False
                return None
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb

    def log(self, phase: str, step: int, values: dict[str, Any], **context: Any) -> None:
        if self._fh is None:
            return
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in values.items()}
        record = {"time": round(time.time(), 3), "phase": phase, "step": int(step), **context, **clean}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        tb = self._writer()
        if tb is not None:
            split = context.get("split")
            for k, v in clean.items():
                if v is not None:
                    tb.add_scalar(tensorboard_tag(phase, split, k), v, step)

    def drop_after(self, phase: str, step: int, since: float) -> int:
        """Remove the rows a resumed phase will write again: rows of ``phase`` past ``step`` (the
        checkpoint's), and rows at ``step`` itself logged after ``since`` (the checkpoint's time).
        ``metrics.jsonl`` is rewritten atomically with every other row as it was (a line cut by a
        kill at its end is dropped); returns the number of rows removed."""
        if self._fh is None:
            return 0
        since = round(since, 3)  # as the rows' times are: a row logged before the checkpoint is never later
        path = self.run_dir / "metrics.jsonl"
        self._fh.close()
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept, dropped = [], 0
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    kept.append(line)
                continue
            if isinstance(record, dict) and record.get("phase") == phase and "event" not in record and (
                    record.get("step", 0) > step or (record.get("step") == step and record.get("time", 0) > since)):
                dropped += 1
                continue
            kept.append(line)
        if dropped or len(kept) != len(lines):
            atomic_write_text(path, "".join(kept))
        self._fh = path.open("a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
