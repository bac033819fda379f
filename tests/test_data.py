import numpy as np
import pandas as pd
import pytest
import torch

from sharewise.config import validate_config
from sharewise.data import ExampleSet, InputSpec, PerTaskData, build_data, iter_task_batches
from sharewise.tasks import Task


def _cfg(path, **extra):
    raw = {"data": {"path": str(path), "id_col": "subject"},
           "tasks": [{"name": "sex", "kind": "categorical"}, {"name": "age", "kind": "numerical"},
                     {"name": "race.ethnicity", "kind": "categorical"}]}
    raw.update(extra)
    return validate_config(raw)


def test_table_shared_input_targets_masks_and_encoders(people_csv):
    loaded = build_data(_cfg(people_csv))
    data = loaded.data
    frame = pd.read_csv(people_csv)
    assert data.shape == "shared" and data.task_names == ["sex", "age", "race.ethnicity"]
    # features: x1, x2 standardised + site one-hot (3), BMI numeric; never targets or the id
    assert data.input_spec.shape == (6,)
    assert loaded.state["features"]["columns"] == ["x1", "x2", "site", "BMI"]
    age = data.tasks[1]
    train = data.splits["train"]
    known_train = frame["age"].iloc[train].dropna()
    assert age.mean == pytest.approx(known_train.mean()) and age.std == pytest.approx(known_train.std(ddof=0))
    # masks: exactly the missing rows
    assert np.array_equal(data.examples.masks["age"].numpy(), frame["age"].notna().to_numpy())
    assert np.array_equal(data.examples.masks["sex"].numpy(), frame["sex"].notna().to_numpy())
    x = data.examples.inputs
    assert torch.allclose(x[train, 0].mean(), torch.tensor(0.0), atol=1e-5)
    assert data.tasks[0].classes == ["F", "M"]


def test_batches_shared_shape_and_resume_position(people_csv):
    data = build_data(_cfg(people_csv)).data
    all_batches = list(data.batches("train", 16, shuffle=True, seed=1, epoch=2))
    tail = list(data.batches("train", 16, shuffle=True, seed=1, epoch=2, start=3))
    assert len(tail) == len(all_batches) - 3
    assert torch.equal(tail[0][0], all_batches[3][0])
    x, targets = all_batches[0]
    assert x.shape == (16, 6) and set(targets) == {"sex", "age", "race.ethnicity"}
    seen = [t for t, *_ in iter_task_batches(all_batches[0], data.task_names)]
    assert seen == data.task_names


def test_shards_cover_split_once(people_csv):
    data = build_data(_cfg(people_csv)).data
    ids = []
    for rank in range(2):
        for x, targets in data.batches("val", 7, rank=rank, world_size=2):
            ids.append(x)
    assert sum(len(x) for x in ids) == data.split_size("val")


def test_split_saved_assignment_is_complete(people_csv):
    data = build_data(_cfg(people_csv)).data
    rows = data.split_table()
    assert len(rows) == 240
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["subsplit"] in ("train1", "train2") for r in rows if r["split"] == "train")
    assert rows[0]["id"] == "s000"


def test_per_task_shape():
    tasks = [Task("a", "categorical", classes=[0, 1]), Task("b", "numerical")]
    ex = {
        "a": ExampleSet(torch.randn(30, 4), {"a": torch.randint(0, 2, (30,))}, {"a": torch.ones(30, dtype=torch.bool)},
                        np.arange(30)),
        "b": ExampleSet(torch.randn(10, 4), {"b": torch.randn(10)}, {"b": torch.ones(10, dtype=torch.bool)}, np.arange(10)),
    }
    splits = {"a": {"train": np.arange(20), "val": np.arange(20, 30), "test": np.arange(0)},
              "b": {"train": np.arange(6), "val": np.arange(6, 10), "test": np.arange(0)}}
    data = PerTaskData(tasks, ex, splits, InputSpec("vector", (4,)))
    train = list(data.batches("train", 4, shuffle=True, seed=0))
    assert len(train) == 5 and all(set(b) == {"a", "b"} for b in train)  # b restarts while a runs
    val = list(data.batches("val", 4))
    assert [set(b) for b in val] == [{"a", "b"}, {"a"}, {"a"}]
    assert sum(len(b["b"][0]) for b in val if "b" in b) == 4
    t, x, y, m = next(iter_task_batches(train[0], data.task_names))
    assert t == "a" and x.shape == (4, 4)
    assert {r["task"] for r in data.split_table()} == {"a", "b"}


