"""A run directory that cannot be read back or written: unreadable checkpoints on ``--resume``, a
full disk, a read-only output, and the temporary files a killed checkpoint write leaves behind.

Each failure is one line on stderr naming the path, exit code 2, and leaves earlier files as they were.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sharewise import files
from sharewise.cli.main import main
from sharewise.engine.checkpoint import load_checkpoint, save_checkpoint
from sharewise.errors import RunDirError, WriteError

FAST = ["--epochs", "1", "--set", "backbone.width=8", "--set", "train.threads=1", "--no-progress",
        "--set", "output.tensorboard=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """A finished ``train`` run directory on a small table, and the flags that made it."""
    root = tmp_path_factory.mktemp("finished")
    rng = np.random.default_rng(0)
    n = 60
    pd.DataFrame({"subject": [f"s{i:03d}" for i in range(n)], "x1": rng.normal(size=n).round(3),
                  "sex": np.where(np.arange(n) % 2 == 0, "F", "M"),
                  "age": (40 + 10 * rng.normal(size=n)).round(1)}).to_csv(root / "people.csv", index=False)
    flags = ["--data", str(root / "people.csv"), "--cat-target", "sex", "--num-target", "age", "--id-col", "subject",
             *FAST]
    out = root / "run"
    assert main(["train", "--out", str(out), *flags]) == 0
    return {"out": out, "flags": flags}


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    """A copy of the finished run directory, for a test to damage (its config names the copy, as
    ``--resume`` would write it)."""
    copy = tmp_path / "run"
    shutil.copytree(finished["out"], copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace(str(finished["out"]), str(copy)))
    return copy


def _contents(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _one_error_line(capsys, *argv: str, code: int = 2) -> str:
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(list(argv))
    err = capsys.readouterr().err
    assert not caught, [str(w.message) for w in caught]
    assert rc == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sharewise: error: "), err
    return lines[0]


class _Executes:
    """A pickled object whose loading would call a function (what ``weights_only`` refuses)."""

    def __reduce__(self):
        return (print, ("EXECUTED-WHILE-LOADING",))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(b"\x17" + np.random.default_rng(1).bytes(4095))


def _executes_code(path: Path) -> None:
    torch.save({"model": _Executes()}, path)


# ----------------------------------------------------------------- unreadable checkpoints on --resume


@pytest.mark.parametrize("damage, reason", [
    (_empty, "empty file"),
    (_truncated, "truncated or corrupt"),
    (_random_bytes, "truncated or corrupt"),
    (_executes_code, "not a weights-only checkpoint (refused: it would execute code)"),
])
def test_resume_from_an_unreadable_checkpoint(finished, run_copy, capsys, damage, reason):
    last = run_copy / "checkpoints" / "train" / "last.pt"
    damage(last)
    before = _contents(run_copy)
    line = _one_error_line(capsys, "train", "--resume", "--out", str(run_copy), *finished["flags"])
    assert line.startswith(f"sharewise: error: {last}: unreadable checkpoint ({reason})"), line
    assert "weights_only" not in line and "EXECUTED-WHILE-LOADING" not in capsys.readouterr().out
    assert _contents(run_copy) == before  # the damaged checkpoint too: nothing replaced or removed


def test_load_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    _empty(path)
    with pytest.raises(RunDirError, match=r"last\.pt: unreadable checkpoint \(empty file\)"):
        load_checkpoint(path)


# ----------------------------------------------------------------- disk full, read-only output


def _full_disk(monkeypatch, *, only_checkpoints: bool = False) -> None:
    """Every low-level write (or only a checkpoint's: torch.save writes a zip, ``PK...``) fails with ENOSPC."""
    original = files._write

    def full(fh, data):
        if not only_checkpoints or bytes(memoryview(data)[:2]) == b"PK":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(fh, data)

    monkeypatch.setattr(files, "_write", full)


def test_disk_full_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "train" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    old = path.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(WriteError) as err:
        save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}})  # torch.save: RuntimeError [enforce fail]
    assert str(err.value) == f"cannot write {path}: no space left on device"
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left


