import json

import pytest

from sharewise.cli.main import main


def test_run_on_a_csv_without_config(people_csv, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--data", str(people_csv), "--cat-target", "sex", "race.ethnicity", "--num_target", "age",
               "--id-col", "subject", "--method", "hard", "--out", str(out), "--epochs", "2", "--no-progress",
               "--set", "backbone.width=8"])
    assert rc == 0
    for name in ("config.yaml", "split.csv", "metrics.jsonl", "results.json", "report.md", "selection.json",
                 "checkpoints/train/best.pt", "checkpoints/train/last.pt"):
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == 1 and set(res["tasks"]) == {"sex", "race.ethnicity", "age"}
    assert res["tasks"]["age"]["primary_metric"] == "mae" and res["tasks"]["age"]["test"]["n"] > 0
    assert res["parameters"]["total"] > 0 and res["flops"]["all_tasks"] > 0
    # the run directory is not overwritten without asking
    rc = main(["run", "--data", str(people_csv), "--cat-target", "sex", "--out", str(out), "--no-progress"])
    assert rc == 2
    assert "already holds" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == res


def test_methods_and_datasets_commands(capsys):
    assert main(["methods"]) == 0
    assert "independent" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert "digits" in capsys.readouterr().out


def test_train_then_test(tmp_path, capsys):
    out = tmp_path / "r"
    common = ["--out", str(out), "--no-progress", "--set", "backbone.width=8", "--set", "backbone.depth=1"]
    assert main(["train", "--epochs", "1", *common]) == 0
    assert not (out / "results.json").exists()
    assert main(["test", *common]) == 0
    assert (out / "results.json").exists()
