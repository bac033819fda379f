"""Stored run records: one measured run as `benchmarks/results/runs/<section>/<name>.json`.

A record says what was run (`command`, the exact shell line), on what code (`commit`, `dirty`),
when (`measured`), how (`threads`, `machine`, `torch`) and what came out (`figures`: flat
`"task.metric": value`, plus `"parameters"` and `"flops"` where relevant). Wall times are not
figures (they never reproduce exactly); they go under `timings`.

A repetition of a run that is already stored appends a new file, `<name>.2.json`, `<name>.3.json`,
..., so ranges over repetitions are recomputed from files (`load_runs`); `replace=True` instead
overwrites `<name>.json` and drops its repetitions (a deliberate re-measurement after a change).
`docs/benchmarks.md`'s generated tables read these files (benchmarks/tables.py) and
`benchmarks/reproduce.py` reruns their commands and compares.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

SCHEMA = 1
REPO = Path(__file__).resolve().parent.parent
RUNS_DIR = REPO / "benchmarks" / "results" / "runs"

# The paths whose changes can change a figure; `dirty` is true when any differs from `commit`.
_CODE_PATHS = ("src", "configs", "pyproject.toml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REPEAT = re.compile(r"^(?P<name>.+)\.(?P<k>[0-9]+)$")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def code_version() -> dict[str, Any]:
    """`{"commit": HEAD, "dirty": bool}`; dirty means uncommitted changes under src/, configs/ or pyproject.toml."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", *_CODE_PATHS))
    return {"commit": commit, "dirty": dirty}


def machine() -> dict[str, Any]:
    """Where a run was measured; `cpu_capability` is the vector instruction set torch's CPU kernels
    use (AVX2, AVX512, ...), which decides their rounding."""
    import torch

    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def figures_from_results(results: Mapping[str, Any], split: str = "test") -> dict[str, float]:
    """Flatten a run's results.json: `"<task>.<metric>"` for every metric of `split` (not `n`, not `loss`),
    plus `parameters` (total) and `flops` (all tasks, one example)."""
    figures: dict[str, float] = {}
    for task, entry in results["tasks"].items():
        for metric, value in entry[split].items():
            if metric in ("n", "loss") or value is None:
                continue
            figures[f"{task}.{metric}"] = value
    if results.get("parameters"):
        figures["parameters"] = results["parameters"]["total"]
    if results.get("flops"):
        figures["flops"] = results["flops"]["all_tasks"]
    return figures


def _check_name(kind: str, value: str) -> None:
    if not _NAME.match(value) or _REPEAT.match(value):
        raise ValueError(f"record {kind} {value!r}: use letters, digits, '_', '-' (no trailing '.<number>')")


def record_path(section: str, name: str, root: Path | str = RUNS_DIR) -> Path:
    return Path(root) / section / f"{name}.json"


def store_run(
    section: str,
    name: str,
    *,
    command: str,
    figures: Mapping[str, float],
    threads: int,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    replace: bool = False,
    root: Path | str = RUNS_DIR,
) -> Path:
    """Write one measured run; returns the file written. An existing record gets a repetition file
    `<name>.<k>.json` unless `replace`, which overwrites `<name>.json` and removes its repetitions."""
    _check_name("section", section)
    _check_name("name", name)
    if not figures:
        raise ValueError(f"record {section}/{name}: no figures")
    import torch

    record = {
        "schema": SCHEMA,
        "section": section,
        "name": name,
        "command": command,
        **code_version(),
        "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": threads,
        "machine": machine(),
        "torch": torch.__version__,
        "figures": dict(figures),
    }
    if timings:
        record["timings"] = dict(timings)
    if extra:
        record.update(extra)
    path = record_path(section, name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        for old in _repetitions(path.parent, name):
            old.unlink()
    elif path.exists():
        k = 2 + len(_repetitions(path.parent, name))
        path = path.with_name(f"{name}.{k}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"recorded {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def _repetitions(folder: Path, name: str) -> list[Path]:
    found = []
    for p in folder.glob(f"{name}.*.json"):
        m = _REPEAT.match(p.stem)
        if m and m["name"] == name:
            found.append((int(m["k"]), p))
    return [p for _, p in sorted(found)]


def load_runs(section: str, name: str, root: Path | str = RUNS_DIR) -> list[dict[str, Any]]:
    """Every stored repetition of one run, first to last; a missing record is a FileNotFoundError."""
    path = record_path(section, name, root)
    if not path.exists():
        raise FileNotFoundError(f"no run record {path} (measure it first; see the command in docs/benchmarks.md)")
    paths = [path, *_repetitions(path.parent, name)]
    runs = [json.loads(p.read_text()) for p in paths]
    for p, run in zip(paths, runs):
        if run.get("schema") != SCHEMA:
            raise ValueError(f"{p}: schema {run.get('schema')!r}, expected {SCHEMA}")
    return runs


def load_run(section: str, name: str, root: Path | str = RUNS_DIR) -> dict[str, Any]:
    """The latest stored repetition of one run."""
    return load_runs(section, name, root)[-1]
