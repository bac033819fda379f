"""Every bad input gets one line naming the file, key or column, exit code 2, and no traceback.

Each command runs against a finished run directory with ``--overwrite``: validation happens
before the run directory is touched, so its ``results.json`` must stay byte-for-byte the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sharewise.cli.main import main

FAST = ["--epochs", "1", "--set", "backbone.width=8", "--set", "train.threads=1", "--no-progress"]


def _good_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "subject": [f"s{i:03d}" for i in range(n)],
        "x1": rng.normal(size=n).round(3),
        "site": rng.choice(["a", "b"], size=n),
        "sex": np.where(np.arange(n) % 2 == 0, "F", "M"),
        "age": (40 + 10 * rng.normal(size=n)).round(1),
    })


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """A finished run directory and the bytes of its ``results.json``."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "people.csv"
    _good_frame().to_csv(data, index=False)
    out = root / "run"
    rc = main(["run", "--data", str(data), "--cat-target", "sex", "--num-target", "age", "--id-col", "subject",
               "--out", str(out), *FAST])
    assert rc == 0
    return {"out": out, "data": data, "results": (out / "results.json").read_bytes()}


@pytest.fixture
def bad(finished, capsys):
    """Run a command against the finished run dir with --overwrite; return its one error line."""

    def run(*argv: str, command: str = "run") -> str:
        capsys.readouterr()
        rc = main([command, *argv, "--out", str(finished["out"]), "--overwrite", *FAST])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("sharewise: error: "), err
        assert (finished["out"] / "results.json").read_bytes() == finished["results"]
        return lines[0]

    return run


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _rows(n: int = 30, **cols) -> str:
    """A small CSV: ``x`` plus the given columns (each a function of the row index)."""
    lines = ["x," + ",".join(cols)]
    for i in range(n):
        lines.append(f"{i}," + ",".join(str(f(i)) for f in cols.values()))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- files


def test_missing_file(bad, tmp_path):
    path = tmp_path / "nope.csv"
    line = bad("--data", str(path), "--cat-target", "sex")
    assert "not found" in line and str(path) in line


def test_empty_file(bad, tmp_path):
    path = _csv(tmp_path, "")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "empty" in line


def test_whitespace_only_file(bad, tmp_path):
    path = _csv(tmp_path, "\n\n  \n")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "empty" in line


def test_header_only_file(bad, tmp_path):
    path = _csv(tmp_path, "x,sex,age\n")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "no data rows" in line


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, np.random.default_rng(1).bytes(3000),
                                     "é".encode("latin-1") * 10 + b"\x81\x8d\x8f\x90\x9d" * 400])
def test_binary_garbage(bad, tmp_path, content):
    path = tmp_path / "garbage.csv"
    path.write_bytes(content)
    line = bad("--data", str(path), "--cat-target", "sex")
    assert str(path) in line and "binary" in line


def test_csv_content_named_parquet(bad, tmp_path):
    path = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2]), name="t.parquet")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "not a Parquet file" in line


def test_parquet_content_named_csv(bad, tmp_path):
    path = tmp_path / "t.csv"
    _good_frame().to_parquet(path)
    line = bad("--data", str(path), "--cat-target", "sex")
    assert str(path) in line and "Parquet" in line


def test_truncated_parquet(bad, tmp_path):
    path = tmp_path / "t.parquet"
    _good_frame().to_parquet(path)
    path.write_bytes(path.read_bytes()[:200])
    line = bad("--data", str(path), "--cat-target", "sex")
    assert str(path) in line and "Parquet" in line


def test_gzip_content_without_gz_suffix(bad, tmp_path):
    import gzip

    path = tmp_path / "t.csv"
    path.write_bytes(gzip.compress(_rows(sex=lambda i: "FM"[i % 2]).encode()))
    line = bad("--data", str(path), "--cat-target", "sex")
    assert str(path) in line and "gzip" in line


@pytest.mark.parametrize("name", ["t.xlsx", "t.json", "noext"])
def test_unsupported_extension(bad, tmp_path, name):
    path = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2]), name=name)
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "unsupported file extension" in line


def test_ragged_row_too_many_fields(bad, tmp_path):
    text = _rows(sex=lambda i: "FM"[i % 2]).splitlines()
    text[5] += ",extra"
    path = _csv(tmp_path, "\n".join(text) + "\n")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "line 6 has 3 fields, expected 2" in line


def test_ragged_row_too_few_fields(bad, tmp_path):
    text = _rows(sex=lambda i: "FM"[i % 2], age=lambda i: 30 + i).splitlines()
    text[7] = text[7].rsplit(",", 1)[0]
    path = _csv(tmp_path, "\n".join(text) + "\n")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "line 8 has 2 fields, expected 3" in line


def test_ragged_separate_test_file(bad, finished, tmp_path):
    text = _good_frame(20).to_csv(index=False).splitlines()
    text[3] += ",1"
    path = _csv(tmp_path, "\n".join(text) + "\n", name="test.csv")
    line = bad("--data", str(finished["data"]), "--test-data", path, "--cat-target", "sex")
    assert path in line and "line 4" in line


# ----------------------------------------------------------------- targets and columns


