"""The recorded figures still come out of the code: the built-in demo's `independent` and `hard`
runs (about 15 s together) against their run records (benchmarks/results/runs/demo/), exactly.

`make reproduce` reruns far more (benchmarks/reproduce.py); this is the part cheap enough for every
test run, so a change that moves the numerics fails here, in the same commit, until the records and
docs/benchmarks.md are re-measured (benchmarks/demo_runs.py --replace; benchmarks/tables.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from sharewise.api import fit
from sharewise.demo import demo_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import record  # noqa: E402


def _stored(method: str) -> dict:
    stored = record.load_run("demo", method)
    where = stored["machine"]
    if stored["torch"] != torch.__version__ or where.get("cpu_capability", "AVX512") != torch.backends.cpu.get_cpu_capability():
        pytest.skip(f"record measured with torch {stored['torch']} on {where.get('cpu_capability')}: "
                    "its figures are exact only there")
    return stored


def test_the_demo_records_reproduce_exactly(tmp_path):
    stored = {m: _stored(m) for m in ("independent", "hard")}
    cfg = demo_config("independent", tmp_path, seed=0, progress=False)
    independent = fit(cfg).results
    reference = {t: {"val": r["val"], "test": r["test"]} for t, r in independent["tasks"].items()}
    cfg = demo_config("hard", tmp_path, seed=0, progress=False)
    hard = fit(cfg, reference=reference).results
    for method, results in (("independent", independent), ("hard", hard)):
        now = record.figures_from_results(json.loads(json.dumps(results)))
        assert now == stored[method]["figures"], (
            f"demo {method}: the figures moved from its record; re-measure (benchmarks/demo_runs.py --replace, "
            "benchmarks/tables.py) and say why in the CHANGELOG")