def test_disk_full_during_training_is_one_line(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "new"
    _full_disk(monkeypatch, only_checkpoints=True)
    line = _one_error_line(capsys, "train", "--out", str(out), *finished["flags"])
    assert line.startswith(f"sharewise: error: cannot write {out / 'checkpoints'}"), line
    assert line.endswith(".pt: no space left on device"), line
    assert not list(out.rglob("*.tmp"))


def test_disk_full_on_resume_keeps_every_file(finished, run_copy, monkeypatch, capsys):
    before = _contents(run_copy)
    _full_disk(monkeypatch)
    line = _one_error_line(capsys, "train", "--resume", "--out", str(run_copy), *finished["flags"])
    assert line.startswith(f"sharewise: error: cannot write {run_copy}"), line
    assert line.endswith(": no space left on device"), line
    assert _contents(run_copy) == before


def _chmod_is_effective(path: Path) -> bool:
    """False when running as root, where a directory's mode does not stop a write."""
    return not os.access(path, os.W_OK)


def test_read_only_output_directory(finished, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "run"
    os.chmod(parent, 0o555)
    try:
        if _chmod_is_effective(parent):
            line = _one_error_line(capsys, "train", "--out", str(out), *finished["flags"])
            assert line == f"sharewise: error: cannot write {out}: permission denied", line
            assert not out.exists()
            return
        original = os.replace

        def read_only(src, dst, *args, **kwargs):
            if str(dst).startswith(str(out)):
                raise OSError(errno.EROFS, "Read-only file system", str(dst))
            return original(src, dst, *args, **kwargs)

        os.chmod(parent, 0o755)
        monkeypatch.setattr(os, "replace", read_only)
        line = _one_error_line(capsys, "train", "--out", str(out), *finished["flags"])
        assert line == f"sharewise: error: cannot write {out / 'config.yaml'}: read-only file system", line
        assert not list(out.rglob("*.tmp"))
    finally:
        os.chmod(parent, 0o755)


def test_run_directory_that_cannot_be_created(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro" / "run"
    original = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    line = _one_error_line(capsys, "train", "--out", str(out), *finished["flags"])
    assert line == f"sharewise: error: cannot write {out}: read-only file system", line


def test_overwrite_of_a_read_only_run_directory_removes_nothing(finished, run_copy, monkeypatch, capsys):
    before = _contents(run_copy)
    os.chmod(run_copy, 0o555)
    try:
        if not _chmod_is_effective(run_copy):  # root: the directory looks unwritable through os.access
            original = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == run_copy
                                else original(p, mode, *a, **k))
        line = _one_error_line(capsys, "train", "--overwrite", "--out", str(run_copy), *finished["flags"])
        assert line == f"sharewise: error: cannot write {run_copy}: permission denied", line
    finally:
        os.chmod(run_copy, 0o755)
    assert _contents(run_copy) == before


# ----------------------------------------------------------------- temporary files of a killed write

STALE = [".last.pt.a1b2c3d4.tmp", ".best.pt.x_y9k2mz.tmp"]
KEPT = [".last.pt.tmp", "notes.tmp", ".last.pt.ABCDEFGH.tmp", ".last.pt.abc.tmp", "last.pt.a1b2c3d4.tmp"]


@pytest.mark.parametrize("command", [["train", "--resume"], ["test", "--overwrite"]])
def test_stale_temporary_files_are_removed(finished, run_copy, capsys, command):
    folder = run_copy / "checkpoints" / "train"
    for name in STALE + KEPT:
        (folder / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    assert main([*command, "--out", str(run_copy), *finished["flags"]]) == 0, capsys.readouterr().err
    left = {p.name for p in folder.iterdir()}
    assert not left & set(STALE)
    assert set(KEPT) <= left


def test_remove_stale_temporaries_matches_atomic_write(tmp_path):
    files.atomic_write_text(tmp_path / "a" / "x.json", "{}")
    fd, name = files.tempfile.mkstemp(dir=tmp_path / "a", prefix=".x.json.", suffix=".tmp")  # as atomic_write does
    os.close(fd)
    killed = Path(name)
    (tmp_path / "a" / ".x.json.tmp").write_text("")
    assert files.remove_stale_temporaries(tmp_path) == [killed]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".x.json.tmp", "x.json"]


def _config_value(run_dir: Path, section: str, key: str):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())[section][key]


def test_resume_with_a_changed_config_is_refused_and_keeps_config_yaml(finished, run_copy, capsys):
    before = _contents(run_copy)
    flags = [f for f in finished["flags"]]
    flags[flags.index("--epochs") + 1] = "3"
    line = _one_error_line(capsys, "train", "--out", str(run_copy), *flags, "--set", "optim.lr=0.5", "--resume")
    assert line.startswith(f"sharewise: error: --resume: the config differs from the run's in {run_copy} "), line
    assert "train.epochs: 1 -> 3" in line and "optim.lr: " in line and "-> 0.5" in line, line
    assert line.endswith("rerun without --resume, or pass --allow-changed optim.lr train.epochs"), line
    assert _contents(run_copy) == before
    # one key allowed is not enough; both are, and config.yaml then says what the run was resumed with
    line = _one_error_line(capsys, "train", "--out", str(run_copy), *flags, "--set", "optim.lr=0.5", "--resume",
                           "--allow-changed", "train.epochs")
    assert "optim.lr" in line and "train.epochs" not in line.split("(")[1], line
    assert _contents(run_copy) == before
    assert main(["train", "--out", str(run_copy), *flags, "--set", "optim.lr=0.5", "--resume",
                 "--allow-changed", "train.epochs", "optim.lr"]) == 0
    assert _config_value(run_copy, "train", "epochs") == 3 and _config_value(run_copy, "optim", "lr") == 0.5


def test_resume_with_the_same_config_keeps_config_yaml(finished, run_copy):
    config = (run_copy / "config.yaml").read_bytes()
    # how the run is watched may change on --resume (train.threads, train.log_every, ...)
    assert main(["train", "--out", str(run_copy), *finished["flags"], "--set", "train.log_every=3", "--resume"]) == 0
    assert (run_copy / "config.yaml").read_bytes() == config


def test_resume_on_data_whose_split_differs_is_refused(finished, run_copy, capsys):
    split = run_copy / "split.csv"
    lines = split.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    old_split = row[header.index("split")]
    row[header.index("split")] = "val" if old_split != "val" else "train"
    lines[1] = ",".join(row)
    split.write_text("\n".join(lines) + "\n")  # as if the data the run started on were another
    before = _contents(run_copy)
    line = _one_error_line(capsys, "train", "--out", str(run_copy), *finished["flags"], "--resume")
    assert line.startswith(f"sharewise: error: --resume: the data's split differs from the run's in {split} "
                           f"(1 examples, e.g. id {row[header.index('id')]!r}: {row[header.index('split')]}"), line
    assert _contents(run_copy) == before


def test_data_state_records_a_fingerprint_of_the_data(finished):
    import hashlib
    import json

    state = json.loads((finished["out"] / "data_state.json").read_text())
    fingerprint = state["data_fingerprint"]
    assert fingerprint["split_sha256"] == hashlib.sha256((finished["out"] / "split.csv").read_bytes()).hexdigest()
    (entry,) = fingerprint["files"]
    assert entry["path"].endswith("people.csv") and entry["bytes"] > 0


def test_allow_changed_needs_resume(finished, tmp_path, capsys):
    line = _one_error_line(capsys, "train", "--out", str(tmp_path / "new"), *finished["flags"],
                           "--allow-changed", "train.epochs")
    assert line == "sharewise: error: --allow-changed: only with --resume (it names config keys a resumed run may change)"
    assert not (tmp_path / "new").exists()


_HOLDER = """
import fcntl, os, sys
with open(os.path.join(sys.argv[1], ".lock"), "a+") as fh:  # what a running command holds
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"{os.getpid()}\\n")
    fh.flush()
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold_lock(run_dir: Path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("command", [["train", "--overwrite"], ["train", "--resume"], ["test", "--overwrite"],
                                     ["run", "--overwrite"]])
def test_a_second_writer_of_a_run_directory_is_refused(finished, run_copy, capsys, command):
    """Another command holds the run directory's lock: a writer is refused with one line naming the
    directory and the holder's pid, and the holder's files are untouched; a SIGKILLed holder leaves
    no stale lock."""
    import signal

    holder = _hold_lock(run_copy)
    try:
        before = _contents(run_copy)
        line = _one_error_line(capsys, command[0], "--out", str(run_copy), *finished["flags"], *command[1:])
        assert line == (f"sharewise: error: run directory {run_copy} is in use by another sharewise command "
                        f"(process {holder.pid}); wait for it to finish or use another --out"), line
        assert _contents(run_copy) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    assert main(["test", "--out", str(run_copy), *finished["flags"], "--overwrite"]) == 0
    assert (run_copy / "results.json").exists() and not (run_copy / ".lock").exists()


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_open_files(tmp_path):
    import fcntl

    from sharewise.engine.runner import run_dir_lock

    out = tmp_path / "new" / "run"
    with run_dir_lock(out):
        with run_dir_lock(out):  # run: train then test, one hold
            assert (out / ".lock").read_text().strip() == str(os.getpid())
        with open(out / ".lock") as other, pytest.raises(BlockingIOError):  # another open file description
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not out.exists()  # created for the lock, nothing written: removed again
    out.mkdir(parents=True)
    with open(out / ".lock", "w") as other:  # a foreign holder
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunDirError, match=f"run directory {out} is in use"):
            with run_dir_lock(out):
                pass