def test_unknown_target_lists_close_matches(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sexx")
    assert "'sexx'" in line and str(finished["data"]) in line and "did you mean: sex" in line


def test_unknown_target_case_mismatch(bad, finished):
    line = bad("--data", str(finished["data"]), "--num-target", "Age")
    assert "'Age'" in line and "did you mean: age" in line


def test_target_as_both_kinds(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--num-target", "sex")
    assert "'sex'" in line and "both" in line


def test_target_twice(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "sex")
    assert "'sex'" in line and "twice" in line


def test_target_twice_in_config(bad, finished, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{path: {finished['data']}}}\n"
                   "tasks:\n  - {name: sex, kind: categorical}\n  - {name: sex, kind: numerical}\n")
    line = bad("--config", str(cfg))
    assert "'sex'" in line and "both" in line and "tasks" in line


def test_numerical_target_with_text(bad, tmp_path):
    path = _csv(tmp_path, _rows(age=lambda i: "unknown" if i == 4 else 30 + i))
    line = bad("--data", path, "--num-target", "age")
    assert path in line and "'age'" in line and "'unknown'" in line


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_numerical_target_with_infinity(bad, tmp_path, value):
    path = _csv(tmp_path, _rows(age=lambda i: value if i == 4 else 30 + i))
    line = bad("--data", path, "--num-target", "age")
    assert path in line and "'age'" in line and "infinite" in line


def test_categorical_target_with_one_class(bad, tmp_path):
    path = _csv(tmp_path, _rows(sex=lambda i: "F", age=lambda i: 30 + i))
    line = bad("--data", path, "--cat-target", "sex", "--num-target", "age")
    assert path in line and "'sex'" in line and "single class" in line


@pytest.mark.parametrize("flag", ["--cat-target", "--num-target"])
def test_all_missing_target(bad, tmp_path, flag):
    path = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2], y=lambda i: ""))
    line = bad("--data", path, "--cat-target", "sex", flag, "y")
    assert path in line and "'y'" in line and "no known value" in line


def test_all_missing_target_with_na_marker(bad, tmp_path):
    path = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2], y=lambda i: "?"))
    line = bad("--data", path, "--cat-target", "sex", "y", "--set", "data.na_values=['?']")
    assert path in line and "'y'" in line and "no known value" in line


def test_no_target_at_all(bad, finished):
    line = bad("--data", str(finished["data"]))
    assert "no target" in line and "--cat-target" in line


def test_unknown_id_column(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--id-col", "subjct")
    assert "'subjct'" in line and "id column" in line and "did you mean: subject" in line


def test_unknown_split_column(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--split-col", "fold")
    assert "'fold'" in line and "split column" in line


def test_unknown_feature_column(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--set", "data.features=[x1, ste]")
    assert "'ste'" in line and "did you mean: site" in line


# ----------------------------------------------------------------- configuration


def test_missing_config_file(bad, tmp_path):
    path = tmp_path / "nope.yaml"
    line = bad("--config", str(path))
    assert str(path) in line and "not found" in line


def test_yaml_syntax_error(bad, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: [1, 2\n  seed: 3\n")
    line = bad("--config", str(path))
    assert str(path) in line and "YAML syntax error" in line and "line" in line


def test_config_not_a_mapping(bad, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- train\n- epochs\n")
    line = bad("--config", str(path))
    assert str(path) in line and "mapping" in line and "list" in line


def test_config_binary_file(bad, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    line = bad("--config", str(path))
    assert str(path) in line


def test_unknown_config_key_in_file(bad, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    line = bad("--config", str(path))
    assert "'train.epoch'" in line and "did you mean: epochs" in line


def test_unknown_config_section(bad, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    line = bad("--config", str(path))
    assert "'trian'" in line and "did you mean: train" in line


def test_unknown_config_key_through_set(bad):
    line = bad("--set", "train.epoch=3")
    assert "'train.epoch'" in line and "did you mean: epochs" in line


def test_unknown_data_key_through_set(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--set", "data.skiprows=1")
    assert "'data.skiprows'" in line and "did you mean: skip_rows" in line


def test_wrong_type_through_set(bad):
    line = bad("--set", "train.epochs=abc")
    assert "'train.epochs'" in line and "integer" in line


def test_wrong_type_in_file(bad, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: fast\n")
    line = bad("--config", str(path))
    assert "'optim.lr'" in line and "number" in line


def test_set_without_equals(bad):
    line = bad("--set", "train.epochs")
    assert "train.epochs" in line and "KEY=VALUE" in line


def test_unknown_method(bad):
    line = bad("--method", "hardd")
    assert "'hardd'" in line and "did you mean: hard" in line


def test_unknown_method_key(bad):
    line = bad("--set", "method.lambda=2")
    assert "'method.lambda'" in line


def test_unknown_backbone(bad):
    line = bad("--backbone", "mlpp")
    assert "'mlpp'" in line and "did you mean: mlp" in line


@pytest.mark.parametrize("ratios, words", [
    ("[0.5, 0.6, 0.1]", "sum to 1"),
    ("[0.0, 0.5, 0.5]", "train ratio"),
    ("[0.9, 0.1]", "expected 3"),
    ("[1.2, -0.1, -0.1]", ">= 0"),
])
def test_impossible_split_ratios(bad, ratios, words):
    line = bad("--set", f"split.ratios={ratios}")
    assert "split.ratios" in line and words in line


def test_split_too_small_for_ratios(bad, tmp_path):
    path = _csv(tmp_path, _rows(n=4, sex=lambda i: "FM"[i % 2]))
    line = bad("--data", path, "--cat-target", "sex", "--set", "split.ratios=[0.9, 0.05, 0.05]")
    assert "split.ratios" in line and "empty" in line


def test_gpu_that_does_not_exist(bad):
    line = bad("--gpus", "7")
    assert "--gpus" in line and "7" in line


def test_bad_input_on_test_command(bad, tmp_path):
    line = bad("--data", str(tmp_path / "nope.csv"), "--cat-target", "sex", command="test")
    assert "not found" in line


def test_bad_input_on_train_command(bad):
    line = bad("--set", "train.epoch=3", command="train")
    assert "'train.epoch'" in line
