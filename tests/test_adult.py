"""UCI Adult through ``configs/tables/adult.yaml``: reading, label clean-up, tasks and features.

The files live in the shared data folder (skipped without it). Only the ``slow`` test trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sharewise.config import load_config
from sharewise.data import build_data
from sharewise.data.table import read_table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tables" / "adult.yaml"
TARGETS = {"income", "marital-status", "age"}


def _config(shared_data: Path, *overrides: str):
    adult = shared_data / "adult"
    return load_config(CONFIG, [f"data.path={adult / 'adult.data'}", f"data.test_path={adult / 'adult.test'}",
                                *overrides])


def test_files_are_read_with_the_configs_keys(shared_data):
    cfg = _config(shared_data)
    train = read_table(cfg.data.path, cfg.data)
    test = read_table(cfg.data.test_path, cfg.data.for_test_file())
    assert len(train) == 32_561 and len(test) == 16_281  # the "|1x3 Cross validator" line is skipped
    assert list(train.columns) == list(test.columns) == cfg.data.columns
    for frame in (train, test):
        assert not frame.isin(["?"]).any().any()
        assert frame["age"].dtype.kind == "i" and frame["workclass"].iloc[0] in ("State-gov", "Private")
    # "?" became missing (counts of the UCI description)
    assert train[["workclass", "occupation", "native-country"]].isna().sum().tolist() == [1836, 1843, 583]
    assert test[["workclass", "occupation", "native-country"]].isna().sum().tolist() == [963, 966, 274]
    assert sorted(test["income"].unique()) == ["<=50K.", ">50K."]  # value_map strips the "." later


def test_tasks_splits_and_features(shared_data):
    loaded = build_data(_config(shared_data))
    data = loaded.data
    assert data.meta["dropped_no_target"] == 0
    sizes = {s: len(data.splits[s]) for s in ("train", "val", "test")}
    assert sizes["train"] + sizes["val"] == 32_561 and sizes["test"] == 16_281
    assert abs(sizes["val"] / 32_561 - 0.15) < 0.001  # 85/15 of adult.data; adult.test is the test split
    tasks = {t.name: t for t in data.tasks}
    assert tasks["income"].classes == ["<=50K", ">50K"]  # the test file's "." is gone
    assert len(tasks["marital-status"].classes) == 7 and tasks["age"].kind == "numerical"
    income = data.examples.targets["income"][data.splits["test"]]
    assert int(income.sum()) == 3_846  # test rows labelled ">50K." in adult.test
    assert all(bool(data.examples.masks[t].all()) for t in TARGETS)
    features = loaded.state["features"]["columns"]
    assert not TARGETS & set(features) and len(features) == 12
    assert "workclass=?" not in json.dumps(loaded.state["features"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hard", "independent"])
def test_adult_reaches_the_documented_figures(shared_data, tmp_path, method):
    from sharewise.cli.main import main

    adult = shared_data / "adult"
    out = tmp_path / method
    rc = main(["run", "--config", str(CONFIG), "--method", method, "--out", str(out), "--no-progress",
               "--set", f"data.path={adult / 'adult.data'}", "--set", f"data.test_path={adult / 'adult.test'}"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())["tasks"]
    assert results["income"]["test"]["accuracy"] >= 0.83
    assert results["age"]["test"]["mae"] <= 10.0


@pytest.mark.slow
def test_adult_reference_delta_and_predict_round_trip(shared_data, tmp_path):
    """`hard` against an `independent` reference gives Δ_MTL; `predict` on the raw test file
    reproduces the test accuracy and MAE that results.json reports."""
    import numpy as np
    import pandas as pd

    from sharewise.cli.main import main

    adult = shared_data / "adult"
    paths = ["--set", f"data.path={adult / 'adult.data'}", "--set", f"data.test_path={adult / 'adult.test'}",
             "--set", "train.epochs=3", "--no-progress"]
    ind, hard = tmp_path / "ind", tmp_path / "hard"
    assert main(["run", "--config", str(CONFIG), "--method", "independent", "--out", str(ind), *paths]) == 0
    assert main(["run", "--config", str(CONFIG), "--method", "hard", "--reference", str(ind), "--out", str(hard),
                 *paths]) == 0
    results = json.loads((hard / "results.json").read_text())
    assert results["delta_mtl"] is not None
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(hard), "--data", str(adult / "adult.test"), "--out", str(pred)]) == 0
    p = pd.read_csv(pred)
    cols = load_config(CONFIG).data.columns
    truth = pd.read_csv(adult / "adult.test", header=None, names=cols, skiprows=1, skipinitialspace=True)
    acc = np.mean(p["income"].to_numpy() == truth["income"].str.rstrip(".").to_numpy())
    assert acc == pytest.approx(results["tasks"]["income"]["test"]["accuracy"], abs=1e-12)
    assert np.mean(np.abs(p["age"] - truth["age"])) == pytest.approx(results["tasks"]["age"]["test"]["mae"], rel=1e-6)
