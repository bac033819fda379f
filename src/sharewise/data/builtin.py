"""Built-in datasets that ship inside a dependency (nothing is downloaded).

``digits``: scikit-learn's bundled 8×8 handwritten digits (1 797 images) with derived tasks:
``digit`` (10 classes), ``parity`` (even/odd), ``large`` (digit >= 5) and ``value`` (the digit
as a number, numerical). As a table (64 pixel columns) it runs through the table pipeline, so
splits, encoders and ``predict`` behave exactly as for a user's CSV.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DIGITS_TASKS = {
    "digit": "categorical",
    "parity": "categorical",
    "large": "categorical",
    "value": "numerical",
}


def digits_frame() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.data.astype(np.float32)
    frame = pd.DataFrame(pixels, columns=[f"px{i}" for i in range(pixels.shape[1])])
    digit = bunch.target.astype(int)
    frame.insert(0, "id", np.arange(len(frame)))
    frame["digit"] = digit
    frame["parity"] = np.where(digit % 2 == 0, "even", "odd")
    frame["large"] = np.where(digit >= 5, "yes", "no")
    frame["value"] = digit.astype(float)
    return frame


BUILTIN = {
    "digits": {
        "frame": digits_frame,
        "tasks": DIGITS_TASKS,
        "id_col": "id",
        "description": "scikit-learn's 8x8 digits (1797 rows, 64 pixels): digit, parity, large (cat), value (num)",
        "image_shape": (1, 8, 8),
    },
}