def test_digits_builtin():
    data = build_data(validate_config({})).data
    assert data.task_names == ["digit", "parity", "large", "value"]
    assert data.input_spec.shape == (64,)
    img = build_data(validate_config({"data": {"source": "digits", "as_image": True}})).data
    assert img.input_spec.kind == "image" and img.examples.inputs.shape[1:] == (1, 8, 8)


@pytest.mark.parametrize("as_image", [False, True])
def test_digits_with_some_targets_never_feeds_the_others_as_features(as_image):
    """`value` is the digit and `parity`/`large` derive from it: unused, they are dropped, not inputs."""
    from sklearn.datasets import load_digits

    cfg = {"data": {"source": "digits", "as_image": as_image}, "tasks": [{"name": "digit", "kind": "categorical"}]}
    data = build_data(validate_config(cfg)).data
    assert data.task_names == ["digit"]
    assert data.input_spec.shape == ((1, 8, 8) if as_image else (64,))
    pixels = load_digits().data.astype(np.float32)
    flat = data.examples.inputs.reshape(len(pixels), -1).numpy()
    # every input column is a (standardised) pixel: its correlation with that pixel is 1 where it varies
    varying = pixels.std(0) > 0
    corr = [np.corrcoef(flat[:, j], pixels[:, j])[0, 1] for j in np.flatnonzero(varying)]
    assert np.allclose(corr, 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_cells_are_stripped_and_na_markers_reinferred(tmp_path, fmt):
    from sharewise.config import DataConfig
    from sharewise.data.table import read_table

    frame = pd.DataFrame({"sex": ["F ", " M", "?"], "y": ["1", "?", " 2"]})
    path = tmp_path / f"t.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    out = read_table(path, DataConfig(na_values=["?"]))
    assert out["sex"].tolist()[:2] == ["F", "M"] and out["sex"].isna().tolist() == [False, False, True]
    assert out["y"].dtype.kind == "f" and out["y"].isna().tolist() == [False, True, False]


def test_test_skip_rows_applies_to_the_test_file_only(tmp_path):
    def rows(n: int) -> str:
        return "".join(f"{i},{'ab'[i % 2]}\n" for i in range(n))

    (tmp_path / "train.csv").write_text(rows(40))
    (tmp_path / "test.csv").write_text("|a preamble line\n" + rows(14))
    cfg = validate_config({"data": {"path": str(tmp_path / "train.csv"), "test_path": str(tmp_path / "test.csv"),
                                    "header": False, "columns": ["x", "y"], "test_skip_rows": 1},
                           "tasks": [{"name": "y", "kind": "categorical"}]})
    data = build_data(cfg).data
    assert len(data.splits["train"]) + len(data.splits["val"]) == 40
    assert len(data.splits["test"]) == 14


def test_training_order_keys_never_collide_and_keep_the_historical_numbers():
    from sharewise.seeding import order_key, stream_seed

    # below 64 stretches and 4,096 repetitions: the number recorded runs used, (c·64 + s)·4096 + r
    assert order_key((3, 1, 7), (64, 4096)) == (3 * 64 + 1) * 4096 + 7
    # from 64 stretches or 4,096 repetitions on, the old number collided: (0, 64, 0) was (1, 0, 0)
    keys = [(c, s, r) for c in range(3) for s in (0, 1, 63, 64, 65) for r in (0, 1, 4095, 4096, 8191)]
    seeds = {stream_seed(7, "data_order", order_key(k, (64, 4096))) for k in keys}
    assert len(seeds) == len(keys)
    assert order_key((0, 64, 0), (64, 4096)) != order_key((1, 0, 0), (64, 4096))
    # per-task orders add a repetition with radix 1,000 to the phase's key, tuple keys included
    inner = [order_key(k, (64, 4096)) for k in keys]
    per_task = {stream_seed(7, "data_order", order_key((k, rep), (1000,))) for k in inner for rep in (0, 999, 1000)}
    assert len(per_task) == 3 * len(inner)
