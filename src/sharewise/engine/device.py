"""Device choice from ``--gpus`` (CPU when empty), with a clear error for a missing GPU."""

from __future__ import annotations

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
