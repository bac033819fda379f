"""Parameter allocation (Gumbel-matrix routing): the properties of spec §9 within the method's scope.

Router mathematics, aggregation, TF "same" padding, grouped components, the fixed baselines as the
networks they encode, the round-robin loop's order and streams, both Adam semantics, the
similarity of allocations, and a tiny end-to-end run from the command line.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharewise.layers import (ConvComponent, DenseComponent, GumbelMatrixRouter, IdentityComponent, PoolComponent,
                              RoutedLayer, avg_pool_same, combine, conv2d_same, gumbel_noise, gumbel_sigmoid,
                              inverse_sqrt_temperature, max_pool_same, same_padding)
from sharewise.methods.gumbel_matrix.network import (RoutedNetwork, all_ones_router, clusters_layers, gumbel_router,
                                                     identity_router, mlp_layers, mnist_layers, omniglot_layers)
from sharewise.methods.gumbel_matrix.similarity import cosine_similarity, family_separation, similarity_summary
from sharewise.tasks import Task


def _tasks(n: int, classes: int = 10) -> list[Task]:
    return [Task(f"t{i}", "categorical", classes=list(range(classes))) for i in range(n)]


def _mnist_net(router, T=4, C=4, aggregation="mean", **kw) -> RoutedNetwork:
    torch.manual_seed(0)
    routers = [router(T, C) for _ in range(3)]
    return RoutedNetwork(mnist_layers(1, C), routers, _tasks(T), input_shape=(1, 28, 28), aggregation=aggregation,
                         dropout=0.0, **kw)


# ------------------------------------------------------------------------------- router


def test_initial_probabilities_equal_p0_and_ties_count_as_active():
    router = GumbelMatrixRouter(3, 5, p0=0.97)
    assert torch.allclose(router.probabilities(), torch.full((3, 5), 0.97))
    tie = GumbelMatrixRouter(2, 3, p0=0.5)
    assert torch.equal(tie.allocation(), torch.ones(2, 3))  # p = 0.5 exactly: active
    with torch.no_grad():
        tie.logits[0, 1, 0] -= 1e-6  # just below 0.5
        tie.logits[1, 2, 0] += 1e-6
    assert tie.allocation().tolist() == [[1, 0, 1], [1, 1, 1]]


def test_straight_through_sample_is_binary_and_has_the_soft_sample_gradient():
    torch.manual_seed(1)
    logits = torch.randn(6, 2, requires_grad=True)
    noise = gumbel_noise((6, 2), torch.Generator().manual_seed(3), "offset")
    hard = gumbel_sigmoid(logits, 0.7, noise=noise, hard=True)
    assert set(hard.tolist()) <= {0.0, 1.0}
    y = torch.softmax((logits.detach() + noise) / 0.7, dim=-1)
    assert torch.equal(hard, (y[:, 0] >= y[:, 1]).float())
    weights = torch.randn(6)
    (hard * weights).sum().backward()
    g_hard = logits.grad.clone()
    logits.grad = None
    (gumbel_sigmoid(logits, 0.7, noise=noise, hard=False) * weights).sum().backward()
    torch.testing.assert_close(g_hard, logits.grad)


def test_temperature_schedule_and_its_floor():
    assert inverse_sqrt_temperature(0) == 50.0
    assert inverse_sqrt_temperature(3) == 25.0
    assert inverse_sqrt_temperature(9998) > 0.5
    assert inverse_sqrt_temperature(9999) == 0.5  # 50 / √10 000
    assert inverse_sqrt_temperature(150_000) == 0.5


def test_one_sample_per_connection_shared_by_the_whole_batch():
    net = _mnist_net(lambda T, C: gumbel_router(T, C, 0.5)).train()
    x = torch.rand(5, 1, 28, 28)
    batch = net(x, tasks=["t2"], step=7)["t2"]
    alone = torch.cat([net(x[i:i + 1], tasks=["t2"], step=7)["t2"] for i in range(5)])
    torch.testing.assert_close(batch, alone)
    other = net(x, tasks=["t2"], step=8)["t2"]  # another update, another sample
    assert not torch.allclose(batch, other)


def test_mean_aggregation_zero_case_and_gradients():
    f = torch.randn(2, 3, 4)  # (B, C, features)
    z = torch.tensor([1.0, 0.0, 1.0], requires_grad=True)
    h = combine(f, z)
    torch.testing.assert_close(h, (f[:, 0] + f[:, 2]) / 2)
    g = torch.randn_like(h)
    (h * g).sum().backward()
    expected = torch.stack([((f[:, j] - h.detach()) / 2 * g).sum() for j in range(3)])
    torch.testing.assert_close(z.grad, expected)
    one = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)  # n = 1: the clamp passes the gradient
    h1 = combine(f, one)
    (h1 * g).sum().backward()
    torch.testing.assert_close(one.grad, torch.stack([((f[:, j] - h1.detach()) * g).sum() for j in range(3)]))
    none = torch.zeros(3, requires_grad=True)
    h0 = combine(f, none)
    assert torch.equal(h0, torch.zeros(2, 4))
    (h0 * g).sum().backward()
    torch.testing.assert_close(none.grad, torch.stack([(f[:, j] * g).sum() for j in range(3)]))
    torch.testing.assert_close(combine(f, torch.ones(3), "sum"), f.sum(1))


def test_budget_penalty_zero_under_budget_and_exact_over_it():
    net = _mnist_net(lambda T, C: gumbel_router(T, C, 0.5), budget=0.75, budget_penalty=2.0)
    assert net.total_components == 12
    assert net.aux_losses(tasks=["t0"])["budget"].item() == 0.0  # 0.5 < 0.75
    with torch.no_grad():
        for r in net.routers:
            r.logits[1] = torch.tensor([math.log(0.9), math.log(0.1)])
    loss = net.aux_losses(tasks=["t1"])["budget"]
    assert loss.item() == pytest.approx(2.0 * (0.9 - 0.75), rel=1e-5)
    loss.backward()  # differentiable into the current task's logits only
    assert net.routers[0].logits.grad[1].abs().sum() > 0 and net.routers[0].logits.grad[0].abs().sum() == 0


def test_total_components_are_counted_from_the_routers_built():
    for C in (2, 4, 6):
        net = RoutedNetwork(mnist_layers(1, C), [gumbel_router(3, C, 0.5) for _ in range(3)], _tasks(3),
                            input_shape=(1, 28, 28), budget=0.5, budget_penalty=1.0)
        assert net.total_components == 3 * C
        with torch.no_grad():
            for r in net.routers:
                r.logits[0] = torch.tensor([0.0, -math.inf])  # every connection of t0 on: fraction 1
        assert net.aux_losses(tasks=["t0"])["budget"].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------- layers


def test_tf_same_padding_and_pooling_by_hand():
    assert same_padding(105, 3, 2) == (1, 1) and same_padding(105, 1, 2) == (0, 0)
    assert same_padding(4, 2, 2) == (0, 0) and same_padding(3, 2, 2) == (0, 1)  # the odd cell at the end
    assert same_padding(7, 7, 1) == (3, 3) and same_padding(6, 3, 2) == (0, 1)
    x = torch.ones(1, 1, 3, 3)
    out = conv2d_same(x, torch.ones(1, 1, 2, 2), None, stride=2)
    assert out[0, 0].tolist() == [[4.0, 2.0], [2.0, 1.0]]  # padding at the bottom/right only
    v = torch.arange(9.0).view(1, 1, 3, 3)
    avg = avg_pool_same(v, 2, 2)
    assert avg[0, 0].tolist() == [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]]  # padded cells excluded
    neg = -1 - v
    assert max_pool_same(neg, 2, 2)[0, 0].tolist() == [[-1.0, -3.0], [-7.0, -9.0]]  # −∞ padding never wins
    same = avg_pool_same(v, 3, 1)
    assert same.shape == v.shape and same[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 3 + 4) / 4)


@pytest.mark.parametrize("kind", ["conv_chain", "dense", "mixed"])
def test_grouped_components_equal_looped_in_outputs_and_gradients(kind):
    torch.manual_seed(0)
    if kind == "conv_chain":
        comps = [ConvComponent(6, [(8, (3, 3), 1, 4, True), (8, (1, 7), 2, 4, True)], eps=1e-6) for _ in range(3)]
        x = torch.randn(2, 6, 9, 9)
    elif kind == "dense":
        comps = [DenseComponent(5, 7) for _ in range(4)]
        x = torch.randn(3, 5)
    else:
        comps = [ConvComponent(4, [(4, (3, 3), 1, 4, True)]), PoolComponent("max", 3, 1), ConvComponent(4, [(4, (3, 3), 1, 4, True)]),
                 PoolComponent("avg", 3, 1), IdentityComponent()]
        x = torch.randn(2, 4, 6, 6)
    layer = RoutedLayer(comps)
    x.requires_grad_(True)
    for index in (None, [2, 0], [1]):
        grouped = layer(x, index)
        looped = layer.looped(x, index)
        torch.testing.assert_close(grouped, looped)
        weights = torch.randn_like(looped)
        g1 = torch.autograd.grad((grouped * weights).sum(), [x, *layer.parameters()], allow_unused=True)
        g2 = torch.autograd.grad((looped * weights).sum(), [x, *layer.parameters()], allow_unused=True)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)


def test_detached_components_get_no_parameter_gradient():
    torch.manual_seed(0)
    layer = RoutedLayer([DenseComponent(3, 2) for _ in range(3)])
    x = torch.randn(4, 3)
    out = layer(x, detached=[1])
    combine(out, torch.tensor([1.0, 0.0, 1.0])).sum().backward()
    assert layer.components[1].linear.weight.grad is None
    assert layer.components[0].linear.weight.grad is not None


def test_omniglot_and_clusters_networks_have_the_spec_shapes():
    torch.manual_seed(0)
    layers = omniglot_layers(1)
    net = RoutedNetwork(layers, [gumbel_router(20, 7, 0.97) for _ in range(8)], _tasks(20), input_shape=(1, 105, 105))
    assert [s[1] for s in net.out_shapes] == [53, 27, 27, 14, 7, 7, 4, 4]
    assert net.out_features == 768 and net.total_components == 56
    strided = [i for i, layer in enumerate(layers[1:]) if isinstance(layer, RoutedLayer)
               and isinstance(layer.components[6], ConvComponent)]
    assert len(strided) == 5
    clusters = RoutedNetwork(clusters_layers(3), [gumbel_router(40, 16, 0.5) for _ in range(3)], _tasks(40),
                             input_shape=(3, 32, 32))
    assert [s[1] for s in clusters.out_shapes] == [16, 8, 4] and clusters.out_features == 128
    assert clusters.total_components == 48
    out = clusters.eval()(torch.rand(2, 3, 32, 32), tasks=["t0", "t39"])
    assert out["t0"].shape == (2, 10)
    mnist = _mnist_net(lambda T, C: gumbel_router(T, C, 0.5))
    assert [s[1] for s in mnist.out_shapes] == [24, 10, 3] and mnist.out_features == 36


# ------------------------------------------------------------------------------- fixed routers


def _separate_mnist(net: RoutedNetwork, i: int, x: torch.Tensor, components=None, aggregate=None) -> torch.Tensor:
    """The network task i's path encodes, written out layer by layer."""
    h = x
    for layer in net.layers:
        if isinstance(layer, RoutedLayer):
            if aggregate is None:
                h = layer.components[i](h)
            else:
                h = aggregate(torch.stack([c(h) for c in layer.components], 1))
        else:
            h = layer(h)
    return net.heads[f"t{i}"](h)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_sharing_equals_separate_networks_in_outputs_and_gradients(mode):
    net = _mnist_net(identity_router)
    net.train(mode == "train")
    x = torch.rand(3, 1, 28, 28)
    for i in range(4):
        net.zero_grad(set_to_none=True)
        out = net(x, tasks=[f"t{i}"], step=0)[f"t{i}"]
        out.square().sum().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        net.zero_grad(set_to_none=True)
        ref = _separate_mnist(net, i, x)
        ref.square().sum().backward()
        torch.testing.assert_close(out, ref)
        assert set(grads) == {k for k, p in net.named_parameters() if p.grad is not None}
        assert all(f"components.{i}." in k or k.startswith(f"heads.t{i}.") for k in grads)  # nobody else's
        for k, p in net.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(grads[k], p.grad)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_shared_bottom_equals_a_dense_network_of_summed_or_averaged_components(aggregation):
    net = _mnist_net(all_ones_router, aggregation=aggregation).eval()
    x = torch.rand(2, 1, 28, 28)
    out = net(x)
    reduce = (lambda s: s.sum(1)) if aggregation == "sum" else (lambda s: s.mean(1))
    for i in range(4):
        torch.testing.assert_close(out[f"t{i}"], _separate_mnist(net, i, x, aggregate=reduce))


