"""AdaShare's policy diagnostics (issue 23): task distances on known policies, the split of the
policy-logit gradient into loss terms, and the diagnostics of a tiny run against its policy.json."""

import json

import pytest
import torch

from sharewise.backbones import backbone_factory
from sharewise.cli.main import main
from sharewise.data.base import InputSpec
from sharewise.methods.adashare import AdaShareNet
from sharewise.methods.adashare import diagnostics as D
from sharewise.methods.adashare import policy as P
from sharewise.tasks import Task, compute_losses

TASKS = [Task("a", "categorical", classes=[0, 1, 2]), Task("b", "numerical"), Task("c", "categorical", classes=[0, 1])]


def test_policy_distances_on_known_policies():
    probs = {"a": [0.9, 0.2, 0.6], "b": [0.1, 0.2, 0.4], "c": [0.5, 0.3, 0.6]}
    d = D.policy_distances(probs, ["a", "b", "c"])
    assert d["mean_abs"]["a"]["b"] == pytest.approx((0.8 + 0.0 + 0.2) / 3)
    assert d["mean_abs"]["b"]["c"] == pytest.approx((0.4 + 0.1 + 0.2) / 3)
    assert d["mean_abs"]["c"]["a"] == pytest.approx((0.4 + 0.1 + 0.0) / 3)
    assert d["mean_abs"]["a"]["a"] == 0.0
    # argmax paths: a 101, b 000, c 101 (0.5 executes)
    assert d["hamming_argmax"]["a"]["b"] == 2 and d["hamming_argmax"]["b"]["a"] == 2
    assert d["hamming_argmax"]["a"]["c"] == 0 and d["hamming_argmax"]["b"]["c"] == 2


def test_group_separation_is_between_minus_within():
    dist = {"a1": {"a2": 0.1, "b1": 0.5, "b2": 0.7}, "a2": {"a1": 0.1, "b1": 0.3, "b2": 0.5},
            "b1": {"a1": 0.5, "a2": 0.3, "b2": 0.3}, "b2": {"a1": 0.7, "a2": 0.5, "b1": 0.3}}
    sep = D.group_separation(dist, {"a1": "A", "a2": "A", "b1": "B", "b2": "B"})
    assert sep["within"] == pytest.approx(0.2) and sep["between"] == pytest.approx(0.5)
    assert sep["separation"] == pytest.approx(0.3)
    assert D.group_separation(dist, {"a1": "A", "a2": "A"})["separation"] is None


def _net():
    torch.manual_seed(0)
    factory = backbone_factory("mlp", {"widths": [8, 12, 12]}, InputSpec("vector", (6,)))
    net = AdaShareNet(factory(), TASKS, init_method="random")
    with torch.no_grad():
        net.policy.logits.normal_(0, 0.5)
    return net


def _task_loss(net, x, targets, policy, only=None):
    out = net(x, policy=policy)
    batch = {t: (out[t], *targets[t]) for t in net.task_names if only in (None, t)}
    return compute_losses([t for t in TASKS if t.name in batch], batch).sum()


def test_gradient_split_recovers_each_term():
    """The engine's total gradient on Φ minus the regularisers' gradients equals the gradient of the
    task losses alone, row t of it that of task t's loss alone; each term's norm as computed by hand."""
    net = _net()
    logits = net.policy.logits
    x = torch.randn(16, 6)
    g = torch.Generator().manual_seed(3)
    targets = {"a": (torch.randint(0, 3, (16,)), torch.ones(16, dtype=torch.bool)),
               "b": (torch.randn(16), torch.ones(16, dtype=torch.bool)),
               "c": (torch.randint(0, 2, (16,)), torch.ones(16, dtype=torch.bool))}
    policy = P.sample_policy(logits, 2.0, 2, g)  # window: the top 2 of 3 blocks
    aux_kwargs = {"window": 2, "sparsity_weight": 0.3, "sharing_weight": 0.7}
    aux_grads = {}
    for name, value in net.aux_losses(**aux_kwargs).items():
        aux_grads[name] = torch.autograd.grad(value, logits, retain_graph=True)[0]
    total = _task_loss(net, x, targets, policy) + sum(net.aux_losses(**aux_kwargs).values())
    (total_grad,) = torch.autograd.grad(total, logits, retain_graph=True)
    (task_grad,) = torch.autograd.grad(_task_loss(net, x, targets, policy), logits, retain_graph=True)
    parts = D.split_gradient(total_grad, aux_grads)
    torch.testing.assert_close(parts["task"], task_grad, rtol=1e-5, atol=1e-7)
    norms = D.gradient_norms(parts, net.task_names)
    for name in ("sparsity", "sharing"):
        assert float(aux_grads[name].norm()) > 0
        assert norms[name] == pytest.approx(float(aux_grads[name].norm()), rel=1e-6)
    for i, t in enumerate(net.task_names):
        (own,) = torch.autograd.grad(_task_loss(net, x, targets, policy, only=t), logits, retain_graph=True)
        assert own[[j for j in range(3) if j != i]].abs().max() == 0  # task t's loss reaches only row t
        assert norms[f"task/{t}"] == pytest.approx(float(own[i].norm()), rel=1e-5)
    assert torch.count_nonzero(task_grad[:, 0]) == 0  # below the window: no task gradient
    # a term that is off (λ = 0) has a zero gradient
    off = D.split_gradient(task_grad, {})
    assert float(off["sparsity"].norm()) == 0 and float(off["sharing"].norm()) == 0


