"""Data-loading workers change when batches are built, never which."""

import json

import torch

from sharewise.cli.main import main
from sharewise.config import validate_config
from sharewise.data import build_data


def test_workers_give_the_same_batches():
    data = build_data(validate_config({})).data
    plain = list(data.batches("train", 32, shuffle=True, seed=3, epoch=1, start=2, augment=True))
    ahead = list(data.batches("train", 32, shuffle=True, seed=3, epoch=1, start=2, augment=True, workers=3))
    assert len(plain) == len(ahead)
    for (xa, ta), (xb, tb) in zip(plain, ahead):
        assert torch.equal(xa, xb) and all(torch.equal(ta[k][0], tb[k][0]) for k in ta)


def test_run_with_workers_matches(tmp_path):
    flags = ["--no-progress", "--epochs", "2", "--set", "backbone.width=16", "--set", "output.tensorboard=false"]
    assert main(["train", "--out", str(tmp_path / "a"), *flags]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), *flags, "--set", "train.workers=2"]) == 0
    a = json.loads((tmp_path / "a" / "selection.json").read_text())
    b = json.loads((tmp_path / "b" / "selection.json").read_text())
    assert a["val"] == b["val"]
