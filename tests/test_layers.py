"""The shared layers (``sharewise.layers``): Gumbel sampling, temperature schedules, per-task
replacement, the task context; and the engine's order of ``train.sync_bn`` before ``build``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharewise.layers import (PerTaskBatchNorm, TaskBatchNorm1d, current, exponential_temperature, gumbel_noise,
                              gumbel_sigmoid, gumbel_softmax, inverse_sqrt_temperature, per_task_norms,
                              replace_modules, single_task, straight_through, task_groups)


def _generator(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_gumbel_noise_forms():
    u = torch.rand((1000,), generator=_generator())
    assert torch.equal(gumbel_noise((1000,), _generator()), -torch.log(-torch.log(u.clamp_min(1e-20))))
    assert torch.equal(gumbel_noise((1000,), _generator(), "offset"), -torch.log(-torch.log(u + 1e-20) + 1e-20))
    with pytest.raises(ValueError, match="noise form"):
        gumbel_noise((2,), form="other")


def test_gumbel_softmax_soft_hard_and_gradient():
    logits = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]], requires_grad=True)
    noise = gumbel_noise((2, 3), _generator(3))
    soft = gumbel_softmax(logits, 0.7, noise=noise)
    assert torch.allclose(soft, torch.softmax((logits + noise) / 0.7, -1))
    hard = gumbel_softmax(logits, 0.7, noise=noise, hard=True)
    assert set(hard.flatten().tolist()) == {0.0, 1.0} and torch.equal(hard.argmax(-1), soft.argmax(-1))
    weights = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    (grad_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    assert torch.allclose(grad_hard, grad_soft)  # straight through: the soft sample's gradient


def test_gumbel_sigmoid_probability_ties_and_gradient():
    p0 = 0.8
    logits = torch.tensor([math.log(p0), math.log(1 - p0)]).expand(20000, 2).clone()
    z = gumbel_sigmoid(logits, 5.0, _generator(1))
    assert set(z.unique().tolist()) == {0.0, 1.0}
    assert z.mean().item() == pytest.approx(p0, abs=0.01)  # P(on) = σ(Φ_on − Φ_off), whatever τ
    tie = gumbel_sigmoid(torch.zeros(4, 2), 1.0, noise=torch.zeros(4, 2))
    assert torch.equal(tie, torch.ones(4))  # an exact tie counts as on
    logits = torch.tensor([[0.5, -0.5]], requires_grad=True)
    noise = gumbel_noise((1, 2), _generator(2), "offset")
    z = gumbel_sigmoid(logits, 2.0, noise=noise)
    on = torch.softmax((logits + noise) / 2.0, -1)[..., 0]
    (g_hard,) = torch.autograd.grad(z.sum(), logits)
    (g_soft,) = torch.autograd.grad(on.sum(), logits)
    assert torch.allclose(g_hard, g_soft) and g_hard.abs().sum() > 0
    with pytest.raises(ValueError, match="two logits"):
        gumbel_sigmoid(torch.zeros(3, 3), 1.0)


def test_straight_through_forward_is_exact():
    soft = torch.tensor([0.2999999, 0.7000001], requires_grad=True)
    hard = torch.tensor([0.0, 1.0])
    out = straight_through(hard, soft)
    assert torch.equal(out, hard)  # no hard + soft − soft rounding
    out.sum().backward()
    assert torch.equal(soft.grad, torch.ones(2))


def test_temperature_schedules():
    assert exponential_temperature(0) == 5.0 and exponential_temperature(2, 5.0, 0.5) == 1.25
    assert exponential_temperature(10, 5.0, 0.5, min_temp=1.0) == 1.0
    assert inverse_sqrt_temperature(0) == 50.0 and inverse_sqrt_temperature(3) == 25.0
    assert inverse_sqrt_temperature(9998) > 0.5 and inverse_sqrt_temperature(9999) == 0.5  # floor after 9,999 updates
    assert inverse_sqrt_temperature(10 ** 6) == 0.5


def test_replace_modules_and_per_task_norms():
    net = nn.Sequential(nn.Linear(3, 4), TaskBatchNorm1d(4), nn.Sequential(nn.ReLU(), TaskBatchNorm1d(4)))
    assert per_task_norms(net, 3) == 2
    assert [type(m).__name__ for m in net.modules()].count("PerTaskBatchNorm") == 2
    with single_task(2):
        assert current().task_ids == (2,)
        net.eval()(torch.randn(5, 3))
    assert current() is None
    assert replace_modules(net, lambda m: nn.Tanh() if isinstance(m, nn.ReLU) else None) == 1
    assert isinstance(net[2][0], nn.Tanh)


def test_per_task_norm_needs_a_task_context():
    layer = PerTaskBatchNorm(2, 3, 0)
    with pytest.raises(RuntimeError, match="task context"):
        layer(torch.randn(4, 3))
    with task_groups(2):
        assert layer(torch.randn(4, 3)).shape == (4, 3)


def test_sync_bn_is_converted_before_the_method_builds(monkeypatch, tmp_path):
    """With ``train.sync_bn`` on NCCL, the backbone the method gets already holds SyncBatchNorm:
    AdaShare then uses its per-task loop, not batched execution through a normalisation that
    would mix the tasks' statistics (converting after ``build`` did exactly that)."""
    from sharewise.config import validate_config
    from sharewise.engine import runner
    from sharewise.errors import ConfigError

    monkeypatch.setattr(runner.D, "init_from_env", lambda **_: None)
    monkeypatch.setattr(runner.D, "is_distributed", lambda: True)
    monkeypatch.setattr(runner.D, "backend", lambda: "nccl")
    monkeypatch.setattr(runner.D, "broadcast_object", lambda obj: obj)

    def cfg(**method):
        return validate_config({"method": {"name": "adashare", **method}, "backbone": {"width": 8, "depth": 2},
                                "tasks": [{"name": "digit", "kind": "categorical"}, {"name": "large", "kind": "categorical"}],
                                "train": {"sync_bn": True, "threads": 1, "progress": False},
                                "output": {"dir": str(tmp_path / "run")}})

    model = runner.prepare(cfg()).model
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(isinstance(m, TaskBatchNorm1d) for m in model.modules())
    assert model.execution == "loop"
    with pytest.raises(ConfigError, match="task_bn.*sync_bn"):
        runner.prepare(cfg(task_bn=True))
