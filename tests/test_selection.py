"""Model selection rules (engine/selection.py): the scale-free default `loss_ratio`, the summed
loss `objective` kept by name, the warning when the first evaluation is selected, and the rule
written into selection.json, results.json and report.md."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from sharewise.config import validate_config
from sharewise.engine.runner import prepare, run, train
from sharewise.engine.selection import candidate_base, loss_ratio, rule_description, selection_score
from sharewise.errors import ConfigError
from sharewise.tasks import Task

TASKS = [Task("shape", "categorical", classes=list("abc")), Task("bright", "categorical", classes=["d", "b"]),
         Task("size", "numerical")]


def _evals(losses: list[tuple[float, float, float]]) -> list[dict]:
    return [{t.name: {"loss": v} for t, v in zip(TASKS, row)} for row in losses]


def _pick(evals: list[dict], rule: str) -> int:
    """The evaluation the trainer keeps: the first with the highest score (strict improvement)."""
    scores = [selection_score(v, TASKS, None, rule, evals[0]) for v in evals]
    return scores.index(max(scores))


# a 3-class task whose loss starts high and rises a little, two tasks on smaller scales that halve:
# the summed loss stays lowest at the first evaluation, each task's ratio says the later one is better
TRAJECTORY = _evals([(1.10, 0.20, 0.30), (1.45, 0.10, 0.15)])


def test_loss_ratio_value_is_the_weighted_mean_of_ratios_to_the_first_evaluation():
    base, val = TRAJECTORY
    assert loss_ratio(val, base, TASKS) == pytest.approx(-(1.45 / 1.10 + 0.5 + 0.5) / 3)
    assert loss_ratio(base, base, TASKS) == pytest.approx(-1.0)
    weighted = [Task("shape", "categorical", classes=list("abc"), weight=2.0), *TASKS[1:]]
    assert loss_ratio(val, base, weighted) == pytest.approx(-(2 * 1.45 / 1.10 + 0.5 + 0.5) / 4)


def test_loss_ratio_ignores_a_scale_the_summed_loss_follows():
    assert _pick(TRAJECTORY, "objective") == 0  # summed: 1.60, then 1.70
    scaled = [{t: {"loss": m["loss"] * (10.0 if t == "shape" else 1.0)} for t, m in e.items()} for e in TRAJECTORY]
    # the objective follows the units of the biggest loss; the ratio's choice and values do not move
    assert _pick(scaled, "objective") == 0
    assert _pick(TRAJECTORY, "loss_ratio") == _pick(scaled, "loss_ratio") == 1
    for a, b in zip(TRAJECTORY, scaled):
        assert selection_score(a, TASKS, None, "loss_ratio", TRAJECTORY[0]) == pytest.approx(
            selection_score(b, TASKS, None, "loss_ratio", scaled[0]))


def test_a_task_without_validation_examples_is_left_out_and_none_scores_minus_infinity():
    base, val = TRAJECTORY
    val = {**val, "size": {"loss": math.nan}}
    assert loss_ratio(val, base, TASKS) == pytest.approx(-(1.45 / 1.10 + 0.5) / 2)
    nothing = {t.name: {"loss": math.nan} for t in TASKS}
    assert loss_ratio(nothing, base, TASKS) == -math.inf


def test_candidates_are_measured_from_the_mean_of_their_first_evaluations():
    from sharewise.methods.base import Candidate

    vals = _evals([(1.0, 0.4, 0.5), (0.8, 0.6, 0.3), (0.9, 0.2, 0.4)])
    cands = [Candidate(f"arch_{i}", f"arch_{i}/checkpoints/retrain/best.pt", f"arch_{i}", val=v) for i, v in enumerate(vals)]
    firsts = [(1.2, 0.7, 1.0), (1.0, 0.7, 0.8), (1.1, 0.7, 1.2)]
    phases = [{"phase": "search"}] + [{"phase": "retrain", "directory": f"arch_{i}",
                                       "first_val_loss": dict(zip(["shape", "bright", "size"], f))} for i, f in enumerate(firsts)]
    base = candidate_base(cands, phases)
    assert base["shape"]["loss"] == pytest.approx(1.1) and base["size"]["loss"] == pytest.approx(1.0)
    scores = [selection_score(c.val, TASKS, None, "loss_ratio", base) for c in cands]
    assert scores[2] == pytest.approx(-(0.9 / 1.1 + 0.2 / 0.7 + 0.4 / 1.0) / 3)
    assert max(range(3), key=scores.__getitem__) == 2
    # one candidate scores what its phase scored it; without summaries, the candidates' own mean
    (alone,) = cands[:1]
    assert selection_score(alone.val, TASKS, None, "loss_ratio", candidate_base([alone], phases)) == pytest.approx(
        -(1.0 / 1.2 + 0.4 / 0.7 + 0.5 / 1.0) / 3)
    assert candidate_base(cands, [])["bright"]["loss"] == pytest.approx(0.4)


def test_a_reference_still_selects_on_delta_mtl():
    val = {t.name: {"loss": 1.0, "accuracy": 0.6} for t in TASKS[:2]}
    ref = {t.name: {"val": {"accuracy": 0.5}} for t in TASKS[:2]}
    assert selection_score(val, TASKS[:2], ref, "loss_ratio", val) == pytest.approx(20.0)


def test_config_default_null_and_unknown_names():
    assert validate_config({}).train.selection_metric == "loss_ratio"
    assert validate_config({"train": {"selection_metric": None}}).train.selection_metric == "objective"
    assert validate_config({"train": {"selection_metric": "accuracy"}}).train.selection_metric == "accuracy"
    with pytest.raises(ConfigError, match=r"train.selection_metric.*'loss_ratios'.*did you mean: loss_ratio"):
        validate_config({"train": {"selection_metric": "loss_ratios"}})


def _digits(out, **train):
    return validate_config({"data": {"source": "digits"}, "backbone": {"name": "mlp", "width": 16, "depth": 1},
                            "train": {"epochs": 3, "progress": False, "threads": 1, **train},
                            "output": {"dir": str(out), "tensorboard": False}})


def _first_evaluation_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "selected checkpoint is the first of" in str(w.message)]


def test_a_model_that_never_improves_selects_the_first_evaluation_with_a_warning(tmp_path):
    cfg = _digits(tmp_path / "frozen")
    cfg.optim.lr = 1e-12  # the weights do not move: every evaluation scores the same, the first is kept
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        selection = train(prepare(cfg))
    phase = selection["phases"][0]
    assert phase["best_step"] == phase["steps"] // 3 and phase["evaluations"] == 3
    (message,) = _first_evaluation_warnings(record)
    assert f"first of 3 evaluations (step {phase['best_step']})" in message
    assert "train.selection_metric 'loss_ratio'" in message


def test_a_model_that_learns_selects_later_without_a_warning(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = run(prepare(_digits(tmp_path / "learns")))
    phase = results["selection"]["phases"][0]
    assert phase["best_step"] > phase["steps"] // 3
    assert _first_evaluation_warnings(record) == []
    rows = [json.loads(line) for line in (tmp_path / "learns" / "metrics.jsonl").read_text().splitlines()]
    scores = [r["selection_score"] for r in rows if r.get("split") == "val"]
    assert scores[0] == pytest.approx(-1.0) and max(scores) == pytest.approx(results["selection"]["score"])
    assert results["selection"]["rule"] == rule_description("loss_ratio")
    assert f"Rule: {rule_description('loss_ratio')}." in (tmp_path / "learns" / "report.md").read_text()


def test_objective_by_name_is_the_summed_validation_loss(tmp_path):
    results = run(prepare(_digits(tmp_path / "objective", selection_metric="objective")))
    val = results["selection"]
    assert val["rule"] == "validation objective −Σ_t λ_t L_t"
    assert val["score"] == pytest.approx(-sum(t["val"]["loss"] for t in results["tasks"].values()))


def _benchmarks():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import selection_evidence

    return selection_evidence


def test_the_evidence_scripts_rules_on_a_written_trajectory(tmp_path):
    """benchmarks/selection_evidence.py: which evaluation each rule keeps, from metrics.jsonl."""
    ev = _benchmarks()
    tasks = [Task("shape", "categorical", classes=list("abc")).to_dict(), Task("size", "numerical").to_dict()]
    (tmp_path / "data_state.json").write_text(json.dumps({"tasks": tasks}))
    # step: (shape loss, shape accuracy, size loss, size mae)
    points = {2: (1.10, 0.33, 1.00, 2.0), 4: (1.00, 0.60, 1.30, 2.2), 6: (1.20, 0.50, 0.60, 1.5)}
    rows = [{"phase": "train", "step": 2, "split": "train", "loss/total": 9.0}]
    for step, (sl, sa, zl, zm) in points.items():
        rows.append({"phase": "train", "step": step, "split": "val", "shape/loss": sl, "shape/accuracy": sa,
                     "size/loss": zl, "size/mae": zm, "selection_score": 0.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    alt = ev.alternatives(tmp_path)
    assert alt["evaluations"] == 3 and alt["steps"] == [2, 4, 6]
    # objective: −2.10, −2.30, −1.80; loss ratio: −1, −(1/1.1 + 1.3)/2, −(1.2/1.1 + 0.6)/2
    assert alt["objective"]["step"] == 6 and alt["loss_ratio"]["step"] == 6
    # Δ vs first: 0; (0.27/0.33 − 0.1)/2 = 0.36; (0.17/0.33 + 0.25)/2 = 0.38 -> step 6
    assert alt["delta_first"]["step"] == 6
    # ranks (1 = best): shape accuracy 3,1,2; size mae 2,3,1 -> means 2.5, 2, 1.5 -> step 6
    assert alt["mean_rank"]["step"] == 6 and alt["mean_rank"]["val"] == {"shape": 0.50, "size": 1.5}
    scores = ev.scores(tasks, ev.evaluations(tmp_path)[1], "delta_first")
    assert scores == pytest.approx([0.0, ((0.60 - 0.33) / 0.33 - 0.1) / 2, ((0.50 - 0.33) / 0.33 + 0.25) / 2])


def test_the_generated_shapes_are_balanced_and_seeded(tmp_path):
    import pandas as pd
    from PIL import Image

    ev = _benchmarks()
    a = pd.read_csv(ev.make_shapes(tmp_path / "a", n=12))
    b = pd.read_csv(ev.make_shapes(tmp_path / "b", n=12))
    assert a.equals(b) and list(a["shape"].value_counts()) == [4, 4, 4]
    assert a["size"].between(16 / 6, 16 / 2.5).all()
    img = Image.open(tmp_path / "a" / a["path"][0])
    assert img.size == (16, 16) and img.mode == "RGB"


def test_pooled_accuracy_weights_each_task_by_its_examples():
    from sharewise.engine.selection import pooled_accuracy

    val = {"shape": {"loss": 1.0, "accuracy": 0.5, "n": 30}, "bright": {"loss": 1.0, "accuracy": 1.0, "n": 10},
           "size": {"loss": 1.0, "mae": 2.0, "n": 40}}
    assert pooled_accuracy(val, TASKS) == pytest.approx((0.5 * 30 + 1.0 * 10) / 40)  # not the mean 0.75
    assert selection_score(val, TASKS, None, "pooled_accuracy") == pytest.approx(0.625)
    assert selection_score(val, TASKS, None, "accuracy") == pytest.approx(0.75)
    empty = {**val, "bright": {"loss": math.nan, "accuracy": math.nan, "n": 0}}  # a task without examples
    assert pooled_accuracy(empty, TASKS) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="pooled_accuracy"):
        selection_score({"size": val["size"]}, [TASKS[2]], None, "pooled_accuracy")
    assert "pooled" in rule_description("pooled_accuracy")
    cfg = validate_config({"data": {"path": "x.csv"}, "train": {"selection_metric": "pooled_accuracy"}})
    assert cfg.train.selection_metric == "pooled_accuracy"