def test_inference_computes_only_selected_components_once_per_input():
    from sharewise.cost import count_flops

    net = _mnist_net(lambda T, C: gumbel_router(T, C, 0.5)).eval()
    x = torch.rand(1, 1, 28, 28)
    dense = count_flops(net, x, tasks=["t0"])
    with torch.no_grad():
        for r in net.routers:
            r.logits[:, 1:, 0] = -10.0  # every task selects component 0 only
    sparse = count_flops(net, x, tasks=["t0"])
    assert sparse < dense / 2
    heads = 4 * count_flops(net.heads["t0"], torch.zeros(1, 36))
    assert count_flops(net, x) - sparse == heads - heads // 4  # the shared path once, four heads


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_inference_with_mixed_patterns_equals_each_tasks_dense_path(aggregation):
    """Selected-only inference (patterns shared by some tasks, distinct for others, one task with
    nothing selected in a layer) equals every task's own path through all components weighted by
    its 0/1 pattern, for all tasks at once and one at a time."""
    net = _mnist_net(lambda T, C: gumbel_router(T, C, 0.5), aggregation=aggregation).eval()
    patterns = [torch.tensor([[1, 0, 1, 1], [1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 0]]),
                torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]),
                torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0]])]
    with torch.no_grad():
        for router, z in zip(net.routers, patterns):
            router.logits[..., 0] = torch.where(z.bool(), 1.0, -1.0)
            router.logits[..., 1] = 0.0
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        together = net(x)
        for i in range(4):
            h, r = x, 0
            for layer in net.layers:
                if isinstance(layer, RoutedLayer):
                    h = combine(layer.looped(h), patterns[r][i].float(), aggregation)
                    r += 1
                else:
                    h = layer(h)
            expected = net.heads[f"t{i}"](h)
            torch.testing.assert_close(together[f"t{i}"], expected)
            torch.testing.assert_close(net(x, tasks=[f"t{i}"])[f"t{i}"], expected)


