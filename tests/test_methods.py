import pytest
import torch

from sharewise.config import validate_config
from sharewise.engine.runner import prepare
from sharewise.errors import ConfigError
from sharewise.methods import get_method, methods


def test_registry_lists_and_suggests():
    table = methods()
    assert {"hard", "independent"} <= set(table)
    assert all(cls.description for cls in table.values())
    with pytest.raises(ConfigError, match="did you mean: hard"):
        get_method("hardd")


@pytest.mark.parametrize("method", ["hard", "independent"])
def test_models_output_every_task(method):
    ctx = prepare(validate_config({"method": {"name": method}, "backbone": {"width": 8, "depth": 1}}))
    x = ctx.data.examples.inputs[:5]
    out = ctx.model(x)
    assert {k: v.shape for k, v in out.items()} == {"digit": (5, 10), "parity": (5, 2), "large": (5, 2), "value": (5, 1)}
    groups = ctx.model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(ctx.model.parameters()))


def test_unknown_method_option():
    with pytest.raises(ConfigError, match="method.foo"):
        prepare(validate_config({"method": {"name": "hard", "foo": 1}}))


def test_round_robin_phase_trains_one_task_per_step(tmp_path):
    from sharewise.engine.logging import MetricsLogger
    from sharewise.engine.trainer import Trainer
    from sharewise.methods.base import Phase, Stretch

    ctx = prepare(validate_config({"backbone": {"width": 8, "depth": 1}, "train": {"progress": False}}))
    heads = {t: ctx.model.heads[t].weight.detach().clone() for t in ctx.model.task_names}
    phase = Phase("rr", [Stretch("train", "main", iters=2)], {"main": ctx.method.default_optim(["backbone", "heads"])},
                  cycles=1, eval_split=None, loop="round_robin")
    trainer = Trainer(ctx.model, ctx.data, run_dir=tmp_path, seed=0, batch_size=16, eval_batch_size=64,
                      device=ctx.device, logger=MetricsLogger(None), progress=False)
    trainer.run_phase(phase)
    from sharewise.seeding import round_order

    changed = [t for t in ctx.model.task_names if not torch.equal(heads[t], ctx.model.heads[t].weight)]
    first_two = [ctx.model.task_names[i] for i in round_order(0, 0, len(heads))[:2]]
    assert sorted(changed) == sorted(first_two)  # steps 0 and 1 trained round 0's first two tasks only


@pytest.mark.parametrize("names", [["n", "c", "d", "e", "m"], ["e", "n", "c"], ["c", "d", "e"]])
def test_task_heads_on_stacked_columns_equal_each_head_in_values_and_gradients(names):
    """``TaskHeads.columns``: heads of equal width as one batched product (with a subset of the
    columns, in any order, and heads of other widths alone) equal each head on its column."""
    from sharewise.methods.base import TaskHeads
    from sharewise.tasks import Task

    tasks = [Task("c", "categorical", classes=[0, 1, 2]), Task("n", "numerical"),
             Task("m", "multilabel", classes=["x", "y"]), Task("d", "categorical", classes=[0, 1, 2]),
             Task("e", "categorical", classes=[0, 1, 2])]
    torch.manual_seed(0)
    heads = TaskHeads(5, tasks)
    x = torch.randn(4, len(names), 5, requires_grad=True)
    out = heads.columns(x, names)
    assert list(out) == names
    weights = {t: torch.randn_like(out[t]) for t in names}
    sum((out[t] * weights[t]).sum() for t in names).backward()
    grads = {k: p.grad.clone() for k, p in heads.named_parameters() if p.grad is not None}
    g_x = x.grad.clone()
    heads.zero_grad(set_to_none=True)
    x.grad = None
    each = {t: heads[t](x[:, i]) for i, t in enumerate(names)}
    sum((each[t] * weights[t]).sum() for t in names).backward()
    for t in names:
        assert out[t].shape == each[t].shape
        torch.testing.assert_close(out[t], each[t])
    torch.testing.assert_close(g_x, x.grad)
    assert set(grads) == {k for k, p in heads.named_parameters() if p.grad is not None}
    for k, p in heads.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[k], p.grad)


def test_task_heads_on_one_input_equal_each_head_in_values_and_gradients():
    from sharewise.methods.base import TaskHeads
    from sharewise.tasks import Task

    tasks = [Task("c", "categorical", classes=[0, 1, 2]), Task("n", "numerical"),
             Task("m", "multilabel", classes=["x", "y"]), Task("d", "categorical", classes=[0, 1])]
    torch.manual_seed(0)
    heads = TaskHeads(5, tasks)
    x = torch.randn(4, 5, requires_grad=True)
    names = ["n", "c", "d"]  # any subset, any order
    grouped = heads.shared_input(x, names)
    assert list(grouped) == names
    weights = {t: torch.randn_like(grouped[t]) for t in names}
    sum((grouped[t] * weights[t]).sum() for t in names).backward()
    g_x = x.grad.clone()
    g_params = {k: p.grad.clone() for k, p in heads.named_parameters() if p.grad is not None}
    heads.zero_grad(set_to_none=True)
    x.grad = None
    each = {t: heads[t](x) for t in names}
    sum((each[t] * weights[t]).sum() for t in names).backward()
    for t in names:
        torch.testing.assert_close(grouped[t], each[t])
    torch.testing.assert_close(g_x, x.grad)
    assert set(g_params) == {k for k, p in heads.named_parameters() if p.grad is not None}
    assert not any(k.startswith("m.") for k in g_params)  # a head not asked gets no gradient
    for k, p in heads.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g_params[k], p.grad)
