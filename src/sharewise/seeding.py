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

STREAMS = ("split", "init", "data_order", "augment", "gumbel", "arch_sample", "dropout")


def stream_seed(seed: int, stream: str, *counters: int) -> int:
    """A 63-bit seed for ``stream`` (and optional counters such as epoch or step)."""
    key = ":".join([str(int(seed)), stream, *(str(int(c)) for c in counters)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def generator(seed: int, stream: str, *counters: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for the stream."""
    g = torch.Generator()
    g.manual_seed(stream_seed(seed, stream, *counters))
    return g


def np_rng(seed: int, stream: str, *counters: int) -> np.random.Generator:
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
