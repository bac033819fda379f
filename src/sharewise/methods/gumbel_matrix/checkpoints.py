"""The table checkpoint × split × task of a routing run (spec §7.2, §8.1), from ``metrics.jsonl``.

Every inline evaluation (every ``method.eval_every_rounds`` rounds, and once at the end) is a
checkpoint: the engine logs validation (the selection reads only it), the training split with
``method.eval_train`` (logged as ``train_eval``) and, with ``method.all_splits`` (``--all-splits``), the test split as the
diagnostic ``test_diagnostic``. ``checkpoints.csv`` holds one row per (checkpoint, split, task) plus
the unweighted mean over tasks (``Average``), with ``selected`` = 1 on the rows of the checkpoint
the run selected (best validation Average, or the last one with ``method.checkpoint: last``).
The test split proper is evaluated once, on the selected model, by ``sharewise test``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

AVERAGE = "Average"
SPLITS = ("val", "train", "test_diagnostic")
LOGGED = {"val": "val", "train_eval": "train", "test_diagnostic": "test_diagnostic"}  # metrics.jsonl's split labels
COLUMNS = ("step", "round", "split", "task", "accuracy", "loss", "selected")


def checkpoint_rows(metrics: Path, tasks: list[str], *, selected_step: int | None,
                    phase: str = "train") -> list[dict[str, Any]]:
    """The rows of the table: the evaluation records of ``phase`` in ``metrics.jsonl``;
    ``selected_step`` None marks the last checkpoint as selected."""
    if not metrics.exists():
        return []
    records: dict[tuple[int, str], dict[str, Any]] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("phase") != phase or r.get("split") not in LOGGED or f"{tasks[0]}/accuracy" not in r:
            continue
        records[(int(r["step"]), LOGGED[r["split"]])] = r  # a step logged twice (a resume) keeps the later row
    if not records:
        return []
    steps = sorted({step for step, _ in records})
    chosen = selected_step if selected_step is not None else steps[-1]
    T = len(tasks)
    rows = []
    for (step, split), r in sorted(records.items(), key=lambda kv: (kv[0][0], SPLITS.index(kv[0][1]))):
        accs, losses = [], []
        for t in tasks:
            acc, loss = r.get(f"{t}/accuracy"), r.get(f"{t}/loss")
            accs.append(acc)
            losses.append(loss)
            rows.append({"step": step, "round": step / T, "split": split, "task": t, "accuracy": acc, "loss": loss,
                         "selected": int(step == chosen)})
        known = [a for a in accs if a is not None and math.isfinite(a)]
        known_loss = [v for v in losses if v is not None and math.isfinite(v)]
        rows.append({"step": step, "round": step / T, "split": split, "task": AVERAGE,
                     "accuracy": sum(known) / len(known) if known else None,
                     "loss": sum(known_loss) / len(known_loss) if known_loss else None, "selected": int(step == chosen)})
    return rows


def checkpoint_table(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else (f"{r[k]:g}" if k == "round" else r[k])) for k in COLUMNS})
    return buf.getvalue()


def read_table(text: str) -> list[dict[str, Any]]:
    out = []
    for r in csv.DictReader(io.StringIO(text)):
        out.append({"step": int(r["step"]), "round": float(r["round"]), "split": r["split"], "task": r["task"],
                    "accuracy": float(r["accuracy"]) if r["accuracy"] else None,
                    "loss": float(r["loss"]) if r["loss"] else None, "selected": int(r["selected"])})
    return out


def checkpoint_summary(text: str, num_tasks: int) -> dict[str, Any]:
    """``results.json``'s ``checkpoints``: how many were evaluated, the selected one and its
    Average per split, and the split curves' Average by round."""
    rows = read_table(text)
    average = [r for r in rows if r["task"] == AVERAGE]
    selected = [r for r in average if r["selected"]]
    curves: dict[str, list[list[float | None]]] = {}
    for r in average:
        curves.setdefault(r["split"], []).append([r["round"], r["accuracy"]])
    return {"evaluations": len({r["step"] for r in average}),
            "selected_step": selected[0]["step"] if selected else None,
            "selected_round": selected[0]["round"] if selected else None,
            "selected_average": {r["split"]: r["accuracy"] for r in selected},
            "curves": curves, "table": "checkpoints.csv"}