def test_cycle_means_and_summary():
    acc = {}
    D.accumulate(acc, {"task": 1.0, "sparsity": 0.0, "sharing": 2.0})
    D.accumulate(acc, {"task": 3.0, "sparsity": 0.0, "sharing": 4.0})
    assert D.cycle_means(acc) == {"task": 2.0, "sparsity": 0.0, "sharing": 3.0}
    assert D.cycle_means({}) is None
    s = D.gradient_summary([{"grad_norm": {"task": 2.0, "sparsity": 0.0, "sharing": 3.0}},
                            {"grad_norm": {"task": 4.0, "sparsity": 0.0, "sharing": 1.0}}])
    assert s["mean"] == {"task": 3.0, "sparsity": 0.0, "sharing": 2.0} and s["dominant"] == "task"
    assert s["share"]["task"] == pytest.approx(0.6) and s["share"]["sparsity"] == 0.0


TINY = ["--no-progress", "--set", "train.threads=1", "--set", "backbone.width=16", "--set", "backbone.depth=2",
        "--set", "method.search_cycles=4", "--set", "method.cycle_iters=[2,3]", "--set", "method.warm_up_iters=4",
        "--set", "method.retrain_total_iters=4", "--set", "train.eval_every=4", "--set", "output.tensorboard=false",
        "--set", "method.curriculum_speed=1", "--exp-ids", "0"]


def test_tiny_run_diagnostics_match_policy_json(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "adashare", "--out", str(out), *TINY, "--set", "method.reg_w=0"]) == 0
    policy = json.loads((out / "policy.json").read_text())
    results = json.loads((out / "results.json").read_text())
    diag = results["adashare"]
    tasks = policy["tasks"]
    assert diag["exec_prob"] == policy["exec_prob"]
    assert [h["exec_prob"] for h in diag["exec_prob_history"]] == [h["exec_prob"] for h in policy["history"]]
    assert len(diag["exec_prob_history"]) == 4 and len(diag["grad_norm_history"]) == 4
    probs = torch.tensor([policy["exec_prob"][t] for t in tasks])
    for i, s in enumerate(tasks):
        for j, t in enumerate(tasks):
            assert diag["task_distance"]["mean_abs"][s][t] == pytest.approx(float((probs[i] - probs[j]).abs().mean()))
            assert diag["task_distance"]["hamming_argmax"][s][t] == int(((probs[i] >= 0.5) != (probs[j] >= 0.5)).sum())
    for row in diag["grad_norm_history"]:
        assert row["sparsity"] == 0.0  # λ_sp = 0
        assert row["task"] > 0
        # per step ‖task‖ = sqrt(Σ_t ‖row_t‖²); averaged over a cycle's steps (Minkowski) it lies
        # between sqrt(Σ_t mean_t²) and Σ_t mean_t
        rows = [row[f"task/{t}"] for t in tasks]
        assert sum(r * r for r in rows) ** 0.5 * (1 - 1e-6) <= row["task"] <= sum(rows) * (1 + 1e-6)
    # the first cycle's sharing gradient: equal initial logits and a window of one block, so the
    # sharing term's |Δp| is 0 everywhere at the first step (torch's |x|' at 0 is 0)
    assert diag["grad_norm_history"][0]["sharing"] >= 0
    assert any(r["sharing"] > 0 for r in diag["grad_norm_history"][1:])
    assert diag["grad_norm_summary"]["cycles"] == 4 and diag["grad_norm_summary"]["share"]["sparsity"] == 0.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("state/grad_norm_task" in r for r in records if r.get("phase") == "search")
    report = (out / "report.md").read_text()
    assert "### What the policy learned" in report and (out / "plots" / "adashare_grad_norms.png").stat().st_size > 1000
    d = diag["task_distance"]["mean_abs"][tasks[0]][tasks[1]]
    assert f"{d:.3f}" in report
