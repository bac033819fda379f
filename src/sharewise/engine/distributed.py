"""Process-group helpers: rank-0-only writing, gathering predictions, broadcasting decisions.

With one process every helper is a no-op, so single-process code and DDP code are the same code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list with one entry per rank)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """The ``src`` rank's ``obj`` on every rank (decide once, then share)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size()
    return t


def launched_world_size() -> int:
    """WORLD_SIZE set by ``torchrun`` or by :func:`launch` (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def init_from_env(use_cuda: bool) -> None:
    """Join the process group described by the environment (``env://``) once per process."""
    if launched_world_size() <= 1 or is_distributed():
        return
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://")
    if not is_main():
        warnings.simplefilter("ignore")  # one copy of every warning (rank 0's)


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: Sequence[str], nprocs: int, gpus: Sequence[int] = ()) -> int:
    """Start ``nprocs`` copies of ``python -m sharewise argv`` on this machine as one process group
    (what ``torchrun --standalone --nproc-per-node N`` does); returns the first non-zero exit code."""
    port = _free_port()
    procs = []
    for r in range(nprocs):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nprocs),
               "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "sharewise", *argv], env=env))
    codes = []
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.wait()
        codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0)
