"""metrics.jsonl and TensorBoard: one series per (phase, split, name) against the phase's step."""

import json
from collections import defaultdict

import pytest

from sharewise.cli.main import main
from sharewise.engine.logging import MetricsLogger, tensorboard_tag


def _scalars(directory):
    """Every scalar series of the TensorBoard event files under ``directory``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_has_one_multi_point_series_per_metric(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-progress", "--epochs", "4", "--set", "backbone.width=16",
                 "--set", "backbone.depth=1", "--set", "train.threads=1", "--set", "train.log_every=5"]) == 0
    scalars = _scalars(out / "tensorboard")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r.get("split") == "val"]
    assert len(evaluations) == 4  # once per epoch
    # the validation accuracy of `digit` is one series with a point per evaluation, at the evaluation's step
    assert scalars["train/val/digit/accuracy"] == [(r["step"], pytest.approx(r["digit/accuracy"])) for r in evaluations]
    assert [s for s, _ in scalars["train/train/loss/digit"]] == [r["step"] for r in records
                                                                   if r.get("split") == "train" and "loss/digit" in r]
    # every logged (split, name) is exactly one tag, and no tag carries a cycle number
    expected = defaultdict(list)
    for r in records:
        for k, v in r.items():
            if k not in ("time", "phase", "step", "split", "cycle") and v is not None:
                expected[tensorboard_tag(r["phase"], r["split"], k)].append(r["step"])
    assert set(scalars) == set(expected)
    assert all([s for s, _ in scalars[tag]] == steps for tag, steps in expected.items())
    assert all(len(points) >= 4 for tag, points in scalars.items() if "/val/" in tag)
    assert not any(part.isdigit() for tag in scalars for part in tag.split("/"))


def test_adashare_candidates_write_their_own_curves(tmp_path):
    out = tmp_path / "ada"
    tiny = ["--no-progress", "--set", "train.threads=1", "--set", "backbone.width=16", "--set", "backbone.depth=2",
            "--set", "method.search_cycles=4", "--set", "method.cycle_iters=[2,2]", "--set", "method.warm_up_iters=4",
            "--set", "method.retrain_total_iters=6", "--set", "train.eval_every=2", "--set", "method.curriculum_speed=1"]
    assert main(["run", "--method", "adashare", "--out", str(out), "--exp-ids", "0", *tiny]) == 0
    search = _scalars(out / "tensorboard")
    assert len(search["search/val/digit/accuracy"]) >= 2
    retrain = _scalars(out / "arch_0" / "tensorboard")
    assert [s for s, _ in retrain["retrain/val/digit/accuracy"]] == [2, 4, 6]


def test_logger_tags_without_split(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in (1, 2, 3):
        logger.log("warmup", step, {"score": step / 10})
    logger.close()
    assert _scalars(tmp_path / "tensorboard") == {"warmup/score": [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)),
                                                                   (3, pytest.approx(0.3))]}