def test_budget_with_a_fixed_router_is_a_one_line_error():
    from sharewise.config import validate_options
    from sharewise.errors import ConfigError
    from sharewise.methods.gumbel_matrix import FixedRouterOptions, SharedBottomOptions

    with pytest.raises(ConfigError, match=r"method.budget_penalty.*fixed router") as err:
        validate_options(SharedBottomOptions, {"budget_penalty": 1.0}, "method")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"method.budget\b"):
        validate_options(FixedRouterOptions, {"budget": 0.75}, "method")
    validate_options(SharedBottomOptions, {"budget_penalty": 0}, "method")  # off is fine


# ------------------------------------------------------------------------------- the loop


def test_round_robin_order_visits_each_task_once_per_round_seeded_and_reshuffled():
    from sharewise.seeding import round_order

    rounds = [round_order(0, r, 5) for r in range(20)]
    assert all(sorted(o) == list(range(5)) for o in rounds)
    assert len({tuple(o) for o in rounds}) > 5  # a fresh order every round
    assert rounds == [round_order(0, r, 5) for r in range(20)]  # seeded
    assert rounds != [round_order(1, r, 5) for r in range(20)]


def test_each_task_stream_is_reshuffled_every_epoch_and_keeps_the_last_batch():
    from sharewise.data.base import task_stream_index

    pool = np.arange(100, 110)
    epoch0 = [task_stream_index(pool, 0, b, 4, seed=0) for b in range(3)]
    assert [len(ix) for ix, _, _ in epoch0] == [4, 4, 2] and [e for _, e, _ in epoch0] == [0, 0, 0]
    assert sorted(np.concatenate([ix for ix, _, _ in epoch0]).tolist()) == pool.tolist()
    epoch1 = np.concatenate([task_stream_index(pool, 0, b, 4, seed=0)[0] for b in range(3, 6)])
    assert sorted(epoch1.tolist()) == pool.tolist() and epoch1.tolist() != np.concatenate([ix for ix, _, _ in epoch0]).tolist()
    other_task = np.concatenate([task_stream_index(pool, 1, b, 4, seed=0)[0] for b in range(3)])
    assert other_task.tolist() != np.concatenate([ix for ix, _, _ in epoch0]).tolist()  # independent streams
    # two ranks share an epoch's permutation: their batches together are the 1-process batch
    ranks = [task_stream_index(pool, 0, 0, 2, seed=0, rank=r, world_size=2)[0] for r in (0, 1)]
    assert sorted(np.concatenate(ranks).tolist()) == sorted(epoch0[0][0].tolist())


