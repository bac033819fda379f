"""Batched search equals the per-task loop; tree execution equals per-task execution."""

import itertools
import platform

import pytest
import torch

from sharewise.backbones import backbone_factory
from sharewise.data.base import InputSpec
from sharewise.methods.adashare.execution import (batched_gated_features, distinct_prefixes, loop_gated_features,
                                 tree_features)

SPECS = {
    "mlp": (InputSpec("vector", (12,)), {"widths": [16, 16, 24, 24], "norm": "batch"}),
    "resnet2d": (InputSpec("image", (3, 10, 10)), {"widths": [4, 8], "blocks": [2, 2], "norm": "batch"}),
    # volumes: 3-D BatchNorm grouped by task, a strided block with a projection shortcut
    "resnet3d": (InputSpec("volume", (1, 6, 6, 6)), {"blocks": [2, 1], "widths": [4, 6], "stem": "small",
                                                      "block": "basic", "norm": "batch"}),
}


def _pair(name):
    spec, opts = SPECS[name]
    torch.manual_seed(0)
    a = backbone_factory(name, opts, spec)()
    b = backbone_factory(name, opts, spec)()
    b.load_state_dict(a.state_dict())
    return spec, a, b


def _soft_policy(T, L, shared, generator):
    logits = torch.randn(T, L, 2, generator=generator, requires_grad=True)
    soft = torch.softmax(logits, -1)
    pad = torch.tensor([1.0, 0.0]).expand(T, shared, 2)
    return logits, torch.cat([pad, soft[:, shared:]], dim=1)


@pytest.mark.parametrize("name", ["mlp", "resnet2d", "resnet3d"])
@pytest.mark.parametrize("shared", [0, 2])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("stack", [True, False])
def test_batched_equals_loop_outputs_gradients_and_running_stats(name, shared, hard, stack):
    """Stacked tasks (stack=True) and per-task passes after the shared part (stack=False, what
    auto execution picks for large activations) both equal the reference loop."""
    spec, net_a, net_b = _pair(name)
    g = torch.Generator().manual_seed(1)
    T, B = 3, 5
    x = torch.randn(B, *spec.shape, generator=g)
    L = net_a.num_blocks
    logits_a, policy_a = _soft_policy(T, L, shared, torch.Generator().manual_seed(2))
    logits_b, policy_b = _soft_policy(T, L, shared, torch.Generator().manual_seed(2))
    if hard:  # straight-through: exact 0/1 forward, soft gradients
        def st(p):
            h = torch.nn.functional.one_hot(p.argmax(-1), 2).to(p.dtype)
            return h + p - p.detach()
        policy_a, policy_b = st(policy_a), st(policy_b)
    weights = torch.randn(T, net_a.out_features, generator=g)
    loop = loop_gated_features(net_a.blocks, net_a.stem(x), policy_a, net_a.pool)
    batched = batched_gated_features(net_b.blocks, net_b.stem(x), policy_b, net_b.pool, shared_blocks=shared,
                                     stack=stack)
    for fa, fb in zip(loop, batched):
        assert torch.allclose(fa, fb, atol=1e-5)
    loss_a = sum((f * w).sum() for f, w in zip(loop, weights))
    loss_b = sum((f * w).sum() for f, w in zip(batched, weights))
    assert torch.allclose(loss_a, loss_b, atol=1e-4)
    loss_a.backward()
    loss_b.backward()
    assert torch.allclose(logits_a.grad, logits_b.grad, atol=1e-4)
    for (n, pa), pb in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-4, rtol=1e-4), n
    for (n, ba), bb in zip(net_a.named_buffers(), net_b.buffers()):
        assert torch.allclose(ba.float(), bb.float(), atol=1e-6), n  # running mean/var, batches tracked


def _policies(T, L, seed):
    g = torch.Generator().manual_seed(seed)
    random = {f"t{i}": tuple(int(v) for v in torch.randint(0, 2, (L,), generator=g)) for i in range(T)}
    return {
        "random": random,
        "all_execute": {f"t{i}": (1,) * L for i in range(T)},
        "all_skip": {f"t{i}": (0,) * L for i in range(T)},
        "disjoint": {f"t{i}": tuple(int(l % T == i) for l in range(L)) for i in range(T)},
    }


