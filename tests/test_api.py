import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sharewise
from sharewise.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    """The README's Python API example runs as written; its fitted run's test metrics are what
    ``Run.predict`` gives on the test rows, and beat the trivial baselines (the training split's
    majority class, the training mean) by a clear margin, so a run that learnt nothing fails."""
    from sklearn.datasets import load_digits

    text = README.read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    run = sharewise.load_run(tmp_path / "runs/api-example")
    results = json.loads((run.path / "results.json").read_text())
    assert float(out.splitlines()[0]) == results["tasks"]["digit"]["test"]["accuracy"]
    assert "digit" in out and "parity" in out
    # the built-in digits set's four tasks, one row per image (its id is the row number)
    bunch = load_digits()
    frame = pd.DataFrame(bunch.data, columns=[f"px{i}" for i in range(64)])
    truth = pd.DataFrame({"digit": bunch.target, "parity": np.where(bunch.target % 2 == 0, "even", "odd"),
                          "large": np.where(bunch.target >= 5, "yes", "no"), "value": bunch.target.astype(float)})
    split = pd.read_csv(run.path / "split.csv")
    test_rows = split.loc[split["split"] == "test", "id"].to_numpy()
    train_rows = split.loc[split["split"] == "train", "id"].to_numpy()
    assert len(test_rows) == results["run"]["split_sizes"]["test"] > 0
    predictions = run.predict(frame.iloc[test_rows])
    test, train = truth.iloc[test_rows], truth.iloc[train_rows]
    for task in ("digit", "parity", "large"):
        accuracy = float(np.mean(predictions[task].to_numpy() == test[task].to_numpy()))
        reported = results["tasks"][task]["test"]
        assert reported["n"] == len(test_rows)
        assert reported["accuracy"] == pytest.approx(accuracy, abs=1e-6)
        majority = float(np.mean(test[task].to_numpy() == train[task].mode()[0]))
        assert accuracy >= majority + 0.2, (task, accuracy, majority)
    mae = float(np.mean(np.abs(predictions["value"].to_numpy() - test["value"].to_numpy())))
    assert results["tasks"]["value"]["test"]["mae"] == pytest.approx(mae, abs=1e-6)
    mean_baseline = float(np.mean(np.abs(train["value"].mean() - test["value"].to_numpy())))
    assert mae <= 0.8 * mean_baseline, (mae, mean_baseline)


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    rc = main(["run", "--out", str(out), "--no-progress", "--epochs", "2", "--set", "backbone.width=16",
               "--set", "backbone.depth=1", "--set", "output.tensorboard=false", *extra])
    assert rc == 0
    return out


def test_predict_round_trip_reproduces_test_metrics(tmp_path, people_csv):
    out = tmp_path / "people"
    assert main(["run", "--data", str(people_csv), "--cat-target", "sex", "--num-target", "age", "--id-col", "subject",
                 "--out", str(out), "--no-progress", "--epochs", "3", "--set", "backbone.width=16"]) == 0
    results = json.loads((out / "results.json").read_text())
    frame = pd.read_csv(people_csv)
    split = pd.read_csv(out / "split.csv")
    test_ids = set(split.loc[split["split"] == "test", "id"])
    test_rows = np.flatnonzero(frame["subject"].isin(test_ids).to_numpy())
    test_frame = frame.iloc[test_rows].drop(columns=["sex", "age"])  # targets may be absent
    test_file = tmp_path / "new.csv"
    test_frame.to_csv(test_file, index=False)
    pred_file = tmp_path / "pred.csv"
    assert main(["predict", str(out), "--data", str(test_file), "--out", str(pred_file)]) == 0
    pred = pd.read_csv(pred_file)
    assert list(pred["subject"]) == list(test_frame["subject"])
    truth = frame.iloc[test_rows]
    known = truth["sex"].notna().to_numpy()
    acc = np.mean(pred["sex"].to_numpy()[known] == truth["sex"].to_numpy()[known])
    assert acc == pytest.approx(results["tasks"]["sex"]["test"]["accuracy"], abs=1e-9)
    known = truth["age"].notna().to_numpy()
    mae = np.mean(np.abs(pred["age"].to_numpy()[known] - truth["age"].to_numpy()[known]))
    assert mae == pytest.approx(results["tasks"]["age"]["test"]["mae"], rel=1e-5)
    probs = pred[["sex:p[F]", "sex:p[M]"]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    # a missing feature column is an error naming it
    test_frame.drop(columns=["x2"]).to_csv(test_file, index=False)
    assert main(["predict", str(out), "--data", str(test_file), "--out", str(tmp_path / "p2.csv")]) == 2


def test_reference_gives_delta_mtl(tmp_path):
    ind = _run(tmp_path, "ind", "--method", "independent")
    hard = _run(tmp_path, "hard", "--method", "hard", "--reference", str(ind))
    r, ref = json.loads((hard / "results.json").read_text()), json.loads((ind / "results.json").read_text())
    for t, entry in r["tasks"].items():
        m = entry["primary_metric"]
        sign = -1 if m == "mae" else 1
        b = ref["tasks"][t]["test"][m]
        assert entry["delta"] == pytest.approx(sign * (entry["test"][m] - b) / abs(b))
    assert r["delta_mtl"] == pytest.approx(100 * np.mean([e["delta"] for e in r["tasks"].values()]))
    assert r["selection"]["rule"].startswith("validation Δ_MTL")
    assert "Δ_MTL" in (hard / "report.md").read_text()
    assert main(["report", str(ind), str(hard), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.md").exists() and (tmp_path / "cmp" / "accuracy_vs_cost.png").exists()


def test_seeds_mean_and_sample_sd(tmp_path):
    base = _run(tmp_path, "seeds", "--seeds", "0", "1", "2")
    summary = json.loads((base / "seeds.json").read_text())
    accs = [json.loads((base / f"seed_{s}" / "results.json").read_text())["tasks"]["digit"]["test"]["accuracy"]
            for s in (0, 1, 2)]
    entry = summary["tasks"]["digit"]["test"]["accuracy"]
    assert entry["n"] == 3
    assert entry["mean"] == pytest.approx(np.mean(accs)) and entry["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert (base / "seeds.md").exists()