def _idx_config(tmp_path, method, **method_options):
    from sharewise.config import validate_config
    from test_images import make_idx

    path = make_idx(tmp_path / "idx", n_train=60, n_test=20)
    return validate_config({
        "data": {"source": "idx", "path": str(path), "task_views": {"a": {}, "b": {"rot90": 1}, "c": {"rot90": 2}}},
        "method": {"name": method, "network": "mlp", "widths": [6], **method_options},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "max_steps": 6, "batch_size": 8, "threads": 1, "progress": False},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False}})


def test_round_robin_loop_builds_only_the_visited_tasks_batch(tmp_path):
    from sharewise.engine.logging import MetricsLogger
    from sharewise.engine.runner import prepare
    from sharewise.engine.trainer import Trainer
    from sharewise.seeding import round_order

    ctx = prepare(_idx_config(tmp_path, "gumbel_matrix"))
    trainer = Trainer(ctx.model, ctx.data, run_dir=tmp_path / "t", seed=5, batch_size=8, eval_batch_size=64,
                      device=ctx.device, logger=MetricsLogger(None), progress=False)
    batches = trainer.round_robin_batches("train", 0)
    visited = [next(batches) for _ in range(9)]
    assert all(len(b) == 1 for b in visited)
    names = ctx.model.task_names
    assert [next(iter(b)) for b in visited] == [names[i] for r in range(3) for i in round_order(5, r, 3)]
    resumed = trainer.round_robin_batches("train", 4)  # mid-round: the same batches from update 4 on
    for b in visited[4:]:
        again = next(resumed)
        assert again.keys() == b.keys() and all(torch.equal(u, v) for u, v in zip(again[next(iter(b))], b[next(iter(b))]))


