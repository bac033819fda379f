"""Exact resume after SIGKILL, the clean stop on a non-finite loss, and Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sharewise.config import validate_config
from sharewise.engine.checkpoint import load_checkpoint
from sharewise.engine.runner import prepare, train
from sharewise.errors import TrainingError

FLAGS = ["--epochs", "3", "--no-progress", "--set", "train.threads=1", "--set", "train.batch_size=8",
         "--set", "train.checkpoint_every_s=0.0001", "--set", "train.log_every=1", "--set", "backbone.width=192",
         "--set", "backbone.dropout=0.1", "--set", "output.tensorboard=false"]


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sharewise", "train", "--out", str(out), *FLAGS, *extra]


def _last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            pass
    return max(steps)


def _env():
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref), check=True, env=_env(), capture_output=True)
    steps_per_epoch = json.loads((ref / "selection.json").read_text())["phases"][0]["steps"] // 3
    kill_after = steps_per_epoch + steps_per_epoch // 2  # inside the second epoch
    proc = subprocess.Popen(_train_cmd(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _last_step(killed) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "selection.json").exists()
    ck = load_checkpoint(killed / "checkpoints" / "train" / "last.pt")
    assert ck["state"]["step"] >= steps_per_epoch and ck["state"]["batch"] == 0
    assert ck["state"]["stretch_step"] > 0  # mid-epoch
    res = subprocess.run(_train_cmd(killed, "--resume"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resumed phase 'train' from" in res.stderr
    a = json.loads((ref / "selection.json").read_text())
    b = json.loads((killed / "selection.json").read_text())
    assert a["val"] == b["val"] and a["score"] == b["score"]
    wa = load_checkpoint(ref / "checkpoints/train/best.pt")["model"]
    wb = load_checkpoint(killed / "checkpoints/train/best.pt")["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la = load_checkpoint(ref / "checkpoints/train/last.pt")["model"]
    lb = load_checkpoint(killed / "checkpoints/train/last.pt")["model"]
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_nan_loss_stops_cleanly_and_keeps_checkpoint(tmp_path, monkeypatch):
    from sharewise.engine import trainer as trainer_module

    calls = {"n": 0}
    original = trainer_module.compute_losses

    def poisoned(tasks, outputs):  # the parity loss turns NaN from the 7th step on
        calls["n"] += 1
        losses = original(tasks, outputs)
        if calls["n"] > 6:
            losses = losses * torch.tensor([float("nan") if t == "parity" else 1.0 for t in outputs])
        return losses

    monkeypatch.setattr(trainer_module, "compute_losses", poisoned)
    cfg = validate_config({"backbone": {"width": 8, "depth": 1}, "train": {"epochs": 2, "progress": False,
                           "checkpoint_every_s": 0.0001}, "output": {"dir": str(tmp_path / "nan"), "tensorboard": False}})
    with pytest.raises(TrainingError) as err:
        train(prepare(cfg))
    msg = str(err.value)
    assert "non-finite loss" in msg and "'parity'" in msg and "phase 'train'" in msg and "step 7" in msg
    last = tmp_path / "nan" / "checkpoints" / "train" / "last.pt"
    assert msg.endswith(f"the last good checkpoint is kept: {last}")
    kept = load_checkpoint(last)
    assert kept["state"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_nan_before_any_checkpoint_says_none_was_written(tmp_path, capsys):
    from sharewise.cli.main import main

    out = tmp_path / "lr"
    rc = main(["train", "--out", str(out), "--epochs", "1", "--no-progress", "--set", "train.threads=1",
               "--set", "backbone.width=8", "--set", "output.tensorboard=false", "--set", "optim.lr=1e30"])
    err = capsys.readouterr().err
    assert rc == TrainingError.exit_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite" in lines[0]
    assert lines[0].endswith(f"no checkpoint was written yet in {out / 'checkpoints' / 'train'}: "
                             "lower optim.lr or check the data"), err
    assert not (out / "checkpoints" / "train" / "last.pt").exists()


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    out = tmp_path / "int"
    proc = subprocess.Popen(_train_cmd(out, "--set", "train.checkpoint_every_s=1000"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while _last_step(out) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert load_checkpoint(out / "checkpoints" / "train" / "last.pt")["state"]["step"] >= 5


def _metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_metrics_have_no_duplicate_rows_after_a_resume(tmp_path, monkeypatch, how):
    """A run stopped after a checkpoint (``kill``: an exception mid-epoch, after rows the checkpoint
    does not cover; ``ctrl-c``: the engine's stop flag, which saves) and resumed has each
    (phase, step, split) row once, with the values of an uninterrupted run."""
    from sharewise.engine import trainer as trainer_mod

    def cfg(out):
        return validate_config({"backbone": {"width": 8, "depth": 1},
                                "train": {"epochs": 3, "progress": False, "batch_size": 32, "threads": 1,
                                          "log_every": 1, "checkpoint_every_s": 1000},
                                "output": {"dir": str(out), "tensorboard": False}})

    train(prepare(cfg(tmp_path / "ref")))
    steps_per_epoch = json.loads((tmp_path / "ref" / "selection.json").read_text())["phases"][0]["steps"] // 3
    stop_at = steps_per_epoch + 3  # inside the second epoch; the last checkpoint is the first epoch's end
    original = trainer_mod.Trainer._optimizer_step

    class Killed(Exception):
        pass

    def stop(self, phase, stretch, state, *a, **k):
        result = original(self, phase, stretch, state, *a, **k)
        if state.step == stop_at:
            if how == "kill":
                raise Killed
            self._stop = True
        return result

    out = tmp_path / "stopped"
    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", stop)
    with pytest.raises(Killed if how == "kill" else trainer_mod.Interrupted):
        train(prepare(cfg(out)))
    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", original)
    assert max(r["step"] for r in _metric_rows(out)) > steps_per_epoch  # rows past the last checkpoint
    train(prepare(cfg(out)), resume=True)

    def keyed(rows):
        return {(r["phase"], r["step"], r["split"]): {k: v for k, v in r.items() if k != "time"}
                for r in rows if "split" in r}

    rows = _metric_rows(out)
    keys = [(r["phase"], r["step"], r["split"]) for r in rows if "split" in r]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert keyed(rows) == keyed(_metric_rows(tmp_path / "ref"))
    assert [r["event"] for r in rows if "event" in r] == ["resumed"]