@pytest.mark.parametrize("name", ["mlp", "resnet2d", "resnet3d"])
@pytest.mark.parametrize("kind", ["random", "all_execute", "all_skip", "disjoint"])
def test_tree_equals_per_task_execution(name, kind):
    spec, net_a, net_b = _pair(name)
    net_a.eval(), net_b.eval()  # fixed statistics: per-task and tree passes see the same normalisation
    T = 4
    decisions = _policies(T, net_a.num_blocks, seed=3)[kind]
    x = torch.randn(6, *spec.shape, generator=torch.Generator().manual_seed(4))
    per_task = {}
    for t, d in decisions.items():
        h = net_a.stem(x)
        for block, u in zip(net_a.blocks, d):
            h = block(h) if u else block.shortcut(h)
        per_task[t] = net_a.pool(h)
    counts = {}
    tree = tree_features(net_b.blocks, net_b.stem(x), decisions, net_b.pool, counts=counts)
    w = {t: torch.randn(net_a.out_features, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(decisions)}
    for t in decisions:
        assert torch.allclose(per_task[t], tree[t], atol=1e-5)
    sum((per_task[t] * w[t]).sum() for t in decisions).backward()
    sum((tree[t] * w[t]).sum() for t in decisions).backward()
    for (n, pa), pb in zip(net_a.named_parameters(), net_b.parameters()):
        ga = pa.grad if pa.grad is not None else torch.zeros_like(pa)
        gb = pb.grad if pb.grad is not None else torch.zeros_like(pb)
        assert torch.allclose(ga, gb, atol=1e-4), n
    expected = distinct_prefixes(decisions)
    assert counts.get("F", 0) == expected["F"]  # every distinct executed prefix computed exactly once
    projections = sum(1 for (l, b) in enumerate(net_b.blocks) if not isinstance(b.shortcut, torch.nn.Identity))
    assert counts.get("S", 0) <= expected["skip"] and counts["leaves"] == len(set(decisions.values()))
    if kind == "all_execute":
        assert counts["F"] == net_a.num_blocks and counts.get("S", 0) == 0
    if kind == "all_skip":
        assert counts.get("F", 0) == 0 and counts.get("S", 0) == projections


def test_tree_skipped_block_gets_no_gradient():
    spec, net, _ = _pair("mlp")
    decisions = {"a": (1, 0, 1, 1), "b": (1, 0, 0, 1)}
    x = torch.randn(4, *spec.shape)
    out = tree_features(net.blocks, net.stem(x), decisions, net.pool)
    sum(f.sum() for f in out.values()).backward()
    assert all(p.grad is None for p in net.blocks[1].parameters())
    assert all(p.grad is not None for p in net.blocks[0].parameters())


# ----------------------------------------------------------------- on the AdaShare models

from sharewise.methods.adashare import policy as P  # noqa: E402
from sharewise.methods.adashare import AdaShareArchitecture, AdaShareNet  # noqa: E402
from sharewise.tasks import Task  # noqa: E402

TASKS = [Task("a", "categorical", classes=[0, 1, 2]), Task("b", "numerical"), Task("c", "categorical", classes=[0, 1]),
         Task("d", "categorical", classes=[0, 1])]


@pytest.mark.parametrize("name", ["mlp", "resnet2d", "resnet3d"])
@pytest.mark.parametrize("hard", [False, True])
def test_adashare_search_step_batched_equals_loop(name, hard):
    """Outputs, losses, gradients of weights and policy logits, and BatchNorm statistics."""
    spec, opts = SPECS[name]
    nets = []
    for execution in ("loop", "batched"):
        torch.manual_seed(0)
        nets.append(AdaShareNet(backbone_factory(name, opts, spec)(), TASKS, execution=execution))
    assert [n.execution for n in nets] == ["loop", "batched"]
    x = torch.randn(6, *spec.shape, generator=torch.Generator().manual_seed(5))
    targets = {"a": torch.tensor([0, 1, 2, 0, 1, 2]), "b": torch.randn(6), "c": torch.tensor([0, 1, 0, 1, 1, 0]),
               "d": torch.tensor([1, 1, 0, 0, 1, 0])}
    mask = torch.ones(6, dtype=torch.bool)
    L = nets[0].num_gated
    window = L - 1
    losses = []
    for net in nets:
        policy = P.sample_policy(net.policy.logits, 2.0, window, torch.Generator().manual_seed(7), hard)
        out = net(x, policy=policy, shared_blocks=L - window)
        loss = sum(t.compute_loss(out[t.name], targets[t.name], mask) for t in TASKS)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    assert torch.allclose(nets[0].policy.logits.grad, nets[1].policy.logits.grad, atol=1e-5)
    for (n, pa), pb in zip(nets[0].named_parameters(), nets[1].parameters()):
        if pa.grad is not None or pb.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-4, rtol=1e-4), n
    for (n, ba), bb in zip(nets[0].named_buffers(), nets[1].buffers()):
        assert torch.allclose(ba.float(), bb.float(), atol=1e-6), n


