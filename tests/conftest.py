import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.exists():
    SHARED_DATA = Path(os.environ.get("SHAREWISE_SHARED_DATA", "/work/shared/data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("shared datasets not available")
    return SHARED_DATA


@pytest.fixture
def people_csv(tmp_path: Path) -> Path:
    """A small mixed table: categorical and numerical targets, a dotted name, missing values."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 240
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    group = rng.choice(["a", "b", "c"], size=n)
    sex = np.where(x1 + 0.3 * rng.normal(size=n) > 0, "F", "M")
    age = 40 + 10 * x2 + rng.normal(size=n)
    race = rng.choice(["w", "b", "o"], size=n)
    frame = pd.DataFrame({"subject": [f"s{i:03d}" for i in range(n)], "x1": x1, "x2": x2, "site": group,
                          "sex": sex, "age": age, "race.ethnicity": race, "BMI": 25 + x1 + rng.normal(size=n)})
    frame.loc[::7, "age"] = np.nan
    frame.loc[::11, "sex"] = None
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    return path