@pytest.mark.parametrize("skip_unused", [False, True])
def test_adam_semantics_for_parameters_without_gradient(tmp_path, skip_unused):
    """TF1 (default): another task's component still moves (zero gradient, Adam's momentum);
    ``adam_skip_unused``: it stays put."""
    from sharewise.engine.logging import MetricsLogger
    from sharewise.engine.runner import prepare
    from sharewise.engine.trainer import Trainer
    from sharewise.seeding import round_order

    ctx = prepare(_idx_config(tmp_path, "no_sharing", components="tasks", adam_skip_unused=skip_unused))
    model = ctx.model
    names = model.task_names
    first = names[round_order(0, 0, 3)[0]]
    moves = {}

    def component(task):
        return model.layers[1].components[names.index(task)].linear.weight.detach().clone()

    before = {t: component(t) for t in names}
    phase = ctx.method.phases(model, 1)[0]
    phase.max_steps, phase.eval_split = 4, None  # round 0, then the first task of round 1
    trainer = Trainer(model, ctx.data, run_dir=tmp_path / "t", seed=0, batch_size=8, eval_batch_size=64,
                      device=ctx.device, logger=MetricsLogger(None), progress=False)
    recorded = {}
    original = trainer._optimizer_step

    def recording(phase_, stretch, state, optimizers, schedulers, batch):
        task = next(iter(batch))
        snapshot = {t: component(t) for t in names}
        out = original(phase_, stretch, state, optimizers, schedulers, batch)
        recorded[state.step] = (task, {t: not torch.equal(snapshot[t], component(t)) for t in names})
        return out

    trainer._optimizer_step = recording
    trainer.run_phase(phase)
    task, moved = recorded[4]
    assert task == names[round_order(0, 1, 3)[0]] and moved[task]
    others = [t for t in names if t != task]
    assert all(moved[t] != skip_unused for t in others)
    assert recorded[1][1] == {t: (t == first) or False for t in names}  # before a task's first step: no momentum
    assert all(not torch.equal(before[t], component(t)) for t in names)