def test_adashare_architecture_runs_as_a_tree():
    spec, opts = SPECS["mlp"]
    torch.manual_seed(0)
    decisions = {"a": (1, 1, 0, 1), "b": (1, 1, 0, 0), "c": (0, 1, 1, 1), "d": (1, 1, 0, 1)}
    arch = AdaShareArchitecture(backbone_factory("mlp", opts, spec)(), TASKS, decisions).eval()
    calls = []
    for i, block in enumerate(arch.backbone.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    x = torch.randn(3, *spec.shape)
    out = arch(x)
    # distinct executed prefixes: 1, 11, 110->(skip), 1101; 0, 01, 011, 0111 -> blocks evaluated 6 times
    assert len(calls) == distinct_prefixes(decisions)["F"] == 6
    for t, d in decisions.items():  # each task alone equals its own path
        assert torch.allclose(arch(x, tasks=[t])[t], out[t], atol=1e-6)


@pytest.mark.parametrize("dims", [0, 2, 3])
@pytest.mark.parametrize("momentum,affine,track", [(0.1, True, True), (None, True, True), (0.3, False, True),
                                                   (0.1, True, False)])
@pytest.mark.parametrize("announced", [False, True])
def test_task_groups_norm_equals_separate_calls_in_task_order(dims, momentum, affine, track, announced):
    """An interleaved (B·T, C, ...) batch normalised once equals T separate calls, one per task,
    in outputs, gradients of x, γ and β, and the running statistics they leave; the same when
    the layer is announced to the context (γ, β and statistics prepared per width)."""
    from sharewise.layers import TaskBatchNorm1d, TaskBatchNorm2d, TaskBatchNorm3d, task_groups

    cls = {0: TaskBatchNorm1d, 2: TaskBatchNorm2d, 3: TaskBatchNorm3d}[dims]
    T, B, C = 3, 4, 5
    g = torch.Generator().manual_seed(0)
    layers = [cls(C, momentum=momentum, affine=affine, track_running_stats=track) for _ in range(2)]
    if affine:
        with torch.no_grad():
            layers[0].weight.copy_(torch.rand(C, generator=g) + 0.5)
            layers[0].bias.copy_(torch.randn(C, generator=g))
    if track:
        layers[0].running_mean.copy_(torch.randn(C, generator=g))
        layers[0].num_batches_tracked.fill_(2)
    layers[1].load_state_dict(layers[0].state_dict())
    x = (torch.randn(B, T, C, *([3] * dims), generator=g) * torch.arange(1, T + 1).view(1, T, *([1] * (dims + 1))))
    xa = x.clone().requires_grad_()
    xb = x.reshape(B * T, C, *x.shape[3:]).clone().requires_grad_()
    separate = torch.stack([layers[0](xa[:, t]) for t in range(T)], dim=1)  # task order
    with task_groups(T, layers=[layers[1]] if announced else ()):
        grouped = layers[1](xb)
    assert torch.allclose(separate.reshape_as(grouped), grouped, atol=1e-5)
    w = torch.randn(grouped.shape, generator=g)
    (separate.reshape_as(grouped) * w).sum().backward()
    (grouped * w).sum().backward()
    assert torch.allclose(xa.grad.reshape_as(xb.grad), xb.grad, atol=1e-5)
    for pa, pb in zip(layers[0].parameters(), layers[1].parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5)
    for (name, ba), bb in zip(layers[0].named_buffers(), layers[1].buffers()):
        assert torch.allclose(ba.float(), bb.float(), atol=1e-6), name


def test_announced_norms_called_twice_or_not_at_all_keep_separate_call_statistics():
    """Announced layers of one width share a statistics buffer: a layer called twice in the
    context (a shared module) gets both updates, call by call in task order, and an announced
    layer that is never called keeps its statistics and gets no gradient."""
    from sharewise.layers import TaskBatchNorm1d, task_groups

    T, B, C = 3, 4, 6
    g = torch.Generator().manual_seed(3)
    ref, twice, idle = (TaskBatchNorm1d(C) for _ in range(3))
    with torch.no_grad():
        ref.weight.copy_(torch.rand(C, generator=g) + 0.5)
    twice.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, C, generator=g) * 3 + 1
    first = [ref(x[:, t]) for t in range(T)]  # separate calls: the first call for every task, then the second
    second = [ref(h * 2 + 1) for h in first]
    with task_groups(T, layers=[twice, idle]):
        grouped = twice(twice(x.reshape(B * T, C)) * 2 + 1)
    assert torch.allclose(torch.stack(second, 1).reshape(B * T, C), grouped, atol=1e-5)
    for (name, a), b in zip(ref.named_buffers(), twice.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert int(twice.num_batches_tracked) == 2 * T
    assert torch.equal(idle.running_mean, torch.zeros(C)) and torch.equal(idle.running_var, torch.ones(C))
    assert int(idle.num_batches_tracked) == 0
    grouped.sum().backward()
    assert idle.weight.grad is None or torch.count_nonzero(idle.weight.grad) == 0


def test_auto_execution_stacks_small_activations_and_the_first_window_only():
    """``stack=None`` (auto): per-task passes where T copies of a block's input exceed the limit,
    except where no block is left after the first one in the window (pooling and heads only);
    stacked results come back as one (B, T, D) tensor with ``columns=True``."""
    import sharewise.methods.adashare.execution as E

    spec, net_a, _ = _pair("mlp")
    T, B = 3, 4
    x = torch.randn(B, *spec.shape, generator=torch.Generator().manual_seed(4))
    L = net_a.num_blocks
    h0 = net_a.stem(x)
    kept = E.STACK_LIMIT
    try:
        out = {}
        for limit in (T * h0.numel(), T * h0.numel() - 1):
            E.STACK_LIMIT = limit
            for shared in (0, L - 1):
                _, policy = _soft_policy(T, L, shared, torch.Generator().manual_seed(5))
                out[limit, shared] = batched_gated_features(net_a.blocks, h0, policy, net_a.pool, shared_blocks=shared,
                                                            stack=None, columns=True)
                loop = loop_gated_features(net_a.blocks, h0, policy, net_a.pool)
                got = out[limit, shared]
                got = list(got.unbind(1)) if isinstance(got, torch.Tensor) else got
                for fa, fb in zip(loop, got):
                    assert torch.allclose(fa, fb, atol=1e-5)
    finally:
        E.STACK_LIMIT = kept
    small, large = T * h0.numel(), T * h0.numel() - 1
    assert isinstance(out[small, 0], torch.Tensor) and out[small, 0].shape == (B, T, net_a.out_features)
    assert isinstance(out[large, 0], list) and len(out[large, 0]) == T  # per-task passes
    assert isinstance(out[large, L - 1], torch.Tensor)  # first window: nothing runs per task


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tree_inference_holds_one_path_and_its_pending_branches_not_a_whole_level():
    """Depth first with the heads applied at each leaf: 8 tasks on disjoint paths (each executes
    one block, skips the rest) need about one task's activations at a time, not one per leaf."""
    from sharewise.engine.device import peak_host_bytes

    T, width, batch = 8, 256, 1024  # one activation: 1 MiB
    spec = InputSpec("vector", (width,))
    tasks = [Task(f"t{i}", "numerical") for i in range(T)]
    decisions = {f"t{i}": tuple(int(l == i) for l in range(T)) for i in range(T)}
    torch.manual_seed(0)
    arch = AdaShareArchitecture(backbone_factory("mlp", {"widths": [width] * T, "norm": "batch"}, spec)(), tasks,
                                decisions).eval()
    x = torch.randn(batch, width)

    def infer():
        with torch.no_grad():
            return arch(x)

    out = infer()
    assert sorted(out) == sorted(decisions) and all(v.shape == (batch, 1) for v in out.values())
    activation = batch * width * 4
    peak = peak_host_bytes(infer)
    # level by level, with every leaf's features kept for the heads, it was 11 activations; the
    # stem's output, one block's temporaries and the current path are about 5
    assert peak < 7 * activation, peak / activation


@pytest.mark.parametrize("name", ["mlp", "resnet2d"])
def test_tree_depth_first_and_level_by_level_walks_agree_in_outputs_and_running_statistics(name):
    """Without gradients the tree is walked depth first, with them level by level: the same
    outputs, the same counts, and every layer's inputs in the same order (running statistics
    equal after a training-mode pass)."""
    spec, net_a, net_b = _pair(name)
    L = net_a.num_blocks
    decisions = _policies(5, L, 11)["random"]
    x = torch.randn(4, *spec.shape, generator=torch.Generator().manual_seed(12))
    counts_a, counts_b = {}, {}
    level = tree_features(net_a.blocks, net_a.stem(x), decisions, net_a.pool, counts=counts_a)
    with torch.no_grad():
        depth = tree_features(net_b.blocks, net_b.stem(x), decisions, net_b.pool, counts=counts_b)
    assert list(level) == list(depth) == list(decisions)
    for t in decisions:
        torch.testing.assert_close(level[t].detach(), depth[t])
    assert counts_a == counts_b
    for (n, ba), bb in zip(net_a.named_buffers(), net_b.buffers()):
        assert torch.equal(ba, bb), n
