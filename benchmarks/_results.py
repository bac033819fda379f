"""What every benchmark script does last: write its result as JSON (creating the folder) and say where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def record_benchmark(section: str, name: str, result: Any, figures: dict[str, float], *, threads: int,
                     script: str, argv: list[str] | None) -> Path:
    """Store one run of a benchmark script as a run record (benchmarks/record.py): `figures` are the
    values its tables quote (ratios, medians), `result` the whole JSON (under `result`). Every run
    adds a repetition, so the ranges "over runs" in docs/benchmarks.md are recomputed from files."""
    import shlex
    import sys

    from record import store_run

    command = f".venv/bin/python benchmarks/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    return store_run(section, name, command=command.strip(), figures=figures, threads=threads,
                     extra={"result": result})