# ------------------------------------------------------------------------------- similarity


def test_similarity_of_hand_made_patterns_with_an_all_zero_row():
    patterns = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=float)
    s, zero = cosine_similarity(patterns)
    assert zero == [4]
    expected = np.array([[1, 1, 0, 0.5, 0], [1, 1, 0, 0.5, 0], [0, 0, 1, 0.5, 0], [0.5, 0.5, 0.5, 1, 0],
                         [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(s, expected)
    sep = family_separation(s[:4, :4], ["up", "up", "rot", "rot"])
    assert sep["within"] == pytest.approx((1 + 0.5) / 2) and sep["across"] == pytest.approx((0 + 0.5 + 0 + 0.5) / 4)
    summary = similarity_summary(["mnist", "mnist_2", "mnist_rot", "mnist_rot_2"], patterns[:4], patterns[:4] * 0.9)
    assert summary["families"] == ["mnist", "mnist", "mnist_rot", "mnist_rot"]
    assert summary["separation"]["binary"]["difference"] == pytest.approx(0.75 - 0.25)
    assert summary["all_zero"] == []


# ------------------------------------------------------------------------------- end to end


def _blocks_idx(folder, n_train=400, n_test=100):
    """28×28 images: class c is a bright 6×6 block at one of ten places, on faint noise."""
    from test_images import write_idx

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, k = 3 + 13 * (c // 5), 1 + 5 * (c % 5)
            images[i, r:r + 6, k:k + 5] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def test_command_line_run_learns_above_chance_and_writes_the_allocation(tmp_path, capsys):
    from sharewise.cli.main import main

    data = _blocks_idx(tmp_path / "idx")
    out = tmp_path / "run"
    rc = main(["run", "--config", "configs/gumbel_matrix/mnist_gumbel_matrix.yaml", "--out", str(out), "--no-progress",
               "--set", f"data.path={data}", "--set", "method.steps_per_task=50",
               "--set", "method.eval_every_rounds=25", "--set", "train.eval_batch_size=200"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    accuracies = [results["tasks"][t]["test"]["accuracy"] for t in ("mnist", "mnist_2", "mnist_rot", "mnist_rot_2")]
    assert min(accuracies) > 0.3, accuracies  # chance: 0.1
    allocation = json.loads((out / "allocation.json").read_text())
    assert allocation["total_components"] == 12 and len(allocation["layers"]) == 3
    assert results["allocation"]["similarity"]["separation"]["binary"] is not None
    assert "Parameter allocation" in (out / "report.md").read_text()


def test_budget_flags_with_a_fixed_router_are_one_line_errors(tmp_path, capsys):
    from sharewise.cli.main import main

    data = _blocks_idx(tmp_path / "idx", n_train=40, n_test=10)
    rc = main(["train", "--config", "configs/gumbel_matrix/mnist_gumbel_matrix_budget.yaml", "--method", "shared_bottom",
               "--budget", "0.75", "--budget-penalty", "1.0", "--out", str(tmp_path / "run"), "--no-progress",
               "--set", f"data.path={data}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "warning" not in line]
    assert rc == 2 and len(err) == 1 and "fixed router" in err[0], err
    assert not (tmp_path / "run").exists()
