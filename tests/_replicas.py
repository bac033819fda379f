"""Runs of the library on N gloo processes inside a test, each rank dumping what it holds in memory.

Only rank 0 writes the run directory, so a checkpoint cannot tell whether the ranks agree: every
rank here writes ``<job>/rank<r>.pt`` itself, with its rank as the process group reports it, its
pid, the state (parameters and buffers) of every model the engine trained as that rank holds it,
and the results it computed. Everything goes through ``sharewise.config`` and ``engine.runner``.

A process that imports the library (torch, scikit-learn, the dynamo import of deterministic
mode) costs seconds of CPU and a run of a tiny model a fraction of one, so the processes are
forked (they start with what this process has imported) and several runs (jobs) share them. Each
job has its own process group with a timeout, so a job that fails on one rank while the other
waits in a collective fails that job only.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

JOB_TIMEOUT_S = 60.0  # a collective that waits longer fails the job


def record_trained_models(ctx: Any) -> dict[str, dict[str, torch.Tensor]]:
    """``{directory: state}`` of every model the engine trains in ``ctx``, filled during ``train``.

    Each copy is taken when the engine's ``run_phases`` returns (the state the trainer leaves in
    the model): afterwards, selection and testing load rank 0's checkpoint into some models, which
    would hide a rank that diverged. Only this context's method instance is wrapped."""
    trained: dict[str, dict[str, torch.Tensor]] = {}
    train_candidates = ctx.method.train_candidates

    def recording(ctx_: Any, run_phases: Any, *args: Any, **kwargs: Any) -> Any:
        def run_and_record(model: torch.nn.Module, *a: Any, **k: Any) -> Any:
            out = run_phases(model, *a, **k)
            directory = str(k.get("directory", a[1] if len(a) > 1 else "."))
            trained[directory] = {name: v.detach().clone() for name, v in model.state_dict().items()}
            return out

        return train_candidates(ctx_, run_and_record, *args, **kwargs)

    ctx.method.train_candidates = recording
    return trained


def run_in_process(config: dict[str, Any], *, run_test: bool = True) -> dict[str, Any]:
    """``prepare``, ``train`` (and ``test``) in this process: the trained models' states and the results."""
    from sharewise.config import validate_config
    from sharewise.engine.runner import prepare, test, train

    ctx = prepare(validate_config(config))
    trained = record_trained_models(ctx)
    train(ctx)
    return {"models": trained, "results": test(ctx) if run_test else None}


def _replica(rank: int, world: int, jobs: list[tuple[str, dict[str, Any], bool]], result_dir: Path) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    dist = torch.distributed
    for name, config, run_test in jobs:
        # a rendezvous file per job (no port to pick in advance that something else may take)
        dist.init_process_group("gloo", init_method=(result_dir / f"{name}.rendezvous").as_uri(), rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=JOB_TIMEOUT_S))
        dump: dict[str, Any] = {"rank": dist.get_rank(), "world": dist.get_world_size(), "pid": os.getpid()}
        try:
            dump.update(run_in_process(config, run_test=run_test))
        except Exception:  # reported by the job's test, the other jobs still run
            dump["error"] = traceback.format_exc()
        finally:
            dist.destroy_process_group()
        (result_dir / name).mkdir(parents=True, exist_ok=True)
        torch.save(dump, result_dir / name / f"rank{rank}.pt")


def run_replicas(jobs: dict[str, dict[str, Any]], result_dir: Path, *, world: int = 2, run_test: bool = True,
                 timeout_s: float = 300.0, start_method: str = "fork") -> dict[str, list[dict[str, Any]]]:
    """Run every config of ``jobs`` (name → config) on the same ``world`` gloo processes, one job
    after the other; every job's dumps, in rank order (``error`` holds a failed rank's traceback).

    Processes that have not finished within ``timeout_s`` fail the test instead of blocking it
    (they are terminated)."""
    import torch.multiprocessing as mp

    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    plan = [(name, config, run_test) for name, config in jobs.items()]
    procs = mp.start_processes(_replica, args=(world, plan, result_dir), nprocs=world, join=False,
                               start_method=start_method)
    deadline = time.monotonic() + timeout_s
    try:
        while not procs.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise AssertionError(f"{world} replicas did not finish within {timeout_s:.0f} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    out = {}
    for name in jobs:
        # our own files (the results hold a TorchVersion, which weights_only refuses)
        dumps = [torch.load(result_dir / name / f"rank{r}.pt", weights_only=False) for r in range(world)]
        for r, dump in enumerate(dumps):  # each file was written by its own rank, in its own process
            assert (dump["rank"], dump["world"]) == (r, world)
        assert len({d["pid"] for d in dumps}) == world
        out[name] = dumps
    return out


def raise_errors(dumps: list[dict[str, Any]]) -> None:
    """Fail with the traceback of every process whose job raised."""
    errors = [f"rank {d.get('rank', 0)} of {d.get('world', 1)}:\n{d['error']}" for d in dumps if "error" in d]
    if errors:
        raise AssertionError("\n".join(errors))


def differing_entries(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the state entries that are not bit-identical (or present in only one state)."""
    return sorted(set(a) ^ set(b)) + [k for k in a if k in b and not torch.equal(a[k], b[k])]
