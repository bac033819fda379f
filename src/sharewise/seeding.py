"""Independent random streams derived from one run seed (evaluation protocol, point 1).

Each purpose (split, init, data order, augmentation, Gumbel noise, architecture sampling) gets
its own seed, so changing how one stream is used never shifts another, and a resumed run can
rebuild any stream from the run seed and a counter (epoch, step).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

STREAMS = ("split", "init", "data_order", "augment", "gumbel", "arch_sample", "dropout", "round_order", "task_stream")


def stream_seed(seed: int, stream: str, *counters: int | tuple[int, ...]) -> int:
    """A 63-bit seed for ``stream`` (and optional counters such as epoch or step; a tuple counter
    stands for its parts, see :func:`order_key`)."""
    parts = [str(int(seed)), stream]
    for c in counters:
        parts.extend(str(int(v)) for v in c) if isinstance(c, tuple) else parts.append(str(int(c)))
    key = ":".join(parts)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def order_key(parts: tuple[int, ...], radices: tuple[int, ...]) -> int | tuple[int, ...]:
    """One counter for several (e.g. cycle, stretch, repetition), distinct for distinct parts.

    While every part after the first is below its radix, the mixed-radix number
    ``((p0 · r1 + p1) · r2 + p2) …`` (the historical key, so recorded runs keep their data
    order); otherwise the parts themselves, a tuple, which :func:`stream_seed` hashes as
    ``p0:p1:p2``, a string no single integer gives. A part that is itself a key in tuple form is
    spliced in (the result is then a tuple)."""
    flat: list[int] = []
    nested = False
    for p in parts:
        if isinstance(p, tuple):
            flat.extend(int(v) for v in p)
            nested = True
        else:
            flat.append(int(p))
    if nested:
        return tuple(flat)
    if len(radices) != len(flat) - 1:
        raise ValueError(f"order_key: {len(flat)} parts need {len(flat) - 1} radices, got {len(radices)}")
    if any(p < 0 for p in flat) or any(p >= r for p, r in zip(flat[1:], radices)):
        return tuple(flat)
    key = flat[0]
    for p, r in zip(flat[1:], radices):
        key = key * r + p
    return key


def round_order(seed: int, round_: int, num_tasks: int) -> list[int]:
    """The order in which round ``round_`` of a round-robin loop visits the tasks: a fresh seeded
    permutation of ``0..num_tasks−1`` every round (parameter allocation §5)."""
    return [int(i) for i in np_rng(seed, "round_order", round_).permutation(num_tasks)]


def generator(seed: int, stream: str, *counters: int | tuple[int, ...]) -> torch.Generator:
    """A CPU ``torch.Generator`` for the stream."""
    g = torch.Generator()
    g.manual_seed(stream_seed(seed, stream, *counters))
    return g


def np_rng(seed: int, stream: str, *counters: int | tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng(stream_seed(seed, stream, *counters))


def seed_global(seed: int, stream: str = "dropout") -> None:
    """Seed Python's, NumPy's and torch's global generators (used by dropout and third-party code)."""
    s = stream_seed(seed, stream)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def global_rng_state() -> dict:
    """Every global generator's state, for exact resume."""
    state = {
        "python": random.getstate(),
        "numpy": _np_state_to_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(_np_state_from_tensors(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _np_state_to_tensors(st: tuple) -> dict:
    """NumPy's legacy state with its array as a tensor, so ``weights_only`` loading accepts it."""
    name, keys, pos, has_gauss, cached = st
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_state_from_tensors(d: dict) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


class RandomStreams:
    """The run's independent random streams from one seed (``BuildContext.streams``)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def seed_of(self, stream: str, *counters: int | tuple[int, ...]) -> int:
        return stream_seed(self.seed, stream, *counters)

    def generator(self, stream: str, *counters: int | tuple[int, ...]) -> torch.Generator:
        return generator(self.seed, stream, *counters)

    def np_rng(self, stream: str, *counters: int | tuple[int, ...]) -> np.random.Generator:
        return np_rng(self.seed, stream, *counters)

    def __repr__(self) -> str:
        return f"RandomStreams(seed={self.seed})"
