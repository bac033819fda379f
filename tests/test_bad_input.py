"""Every bad input gets one line naming the file, key or column, exit code 2, and no traceback.

Each command runs against a finished run directory with ``--overwrite``: validation happens
before the run directory is touched, so its ``results.json`` must stay byte-for-byte the same.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
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
    return {"out": out, "data": data, "results": (out / "results.json").read_bytes(), "files": _snapshot(out)}


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run directory with its size and modification time."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def bad(finished, capsys, tmp_path, monkeypatch):
    """Run a command against the finished run dir with --overwrite; return its one error line.

    The command runs in ``tmp_path`` so that file names in messages are the short relative ones
    the tests pass (a test's words are never found inside its own temporary path).
    """
    monkeypatch.chdir(tmp_path)

    def run(*argv: str, command: str = "run") -> str:
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            rc = main([command, *argv, "--out", str(finished["out"]), "--overwrite", *FAST])
        err = capsys.readouterr().err
        assert not caught, [str(w.message) for w in caught]  # the CLI would print each as a line
        assert rc == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("sharewise: error: "), err
        assert (finished["out"] / "results.json").read_bytes() == finished["results"]
        assert _snapshot(finished["out"]) == finished["files"]  # nothing else replaced or removed either
        return lines[0]

    return run


def _csv(tmp_path: Path, text: str, name: str = "input.csv") -> str:
    """Write ``text`` to ``tmp_path/name`` and return ``name`` (the tests run in ``tmp_path``)."""
    (tmp_path / name).write_text(text)
    return name


def _rows(n: int = 30, **cols) -> str:
    """A small CSV: ``x`` plus the given columns (each a function of the row index)."""
    lines = ["x," + ",".join(cols)]
    for i in range(n):
        lines.append(f"{i}," + ",".join(str(f(i)) for f in cols.values()))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- files


def test_missing_file(bad, tmp_path):
    path = tmp_path / "nope.csv"
    line = bad("--data", path.name, "--cat-target", "sex")
    assert line == f"sharewise: error: data file not found: nope.csv (relative to the current directory {tmp_path})"


def test_missing_test_file(bad, finished, tmp_path):
    line = bad("--data", str(finished["data"]), "--test-data", str(tmp_path / "nope.csv"), "--cat-target", "sex")
    assert line == f"sharewise: error: data file not found: {tmp_path / 'nope.csv'}"


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
    line = bad("--data", path.name, "--cat-target", "sex")
    assert path.name in line and "binary" in line


def test_csv_content_named_parquet(bad, tmp_path):
    path = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2]), name="input.parquet")
    line = bad("--data", path, "--cat-target", "sex")
    assert path in line and "not a Parquet file" in line


def test_parquet_content_named_csv(bad, tmp_path):
    path = tmp_path / "input.csv"
    _good_frame().to_parquet(path)
    line = bad("--data", path.name, "--cat-target", "sex")
    assert path.name in line and "Parquet" in line


def test_truncated_parquet(bad, tmp_path):
    path = tmp_path / "input.parquet"
    _good_frame().to_parquet(path)
    path.write_bytes(path.read_bytes()[:200])
    line = bad("--data", path.name, "--cat-target", "sex")
    assert line.startswith("sharewise: error: input.parquet: unreadable Parquet file")
    assert line.count("input.parquet") == 1


def test_gzip_content_without_gz_suffix(bad, tmp_path):
    import gzip

    path = tmp_path / "input.csv"
    path.write_bytes(gzip.compress(_rows(sex=lambda i: "FM"[i % 2]).encode()))
    line = bad("--data", path.name, "--cat-target", "sex")
    assert path.name in line and "gzip" in line


@pytest.mark.parametrize("name", ["input.xlsx", "input.json", "input"])
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


def test_truncated_gzip_csv(bad, tmp_path):
    import gzip

    path = tmp_path / "people.csv.gz"
    path.write_bytes(gzip.compress(_good_frame().to_csv(index=False).encode())[:-40])
    line = bad("--data", path.name, "--cat-target", "sex")
    assert line.startswith("sharewise: error: people.csv.gz: truncated or corrupt gzip file"), line


def test_corrupt_gzip_csv(bad, tmp_path):
    import gzip

    data = bytearray(gzip.compress(_good_frame().to_csv(index=False).encode()))
    data[30:60] = b"\xff" * 30  # damage the deflate stream, keep the gzip header
    path = tmp_path / "people.csv.gz"
    path.write_bytes(bytes(data))
    line = bad("--data", path.name, "--cat-target", "sex")
    assert line.startswith("sharewise: error: people.csv.gz: truncated or corrupt gzip file"), line


@pytest.mark.parametrize("name", ["people.csv", "people.csv.gz"])
def test_text_not_in_the_encoding_names_the_encoding_key(bad, tmp_path, name):
    import gzip

    text = _rows(sex=lambda i: "FM"[i % 2], site=lambda i: "Zürich" if i == 6 else "Bern").encode("latin-1")
    (tmp_path / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    line = bad("--data", name, "--cat-target", "sex")
    assert line.startswith(f"sharewise: error: {name}: not valid utf-8 text (byte 0xfc on line 8)"), line
    assert "data.encoding" in line


def test_encoding_key_reads_latin1_text(tmp_path):
    from sharewise.config import DataConfig
    from sharewise.data.table import read_table

    path = tmp_path / "people.csv"
    path.write_bytes(_rows(sex=lambda i: "FM"[i % 2], site=lambda i: "Zürich").encode("latin-1"))
    assert set(read_table(path, DataConfig(encoding="latin-1"))["site"]) == {"Zürich"}


def test_unknown_encoding(bad, finished):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--set", "data.encoding=utf-9")
    assert "'data.encoding'" in line and "utf-9" in line


@pytest.mark.parametrize("name", ["people.csv", "people.tsv", "people.csv.gz"])
def test_duplicated_header_name(bad, tmp_path, name):
    """pandas would read the copy as ``sex.1`` and use the target as a feature."""
    import gzip

    sep = "\t" if ".tsv" in name else ","
    lines = [sep.join(["x1", "sex", "x2", "sex"])]
    lines += [sep.join([str(i), "FM"[i % 2], str(i * 2), "FM"[i % 2]]) for i in range(30)]
    text = ("\n".join(lines) + "\n").encode()
    (tmp_path / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    line = bad("--data", name, "--cat-target", "sex")
    assert line == f"sharewise: error: {name}: column 'sex' appears 2 times in the header (columns 2 and 4)"


def test_duplicated_header_name_three_times(bad, tmp_path):
    path = _csv(tmp_path, "sex,x, sex ,sex\n" + "".join(f"{'FM'[i % 2]},{i},F,M\n" for i in range(30)))
    line = bad("--data", path, "--cat-target", "sex")
    assert line == f"sharewise: error: {path}: column 'sex' appears 3 times in the header (columns 1, 3 and 4)"


def test_duplicated_parquet_column(bad, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 30
    sex = ["FM"[i % 2] for i in range(n)]
    pq.write_table(pa.table([list(range(n)), sex, list(range(n)), sex], names=["x1", "sex", "x2", "sex"]),
                   tmp_path / "people.parquet")
    line = bad("--data", "people.parquet", "--cat-target", "sex")
    assert line == "sharewise: error: people.parquet: column 'sex' appears 2 times in the header (columns 2 and 4)"


def test_duplicated_header_in_join_table(bad, tmp_path):
    main = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2], site=lambda i: "ab"[i % 2]), name="people.csv")
    _csv(tmp_path, "site,region,region\na,north,south\nb,east,west\n", name="sites.csv")
    line = bad("--data", main, "--cat-target", "sex", "--set", "data.join={path: sites.csv, on: site}")
    assert line == "sharewise: error: sites.csv: column 'region' appears 2 times in the header (columns 2 and 3)"


@pytest.mark.parametrize("marks, missing", [(lambda i: "train" if i % 5 else "test", "val"),
                                            (lambda i: "val" if i % 5 else "test", "train")])
def test_split_column_without_val_or_train_rows(bad, tmp_path, marks, missing):
    path = _csv(tmp_path, _rows(sex=lambda i: "FM"[i % 2], fold=marks))
    line = bad("--data", path, "--cat-target", "sex", "--split-col", "fold")
    assert line.startswith(f"sharewise: error: split column 'fold': the {missing} split would be empty"), line


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
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"data: {{path: {finished['data']}}}\n"
                   "tasks:\n  - {name: sex, kind: categorical}\n  - {name: sex, kind: numerical}\n")
    line = bad("--config", str(cfg))
    assert line == "sharewise: error: config key 'tasks': target 'sex' is given both as categorical and as numerical"


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
    line = bad("--config", path.name)
    assert path.name in line and "not found" in line


def test_yaml_syntax_error(bad, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1, 2\n  seed: 3\n")
    line = bad("--config", path.name)
    assert path.name in line and "YAML syntax error" in line and "line" in line


def test_config_not_a_mapping(bad, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- train\n- epochs\n")
    line = bad("--config", path.name)
    assert path.name in line and "mapping" in line and "list" in line


def test_config_binary_file(bad, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    line = bad("--config", path.name)
    assert path.name in line


def test_unknown_config_key_in_file(bad, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    line = bad("--config", path.name)
    assert "'train.epoch'" in line and "did you mean: epochs" in line


def test_unknown_config_section(bad, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    line = bad("--config", path.name)
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
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: fast\n")
    line = bad("--config", path.name)
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
    line = bad("--data", "nope.csv", "--cat-target", "sex", command="test")
    assert "not found" in line


def test_bad_input_on_train_command(bad):
    line = bad("--set", "train.epoch=3", command="train")
    assert "'train.epoch'" in line


@pytest.mark.parametrize("text, target, words", [
    ("x,sex\n", "sex", "no data rows"),
    ("x,sex\n1,F\n2,M\n", "sexx", "did you mean: sex"),
])
def test_real_process_prints_one_line(finished, tmp_path, text, target, words):
    """The real entry point, with its warnings filter, prints the one line and nothing else."""
    path = _csv(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "sharewise", "run", "--data", path, "--cat-target", target,
         "--out", str(finished["out"]), "--overwrite", *FAST],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("sharewise: error: "), proc.stderr
    assert path in proc.stderr and words in proc.stderr
    assert (finished["out"] / "results.json").read_bytes() == finished["results"]
    assert _snapshot(finished["out"]) == finished["files"]


def test_test_command_on_data_that_does_not_fit_the_trained_model(bad, finished, tmp_path):
    """The saved checkpoint is loaded before results.json is replaced (here: one more feature column)."""
    frame = _good_frame()
    frame["x2"] = frame["x1"] * 2
    frame.to_csv(tmp_path / "wider.csv", index=False)
    line = bad("--data", "wider.csv", "--cat-target", "sex", "--num-target", "age", "--id-col", "subject",
               command="test")
    assert str(finished["out"]) in line


def test_a_split_column_without_test_rows_runs_and_reports_no_test_examples(tmp_path):
    """An empty test split is allowed (with a warning): the run finishes, results.json is valid
    JSON with n = 0 and no metric values (it crashed taking the FLOPs' example from the test split)."""
    import json as _json

    import numpy as np
    import pandas as pd

    from sharewise.cli.main import main

    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame({"x": rng.normal(size=n), "y": rng.choice(["a", "b"], n),
                          "fold": np.where(np.arange(n) % 4 == 0, "val", "train")})
    path = tmp_path / "notest.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    with pytest.warns(Warning, match="no row is marked test"):
        assert main(["run", "--data", str(path), "--cat-target", "y", "--set", "data.split_col=fold", "--out",
                     str(out), "--no-progress", "--epochs", "1"]) == 0
    results = _json.loads((out / "results.json").read_text())
    assert results["tasks"]["y"]["test"]["n"] == 0 and results["tasks"]["y"]["val"]["n"] == 30
    assert results["flops"]["all_tasks"] > 0


# ----------------------------------------------------------------- numbers in the config


@pytest.mark.parametrize("setting, words", [
    ("train.epochs=true", "not a boolean"),  # YAML's true, which pydantic read as 1
    ("train.procs=yes", "not a boolean"),
    ("data.skip_rows=false", "not a boolean"),
    ("split.seed=true", "not a boolean"),
    ("train.exp_ids=[true]", "not a boolean"),
    ("train.epochs=2.5", "whole number"),
    ("optim.step_size=10.5", "whole number"),
    ("train.epochs=1e23", "<= 1000000000"),  # YAML 1.1 reads 1e23 as text
    ("train.epochs=1.0e+23", "<= 1000000000"),
    ("train.max_steps=10000000000", "<= 1000000000"),
    ("train.eval_every=2000000000", "<= 1000000000"),
    ("train.batch_size=100000000", "<= 10000000"),
    ("train.eval_batch_size=100000000", "<= 10000000"),
    ("train.epochs=0", "train.max_steps"),  # an untrained model would be selected
])
def test_integer_keys_refuse_booleans_fractions_and_absurd_values(bad, finished, setting, words):
    line = bad("--data", str(finished["data"]), "--cat-target", "sex", "--set", setting)
    key = setting.split("=")[0]
    assert f"'{key}" in line and words in line, line


def test_zero_epochs_through_the_flag_names_the_flag(finished, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--data", str(finished["data"]), "--cat-target", "sex", "--out", str(out), "--epochs", "0"])
    assert rc == 2 and not out.exists()
    assert capsys.readouterr().err == ("sharewise: error: --epochs (train.epochs): must be >= 1 unless "
                                       "train.max_steps is set (0 epochs would select an untrained model)\n")


def test_integer_keys_in_a_config_file_and_the_api(tmp_path):
    from sharewise.config import load_config, validate_config
    from sharewise.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3.0\n  batch_size: 1e3\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.batch_size) == (3, 1000)
    assert type(cfg.train.epochs) is int
    assert load_config(overrides=["train.epochs=0", "train.max_steps=5"]).train.max_steps == 5
    for raw in ({"train": {"epochs": True}}, {"train": {"threads": 1.5}}, {"train": {"gpus": [False]}},
                {"data": {"max_categories": True}}, {"train": {"epochs": 10**10}}):
        with pytest.raises(ConfigError, match=r"config key '(train|data)\."):
            validate_config(raw)


# ----------------------------------------------------------------- table content


def test_duplicated_ids_name_the_column_and_an_id(bad, tmp_path):
    frame = _good_frame()
    frame.loc[7, "subject"] = frame.loc[3, "subject"]
    frame.to_csv(tmp_path / "dups.csv", index=False)
    line = bad("--data", "dups.csv", "--cat-target", "sex", "--id-col", "subject")
    assert "dups.csv" in line and "id column 'subject'" in line and "'s003' on 2 rows" in line


def test_duplicated_ids_across_the_test_file(bad, finished, tmp_path):
    frame = _good_frame()
    frame.iloc[:40].to_csv(tmp_path / "main.csv", index=False)
    frame.iloc[[39, *range(40, 60)]].to_csv(tmp_path / "test.csv", index=False)
    line = bad("--data", "main.csv", "--test-data", "test.csv", "--cat-target", "sex", "--id-col", "subject")
    assert "id column 'subject'" in line and "'s039'" in line


def _encode(frame: pd.DataFrame, kind: str, train_rows: int):
    from sharewise.config import TaskSpec
    from sharewise.data.table import encode_targets

    spec = TaskSpec(name="y", kind=kind)
    return encode_targets(frame, [spec], np.arange(train_rows), "t.csv")


def test_constant_numerical_target_warns_naming_it():
    frame = pd.DataFrame({"y": [5.0] * 20 + [4.0, 6.0]})
    with pytest.warns(UserWarning, match=r"t.csv: numerical target 'y' is constant in the training split") as rec:
        _encode(frame, "numerical", 20)
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _encode(frame, "numerical", 22)  # varies: no warning


def test_categorical_target_with_mostly_singleton_classes_warns_naming_it():
    frame = pd.DataFrame({"y": ["a", "a", "b", "b", "c", "d", "e"]})
    with pytest.warns(UserWarning, match=r"categorical target 'y': 3 of its 5 classes have fewer than 2") as rec:
        _encode(frame, "categorical", 7)
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _encode(pd.DataFrame({"y": ["a", "a", "b", "b", "c", "c", "d"]}), "categorical", 7)  # 1 of 4: fine


def test_constant_target_is_one_warning_of_a_run(tmp_path):
    frame = _good_frame()
    frame["age"] = 50.0
    frame.to_csv(tmp_path / "flat.csv", index=False)
    with pytest.warns(UserWarning) as rec:
        assert main(["run", "--data", str(tmp_path / "flat.csv"), "--cat-target", "sex", "--num-target", "age",
                     "--out", str(tmp_path / "run"), *FAST]) == 0
    assert [str(w.message) for w in rec] == [
        f"{tmp_path / 'flat.csv'}: numerical target 'age' is constant in the training split (every known value "
        "is 50); there is nothing to learn for it"]


# ----------------------------------------------------------------- predict


def test_predict_refuses_an_unknown_output_format_before_reading_anything(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["predict", str(finished["out"]), "--data", "not-there.csv", "--out", "p.xlsx"])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0] == ("sharewise: error: --out p.xlsx: unsupported predictions format '.xlsx'; "
                        "use .csv, .tsv or .parquet")
    assert not (tmp_path / "p.xlsx").exists()
    assert _snapshot(finished["out"]) == finished["files"]


@pytest.mark.parametrize("name", ["p.csv", "p.tsv", "p.parquet", "P.TSV"])
def test_predict_output_format_follows_the_extension(finished, tmp_path, name):
    out = tmp_path / name
    assert main(["predict", str(finished["out"]), "--data", str(finished["data"]), "--out", str(out)]) == 0
    if name.lower().endswith(".parquet"):
        pred = pd.read_parquet(out)
    else:
        pred = pd.read_csv(out, sep="\t" if name.lower().endswith(".tsv") else ",")
    assert len(pred) == 60 and {"subject", "sex", "age", "sex:p[F]"} <= set(pred.columns)


def test_predict_warns_once_per_column_about_unseen_levels(finished, tmp_path):
    from sharewise.api import load_run

    frame = _good_frame(10).drop(columns=["sex", "age"])
    frame.loc[[1, 4, 6], "site"] = "zz"
    frame.loc[8, "site"] = None  # missing is not a level
    with pytest.warns(UserWarning) as rec:
        load_run(finished["out"]).predict(frame, source="new.csv")
    assert [str(w.message) for w in rec] == [
        "new.csv: column 'site': 3 row(s) with levels not seen in training (e.g. 'zz'); encoded as unknown"]
    frame.to_csv(tmp_path / "new.csv", index=False)
    with pytest.warns(UserWarning) as rec:
        assert main(["predict", str(finished["out"]), "--data", str(tmp_path / "new.csv"),
                     "--out", str(tmp_path / "p.csv")]) == 0
    assert len(rec) == 1 and "column 'site': 3 row(s) with levels not seen in training" in str(rec[0].message)


def test_predict_on_known_levels_does_not_warn(finished):
    from sharewise.api import load_run

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(finished["out"]).predict(_good_frame(10).drop(columns=["sex", "age"]))
