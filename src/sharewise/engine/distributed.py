"""Process-group helpers: rank-0-only writing, gathering predictions, broadcasting decisions.

With one process every helper is a no-op, so single-process code and DDP code are the same code.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
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


def broadcast_tensor(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """The ``src`` rank's tensor, in place in ``t`` on every rank (same shape and dtype everywhere)."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


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
    if not isinstance(sys.stderr, _RankStderr):
        sys.stderr = _RankStderr(sys.stderr, rank())


_LOST_PEER = re.compile(r"gloo.*(Connection reset by peer|Connection closed by peer|Broken pipe)", re.DOTALL)


class _RankStderr:
    """``sys.stderr`` of a rank: the CLI's one-line report of gloo's transport error when another
    rank went away (a long message naming a socket, no rank) becomes ``rank R: lost contact with
    another rank``; the launcher names the rank that died. Everything else passes unchanged."""

    def __init__(self, stream: Any, rank: int) -> None:
        self._stream, self._rank = stream, rank

    def write(self, text: str) -> int:
        if text.startswith("sharewise: internal error:") and _LOST_PEER.search(text):
            end = "\n" if text.endswith("\n") else ""
            text = f"sharewise: rank {self._rank}: lost contact with another rank{end}"
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_process(nprocs: int) -> int:
    """The cores this process may use, shared out among ``nprocs`` processes (at least one each).
    Each process's torch would otherwise start one thread per core, and N processes on N cores
    then run N² threads that wait on each other (torchrun sets one thread for the same reason);
    ``OMP_NUM_THREADS`` in the environment or ``train.threads`` choose otherwise."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, nprocs))


def launch(argv: Sequence[str], nprocs: int, gpus: Sequence[int] = ()) -> int:
    """Start ``nprocs`` copies of ``python -m sharewise argv`` on this machine as one process group
    (what ``torchrun --standalone --nproc-per-node N`` does) and watch them: when a rank exits
    non-zero or is killed, the others are stopped (they would wait on it for ever, or fail with a
    transport error that names no rank), one line names the rank, and its exit code is returned
    (``128 + signal`` for a signal, as a shell reports it); 0 when every rank succeeds."""
    port = _free_port()
    procs = []
    threads = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(threads_per_process(nprocs))}
    for r in range(nprocs):
        env = {**os.environ, **threads, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nprocs),
               "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "sharewise", *argv], env=env))
    try:
        return _watch(procs)
    except KeyboardInterrupt:  # Ctrl-C reached every rank too: let each save and stop on its own
        codes = [p.wait() for p in procs]
        return next((_shell_code(c) for c in codes if c != 0), 0)


def _watch(procs: Sequence[subprocess.Popen], *, poll_s: float = 0.05, settle_s: float = 2.0,
           grace_s: float = 5.0) -> int:
    """Wait for every rank; at the first one that fails, stop the rest and report it. A rank that
    exits with a code gets the others ``settle_s`` seconds to end by themselves (each has then
    printed its own error and no line is added); a stopped rank gets ``grace_s`` after SIGTERM."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            break
        if all(c == 0 for c in codes):
            return 0
        time.sleep(poll_s)
    dead = min(failed, key=lambda r: (codes[r] >= 0, r))  # a killed rank caused the others' failures
    code = codes[dead]
    if code >= 0:  # a rank that reported its own error: the others usually meet the same one
        deadline = time.monotonic() + settle_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(poll_s)
        if all(p.poll() is not None and p.returncode >= 0 for p in procs):
            return _shell_code(code)  # every rank ended by itself and has said why
    running = [p for p in procs if p.poll() is None]
    _stop(running, grace_s)
    if code < 0:
        try:
            how = f"died (signal {signal.Signals(-code).name})"
        except ValueError:
            how = f"died (signal {-code})"
    else:
        how = f"exited with code {code}"
    others = "; the other ranks were stopped" if running else ""
    print(f"sharewise: rank {dead} {how}{others}", file=sys.stderr, flush=True)
    return _shell_code(code)


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever is still running after ``grace_s`` seconds."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _shell_code(code: int) -> int:
    return 128 - code if code < 0 else code
