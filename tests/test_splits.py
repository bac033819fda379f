import numpy as np
import pandas as pd
import pytest

from sharewise.data.splits import carve_train, check_ratios, split_from_column, stratified_split
from sharewise.errors import ConfigError, DataError


def test_stratified_split_is_seeded_disjoint_and_stratified():
    strata = np.array(["a"] * 700 + ["b"] * 300)
    s1 = stratified_split(strata, [0.7, 0.15, 0.15], seed=3)
    s2 = stratified_split(strata, [0.7, 0.15, 0.15], seed=3)
    s3 = stratified_split(strata, [0.7, 0.15, 0.15], seed=4)
    for k in s1:
        assert np.array_equal(s1[k], s2[k])
    assert not np.array_equal(s1["train"], s3["train"])
    all_idx = np.concatenate(list(s1.values()))
    assert len(all_idx) == 1000 and len(np.unique(all_idx)) == 1000
    for k, n in (("train", 700), ("val", 150), ("test", 150)):
        assert len(s1[k]) == n
        assert np.mean(strata[s1[k]] == "a") == pytest.approx(0.7)


@pytest.mark.parametrize("ratios", [[0.5, 0.5, 0.5], [0, 0.5, 0.5], [1.2, -0.1, -0.1], [0.7, 0.3]])
def test_impossible_ratios(ratios):
    with pytest.raises(ConfigError, match="split.ratios"):
        check_ratios(ratios)


def test_empty_split_is_an_error():
    with pytest.raises(ConfigError, match="would be empty"):
        stratified_split(np.array(["a"] * 5), [0.9, 0.05, 0.05], seed=0)


def test_many_small_strata_still_fill_every_split():
    """20 subjects in 5 quantile bins of 4: rounding each bin alone gives (3, 1, 0) per bin, an
    empty test split; the split is then allocated over the whole set, each split spread over bins."""
    strata = np.repeat(["q0", "q1", "q2", "q3", "q4"], 4)
    split = stratified_split(strata, [0.7, 0.15, 0.15], seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 14, "val": 3, "test": 3}
    assert len(np.unique(np.concatenate(list(split.values())))) == 20
    for name in ("val", "test"):
        assert len(set(strata[split[name]])) >= 2  # not one bin's rows
    for k in split:
        assert np.array_equal(split[k], stratified_split(strata, [0.7, 0.15, 0.15], seed=0)[k])
    # strata large enough to fill every split alone keep the per-stratum allocation (recorded splits)
    big = np.repeat(["a", "b"], [70, 30])
    split = stratified_split(big, [0.7, 0.15, 0.15], seed=1)
    assert [int(np.sum(big[split[k]] == "b")) for k in ("train", "val", "test")] == [21, 5, 4]


def test_groups_stay_together():
    groups = np.repeat(np.arange(50), 4)
    s = stratified_split(np.zeros(200), [0.6, 0.2, 0.2], seed=0, groups=groups)
    for k1 in s:
        for k2 in s:
            if k1 < k2:
                assert not set(groups[s[k1]]) & set(groups[s[k2]])


def test_split_column_and_train_carving():
    s = split_from_column(pd.Series(["train", "Validation", "test", "train"]), "fold")
    assert s["train"].tolist() == [0, 3] and s["val"].tolist() == [1]
    with pytest.raises(DataError, match="fold"):
        split_from_column(pd.Series(["train", "holdout"]), "fold")
    parts = carve_train(np.arange(100), seed=0)
    assert not set(parts["train1"]) & set(parts["train2"]) and len(parts["train1"]) + len(parts["train2"]) == 100


@pytest.mark.parametrize("values, missing", [(["train", "test", "train"], "val"), (["val", "dev", "test"], "train")])
def test_split_column_without_train_or_val_rows_is_an_error(values, missing):
    with pytest.raises(DataError, match=f"split column 'fold': the {missing} split would be empty"):
        split_from_column(pd.Series(values), "fold")


def test_split_column_without_test_rows_warns():
    with pytest.warns(UserWarning, match="split column 'fold': no row is marked test"):
        s = split_from_column(pd.Series(["train", "val", "train"]), "fold")
    assert len(s["test"]) == 0 and s["train"].tolist() == [0, 2]
