import json
import os
import subprocess
import sys
from pathlib import Path

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


def _cli_error(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of the CLI on bad input (argparse's own exit counted too)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.splitlines()


BAD_FLAGS = [  # (command line, words its one error line must hold)
    (["run", "--seed", "minus"], ["--seed", "'minus'", "not an integer"]),
    (["run", "--epochs", "-3"], ["--epochs", "train.epochs", ">= 0", "-3"]),
    (["run", "--epochs=-3"], ["--epochs", "train.epochs", ">= 0"]),
    (["run", "--procs", "0"], ["--procs", "train.procs", ">= 1"]),
    (["run", "--bogus"], ["--bogus", "unknown flag"]),
    (["run", "--xyz=1"], ["--xyz", "unknown flag", "sharewise run --help"]),
    (["train", "--epohcs", "3"], ["--epohcs", "unknown flag", "did you mean: --epochs"]),
    (["run", "--batch-size", "0"], ["--batch-size", "unknown flag"]),
    (["run", "--seed"], ["--seed", "expected one argument"]),
    (["run", "--cat_target"], ["--cat_target", "expected at least one argument"]),
    (["run", "-o"], ["error: -o: expected one argument"]),
    (["run", "--gpus", "a"], ["--gpus", "'a'", "not an integer"]),
    (["run", "stray"], ["'stray'", "unexpected argument"]),
    (["retrain", "--seeds", "1", "x"], ["--seeds", "'x'"]),
    (["demo", "--seed", "x"], ["--seed", "'x'", "not an integer"]),
    (["predict", "run_dir", "--data", "a.csv", "--out", "p.csv", "--skip-rows", "-1"], ["--skip-rows", ">= 0"]),
    (["predict"], ["RUN", "--data", "sharewise predict --help"]),
    (["export", "run_dir", "--out", "m.pt", "--overwrite=yes"], ["--overwrite", "'yes'"]),
    (["frob"], ["COMMAND", "'frob'"]),
]


@pytest.mark.parametrize("argv, words", BAD_FLAGS, ids=[" ".join(argv) for argv, _ in BAD_FLAGS])
def test_a_bad_flag_prints_one_line_naming_it(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].strip(), lines  # no usage block
    assert lines[0].startswith("sharewise: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_bad_value_through_set_names_the_key_not_the_earlier_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = _cli_error(capsys, "run", "--epochs", "5", "--set", "train.epochs=-1")
    assert code == 2 and lines == ["sharewise: error: config key 'train.epochs': must be >= 0 (got -1)"]
    code, lines = _cli_error(capsys, "run", "--set", "train.batch_size=0")
    assert code == 2 and lines == ["sharewise: error: config key 'train.batch_size': must be >= 1 (got 0)"]


@pytest.mark.parametrize("argv, words", BAD_FLAGS[:2], ids=["run --seed minus", "run --epochs -3"])
def test_a_bad_flag_from_the_command_line(argv, words, tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "sharewise", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sharewise: error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines


@pytest.mark.parametrize("argv, usage", [
    (["--help"], "usage: sharewise [-h]"),
    (["run", "--help"], "usage: sharewise run"),
    (["predict", "-h"], "usage: sharewise predict"),
])
def test_help_is_unchanged(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(usage) and "show this help message and exit" in out


class _Stop(Exception):
    """Raised by the stubbed ``runner.run``: the test only needs what ``prepare`` did."""


def _stop(ctx, **kwargs):
    raise _Stop


@pytest.mark.parametrize("entry, keep, applied", [
    ("api", None, False),
    ("api", True, True),
    ("api", False, False),
    ("cli", None, True),
    ("cli", False, False),
    ("demo", None, True),
])
def test_only_the_cli_keeps_freed_host_memory_by_default(entry, keep, applied, tmp_path, monkeypatch, capsys):
    import sharewise
    from sharewise.engine import runner

    calls = []
    monkeypatch.setattr(runner, "keep_freed_host_memory", lambda: calls.append("mallopt") or True)
    monkeypatch.setattr(runner, "run", _stop)
    out = tmp_path / "r"
    if entry == "api":
        train = {"epochs": 1, "progress": False, **({} if keep is None else {"keep_host_memory": keep})}
        with pytest.raises(_Stop):
            sharewise.fit({"backbone": {"width": 8, "depth": 1}, "train": train, "output": {"dir": str(out)}})
    elif entry == "cli":
        extra = [] if keep is None else ["--set", f"train.keep_host_memory={str(keep).lower()}"]
        assert main(["run", "--out", str(out), "--no-progress", "--set", "backbone.width=8", *extra]) == 1
        assert "_Stop" in capsys.readouterr().err  # reached runner.run, after prepare
    else:
        assert main(["demo", "--out", str(out), "--no-progress"]) == 1
    assert calls == (["mallopt"] if applied else [])
