"""Atomic JSON writes are strict JSON: no bare NaN or Infinity tokens."""

import json
import math

import numpy as np
import torch

from sharewise.files import atomic_write_json


def test_atomic_write_json_writes_non_finite_floats_as_null(tmp_path):
    path = tmp_path / "selection.json"
    atomic_write_json(path, {
        "val_score": float("nan"), "best": [1.5, float("inf"), -math.inf], "np": np.float64("nan"),
        "np_array": np.array([0.5, np.nan]), "tensor": torch.tensor(float("inf")), "pair": (2, float("nan")),
        "nested": {"ok": 0.25, "name": "hard", "n": 3, "flag": True, "none": None},
    })
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    parse_constant = lambda token: (_ for _ in ()).throw(ValueError(token))  # noqa: E731 - strict JSON only
    assert json.loads(text, parse_constant=parse_constant) == {
        "val_score": None, "best": [1.5, None, None], "np": None, "np_array": [0.5, None], "tensor": None,
        "pair": [2, None], "nested": {"ok": 0.25, "name": "hard", "n": 3, "flag": True, "none": None},
    }
