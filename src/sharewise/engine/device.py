"""Device choice from ``--gpus`` (CPU when empty), with a clear error for a missing GPU, the
host allocator setting that keeps freed memory for the next step, and a host memory peak for
benchmarks."""

from __future__ import annotations

import ctypes
import gc
import platform
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError


def resolve_device(gpus: list[int], local_rank: int = 0) -> torch.device:
    if not gpus:
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for g in gpus:
        if g < 0 or g >= available:
            raise ConfigError(
                f"--gpus: GPU id {g} does not exist (this machine has {available} CUDA device(s)"
                f"{', ids 0-' + str(available - 1) if available else ''}); omit --gpus to run on the CPU"
            )
    return torch.device(f"cuda:{gpus[local_rank % len(gpus)]}")


def use_deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing TorchInductor.

    The public function also sets TorchInductor's ``deterministic`` option (for ``torch.compile``,
    which training does not use), and importing TorchInductor (with dynamo and sympy) costs 2-3 s
    of CPU in every process, more than the rest of the start-up of a small run. When TorchInductor
    is already imported the public function is called, so both flags agree."""
    import sys

    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks above it are mapped and unmapped one by one
TRIM_THRESHOLD = 1 << 30  # free memory above the heap's top kept for reuse, at most


def keep_freed_host_memory() -> bool:
    """Let glibc's ``malloc`` keep freed host memory for the next training step.

    PyTorch allocates CPU tensors with ``malloc``. By default glibc maps every block above
    128 KiB (or the size of the last such block freed) fresh from the OS and gives the top of
    its heap back once 2× that size is free. A step frees all its activations at the end of
    the backward pass, so the next step faults every page of them in again, zero-filled: up to
    5,000 page faults a step for a small ResNet's stacked search in ``benchmarks/adashare_speed.py``
    and 360,000 for a 32-px one, where T tasks' activations are stacked into one batch. Raising both thresholds (blocks up to 32 MiB from the heap, up to
    1 GiB of free heap kept) removes them. Process-wide; returns False where the C library is
    not glibc (nothing changed). ``train.keep_host_memory: false`` skips it."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _host_in_use() -> Callable[[], int] | None:
    """A function returning the bytes glibc's ``malloc`` has handed out and not taken back (heap
    blocks in use plus mapped blocks, all arenas), or None where ``mallinfo2`` is missing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # glibc < 2.33
        return None
    fn.restype = _Mallinfo2

    def in_use() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return in_use


def peak_host_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak host memory one call of ``fn`` allocates beyond what was in use before it: ``malloc``'s
    bytes in use, read after every PyTorch operation (forward and, on the CPU, backward run on
    the calling thread) and at the end. CPU tensors' memory, for comparing execution variants
    where torch keeps no allocator statistics (on a GPU use ``torch.cuda.max_memory_allocated``).
    A kernel's scratch memory freed before it returns is not seen. None without glibc ≥ 2.33."""
    in_use = _host_in_use()
    if in_use is None:
        return None
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Watch(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    watch = _Watch()
    with watch:
        torch.zeros(1)  # the mode's first operation loads what it needs (tens of MB, once)
        gc.collect()
        base = watch.peak = in_use()
        fn()
        return max(watch.peak, in_use()) - base
