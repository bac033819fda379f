"""Bad input under ``--procs``/``--gpus``: refused once, in the launching process, before any
process starts, with the line one process gives."""

import os
import subprocess
import sys
import time

import pytest

from sharewise.cli.main import main
from sharewise.engine import distributed as D

FAST = ["--no-progress", "--epochs", "1", "--set", "backbone.width=8", "--set", "backbone.depth=1",
        "--set", "train.threads=1", "--set", "output.tensorboard=false"]


@pytest.fixture
def launches(monkeypatch):
    """The processes the CLI would start: recorded, none started (each "succeeds")."""
    calls = []
    monkeypatch.setattr(D, "launch", lambda argv, n, gpus=(): calls.append((list(argv), n)) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


def _both(capsys, args):
    """(exit code, stderr) of ``args`` in one process and with ``--procs 2``."""
    one = main(args)
    err_one = capsys.readouterr().err
    two = main([*args, "--procs", "2"])
    err_two = capsys.readouterr().err
    return (one, err_one), (two, err_two)


def _bad_inputs(tmp_path, people_csv):
    done = tmp_path / "done"
    assert main(["run", "--data", str(people_csv), "--cat-target", "sex", "--out", str(done), *FAST]) == 0
    trained = tmp_path / "trained"
    assert main(["train", "--data", str(people_csv), "--cat-target", "sex", "--out", str(trained), *FAST]) == 0
    return {
        "missing data file": ["run", "--data", str(tmp_path / "nope.csv"), "--cat-target", "sex"],
        "unknown target column": ["run", "--data", str(people_csv), "--cat-target", "sexx"],
        "bad method option": ["run", "--data", str(people_csv), "--cat-target", "sex", "--set", "method.nope=1"],
        "missing reference": ["run", "--data", str(people_csv), "--cat-target", "sex", "--reference",
                              str(tmp_path / "no-ref")],
        "outputs exist": ["run", "--data", str(people_csv), "--cat-target", "sex", "--out", str(done)],
        "resume with another config": ["train", "--data", str(people_csv), "--cat-target", "sex", "--out",
                                       str(trained), "--resume", "--set", "optim.lr=0.5"],
        "test before train": ["test", "--data", str(people_csv), "--cat-target", "sex", "--out",
                              str(tmp_path / "empty")],
        "test twice": ["test", "--data", str(people_csv), "--cat-target", "sex", "--out", str(done)],
        "retrain of a one-stage method": ["retrain", "--data", str(people_csv), "--cat-target", "sex", "--out",
                                          str(trained)],
        "repeated seed": ["run", "--data", str(people_csv), "--cat-target", "sex", "--seeds", "1", "1"],
    }


def test_bad_input_is_refused_before_any_process_starts(tmp_path, people_csv, launches, capsys):
    cases = _bad_inputs(tmp_path, people_csv)
    capsys.readouterr()
    for what, args in cases.items():
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "fresh")]
        (one, err_one), (two, err_two) = _both(capsys, [*args, *FAST])
        assert one == two == 2, (what, err_one, err_two)
        assert err_two == err_one, (what, err_one, err_two)  # warnings included, as one process shows them
        lines = [ln for ln in err_two.splitlines() if not ln.startswith("sharewise: warning: ")]
        assert len(lines) == 1 and lines[0].startswith("sharewise: error: "), (what, err_two)
        assert not launches, what
        assert not (tmp_path / "fresh").exists(), what


def test_good_input_starts_the_processes_with_the_same_command(tmp_path, people_csv, launches, capsys):
    args = ["run", "--data", str(people_csv), "--cat-target", "sex", "--out", str(tmp_path / "run"), *FAST,
            "--procs", "2"]
    assert main(args) == 0
    assert launches == [(args, 2)]
    assert not (tmp_path / "run").exists()  # the check wrote nothing; the started processes do it all
    assert capsys.readouterr().err == ""  # warnings and the chosen backbone are left to rank 0


def test_missing_data_file_under_procs_is_one_line_as_fast_as_one_process(tmp_path):
    """The real thing: two processes asked for, a missing data file. One line, exit 2, no process
    started (the old launcher reported it once per rank, after both had started)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = [sys.executable, "-m", "sharewise", "run", "--data", str(tmp_path / "missing.csv"), "--cat-target", "y",
            "--out", str(tmp_path / "run"), "--no-progress"]
    times, errs = [], []
    for extra in ([], ["--procs", "2"]):
        start = time.perf_counter()
        res = subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - start)
        assert res.returncode == 2
        errs.append(res.stderr)
    assert errs[1] == errs[0] and errs[0].count("\n") == 1 and "missing.csv" in errs[0]
    assert not (tmp_path / "run").exists()
    assert times[1] < 1.5 * times[0] + 5, times  # no process start (it took 2.7 times as long when each rank found it)
