"""The soft-sharing methods (taan, cross_stitch, mmoe, soft_order; mrn and dmtrl on conv trunks): properties beyond their layers,
the whole-batch hook for per-task data, and the published Youtube-8M models' parameter counts."""

from __future__ import annotations

import pytest
import torch

from sharewise.methods.cross_stitch import CrossStitchModel, CrossStitchOptions
from sharewise.methods.dmtrl import DMTRLModel, DMTRLOptions, SingleTaskModel
from sharewise.methods.mmoe import MMoEModel, MMoEOptions
from sharewise.methods.mrn import MRNModel, MRNOptions
from sharewise.methods.soft_order import SoftOrderModel, SoftOrderOptions
from sharewise.methods.taan import TAANModel, TAANOptions
from sharewise.tasks import Task

D_IN = 7


def _tasks(classes=(3, 2, 4)):
    return [Task(f"t{i}", "multilabel", classes=list(range(c))) for i, c in enumerate(classes)]


def _models():
    tasks = _tasks()
    torch.manual_seed(0)
    return {
        "taan": TAANModel(D_IN, tasks, TAANOptions(widths=[6, 5], num_basis=3, regularizer="distance")),
        "taan_bn": TAANModel(D_IN, tasks, TAANOptions(widths=[6, 5], num_basis=3, bn=True)),
        "mmoe": MMoEModel(D_IN, tasks, MMoEOptions(widths=[6, 5], num_experts=3)),
        "soft_order": SoftOrderModel(D_IN, tasks, SoftOrderOptions(widths=[6, 6, 6])),
        "soft_order_task_encoders": SoftOrderModel(D_IN, tasks, SoftOrderOptions(widths=[6, 6, 6],
                                                                                 encoder="task_specific")),
    }


def _loss(outputs, targets):
    return sum(torch.nn.functional.binary_cross_entropy_with_logits(outputs[t], targets[t]) for t in outputs)


@pytest.mark.parametrize("name", ["taan", "taan_bn", "mmoe", "soft_order", "soft_order_task_encoders"])
@pytest.mark.parametrize("sizes", [(5, 5, 5), (5, 3, 4)], ids=["equal", "unequal"])
def test_whole_batch_hook_equals_one_call_per_task(name, sizes):
    """Methods without cross-task mixing give the same outputs, losses and gradients whether a
    per-task batch runs task by task (``forward(x_t, tasks=[t])``) or in one ``forward_all_tasks``
    (TAAN with BatchNorm and unequal batch sizes falls back to one call per task)."""
    model = _models()[name].train()
    gen = torch.Generator().manual_seed(1)
    batches = {t.name: torch.randn(n, D_IN, generator=gen) for t, n in zip(model.tasks, sizes)}
    targets = {t.name: (torch.rand(n, t.out_features, generator=gen) > 0.5).float() for t, n in zip(model.tasks, sizes)}

    def run(fn):
        model.zero_grad(set_to_none=True)
        out = fn()
        loss = _loss(out, targets)
        loss.backward()
        return out, loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    state = {k: v.clone() for k, v in model.state_dict().items()}
    out_a, loss_a, grad_a = run(lambda: {t: model(x, tasks=[t])[t] for t, x in batches.items()})
    model.load_state_dict(state)
    out_b, loss_b, grad_b = run(lambda: model.forward_all_tasks(batches))
    assert all(torch.allclose(out_a[t], out_b[t], atol=1e-6) for t in batches)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grad_a.keys() == grad_b.keys() and all(torch.allclose(grad_a[k], grad_b[k], atol=1e-6) for k in grad_a)
    # a subset of the tasks (e.g. the last evaluation batches of a small task) works too
    sub = {t: batches[t] for t in list(batches)[1:]}
    with torch.no_grad():
        model.eval()
        assert all(torch.allclose(model.forward_all_tasks(sub)[t], model(x, tasks=[t])[t], atol=1e-6) for t, x in sub.items())


def test_engine_uses_the_hook_for_per_task_batches(monkeypatch):
    from sharewise.engine.evaluate import forward_batch

    model = _models()["mmoe"]
    calls = []
    monkeypatch.setattr(type(model), "forward_all_tasks", lambda self, b, **kw: calls.append(list(b)) or
                        {t: torch.zeros(len(x), 1) for t, x in b.items()})
    batch = {"t0": (torch.randn(2, D_IN), torch.zeros(2, 3), torch.ones(2, dtype=torch.bool)),
             "t2": (torch.randn(3, D_IN), torch.zeros(3, 4), torch.ones(3, dtype=torch.bool))}
    out = forward_batch(model, batch, ["t0", "t1", "t2"], {})
    assert calls == [["t0", "t2"]] and list(out) == ["t0", "t2"] and out["t2"][0].shape == (3, 1)


def test_taan_c_zero_equals_unregularised_and_aux_is_the_layers_sum():
    tasks = _tasks()
    x = torch.randn(4, D_IN)
    grads, models = [], {}
    for reg, c in (("none", 0.1), ("distance", 0.0), ("distance", 0.5)):
        torch.manual_seed(3)
        model = models[(reg, c)] = TAANModel(D_IN, tasks, TAANOptions(widths=[6, 5], num_basis=3, regularizer=reg, c=c))
        aux = model.aux_losses()
        total = sum(o.square().sum() for o in model(x).values()) + sum(aux.values())
        total.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert models[("none", 0.1)].aux_losses() == {}
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    assert any(not torch.equal(grads[0][k], grads[2][k]) for k in grads[0])  # c > 0 moves α and β
    model = models[("distance", 0.5)]
    expected = sum(layer.regularization(0.5) for layer in model.layers)
    assert torch.allclose(model.aux_losses()["functional_regularizer"], expected)


def test_taan_rejects_tracenorm_naming_l21_and_nuclear():
    from sharewise.config import validate_options
    from sharewise.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.regularizer.*l21.*nuclear"):
        validate_options(TAANOptions, {"regularizer": "tracenorm"}, "method")


@pytest.mark.parametrize("flat", [False, True])
def test_no_decay_steps_the_named_parameters_without_weight_decay(flat):
    """§5.5 ``no_decay``: the named parameters move to a group ``<group>_no_decay`` with the same
    learning rate and weight decay 0; with zero loss gradients an Adam step then leaves them
    where they are while weight decay moves every other parameter."""
    from sharewise.config import validate_config
    from sharewise.engine.optim import build_optimizer
    from sharewise.methods.taan import TAAN

    tasks = _tasks()
    torch.manual_seed(0)
    model = TAANModel(D_IN, tasks, TAANOptions(widths=[6, 5], num_basis=3, no_decay=["alpha"]))
    groups = model.param_groups()
    assert list(groups) == ["backbone", "activations", "activations_no_decay", "heads"]
    assert groups["activations_no_decay"] == [layer.alpha for layer in model.layers]
    assert groups["activations"] == [layer.beta for layer in model.layers]
    cfg = validate_config({"method": {"name": "taan"}, "optim": {"lr": 0.01, "weight_decay": 0.5}})
    spec = TAAN(TAANOptions(no_decay=["alpha"]), cfg).optim(model)
    assert spec.no_decay == ("activations_no_decay",) and spec.lrs["activations_no_decay"] == 0.01
    optimizer = build_optimizer(spec, groups, flat=flat)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        decayed = not name.endswith("slopes.value")
        assert torch.equal(p, before[name]) != decayed, name
    # the default decays every parameter (the reference); no group is split
    assert list(TAANModel(D_IN, tasks, TAANOptions(widths=[6], num_basis=3)).param_groups()) == [
        "backbone", "activations", "heads"]


def test_no_decay_names_each_methods_own_parameters():
    from sharewise.config import validate_options
    from sharewise.errors import ConfigError

    tasks = _tasks()
    both = TAANModel(D_IN, tasks, TAANOptions(widths=[6], num_basis=3, no_decay=["alpha", "beta"]))
    assert "activations" not in both.param_groups() and len(both.param_groups()["activations_no_decay"]) == 2
    stitch = CrossStitchModel(D_IN, tasks, CrossStitchOptions(widths=[6], no_decay=["mixing"]))
    assert list(stitch.param_groups()) == ["backbone", "cross_stitch_no_decay", "heads"]
    gates = MMoEModel(D_IN, tasks, MMoEOptions(widths=[6], num_experts=2, no_decay=["mixing"])).param_groups()
    assert gates["gates_no_decay"][0].shape == (3, 2, D_IN)
    order = SoftOrderModel(D_IN, tasks, SoftOrderOptions(widths=[6, 6], no_decay=["mixing"])).param_groups()
    assert list(order) == ["backbone", "ordering_no_decay", "heads"]
    with pytest.raises(ConfigError, match=r"method\.no_decay"):
        validate_options(TAANOptions, {"no_decay": ["mixing"]}, "method")
    with pytest.raises(ConfigError, match=r"method\.no_decay"):
        validate_options(CrossStitchOptions, {"no_decay": ["alpha"]}, "method")


def test_cross_stitch_no_decay_keeps_the_units_learning_rate():
    from sharewise.config import validate_config
    from sharewise.methods.cross_stitch import CrossStitch

    opts = CrossStitchOptions(widths=[6], no_decay=["mixing"], lr_mult=10)
    model = CrossStitchModel(D_IN, _tasks(), opts)
    cfg = validate_config({"method": {"name": "cross_stitch"}, "optim": {"lr": 0.01, "weight_decay": 0.1}})
    spec = CrossStitch(opts, cfg).optim(model)
    assert spec.lrs == {"backbone": 0.01, "cross_stitch_no_decay": 0.1, "heads": 0.01}
    assert spec.no_decay == ("cross_stitch_no_decay",)


def test_cross_stitch_at_identity_with_lr_zero_equals_independent_networks():
    from sharewise.backbones import backbone_factory
    from sharewise.config import validate_config
    from sharewise.data.base import InputSpec
    from sharewise.methods.cross_stitch import CrossStitch
    from sharewise.methods.independent import SeparateNetworks

    tasks = _tasks()
    widths = [6, 5]
    opts = CrossStitchOptions(widths=widths, alpha_self=1.0, alpha_other=0.0, lr_mult=0.0)
    cs = CrossStitchModel(D_IN, tasks, opts)
    build = backbone_factory("plain_mlp", {"widths": widths}, InputSpec("vector", (D_IN,)))
    ind = SeparateNetworks({t.name: build() for t in tasks}, tasks)
    with torch.no_grad():
        for i, t in enumerate(tasks):
            net = ind.backbones[t.name]
            for layer, linear in zip(cs.layers, [net.stem[1], *(b.linear for b in net.blocks)]):
                linear.weight.copy_(layer.weight[i])
                linear.bias.copy_(layer.bias[i])
            ind.heads[t.name].load_state_dict(cs.heads[t.name].state_dict())
    x = torch.randn(4, D_IN)
    out_cs, out_ind = cs(x), ind(x)
    assert all(torch.allclose(out_cs[t.name], out_ind[t.name], atol=1e-6) for t in tasks)
    method = CrossStitch(opts, validate_config({"data": {"path": "x.csv"}, "optim": {"lr": 0.01}}))
    spec = method.optim(cs)
    assert spec.lrs["cross_stitch"] == 0.0 and spec.lrs["backbone"] == 0.01  # the units stay at the identity
    assert CrossStitch(CrossStitchOptions(lr_mult=10), method.cfg).optim(cs).lrs["cross_stitch"] == pytest.approx(0.1)


def test_mmoe_one_expert_equals_shared_bottom():
    from sharewise.backbones.plain_mlp import PlainMLP
    from sharewise.methods.hard import SharedBottom

    tasks = _tasks()
    model = MMoEModel(D_IN, tasks, MMoEOptions(widths=[6, 5], num_experts=1))
    hard = SharedBottom(PlainMLP(D_IN, [6, 5]), tasks)
    expert = model.mmoe.experts[0]
    with torch.no_grad():
        hard.backbone.stem[1].load_state_dict(expert[0].state_dict())
        hard.backbone.blocks[0].linear.load_state_dict(expert[2].state_dict())
    hard.heads.load_state_dict(model.heads.state_dict())
    x = torch.randn(4, D_IN)
    assert all(torch.allclose(model(x)[t.name], hard(x)[t.name], atol=1e-6) for t in tasks)


def test_soft_order_one_hot_equals_fixed_order():
    tasks = _tasks()
    model = SoftOrderModel(D_IN, tasks, SoftOrderOptions(widths=[6, 6, 6]))
    with torch.no_grad():  # task 0: F_2 then F_1; others: F_1 then F_2
        logits = torch.full((3, 2, 2), -1e4)
        logits[:, 0, 0] = logits[:, 1, 1] = 0
        logits[0] = torch.tensor([[-1e4, 0], [0, -1e4]])
        model.soft.order_logits.copy_(logits)
    x = torch.randn(4, D_IN)
    f1, f2 = model.soft.shared_layers
    h = model.encoder(x)
    assert torch.allclose(model(x, tasks=["t0"])["t0"], model.heads["t0"](f1(f2(h))), atol=1e-6)
    assert torch.allclose(model(x, tasks=["t1"])["t1"], model.heads["t1"](f2(f1(h))), atol=1e-6)


def test_soft_order_task_specific_encoders():
    """``encoder: task_specific`` (§4.3, the original method): task t reads its own encoder, then
    the shared soft-ordered core; with every encoder a copy of one shared encoder it is the
    shared-encoder model; only the core is on several tasks' paths."""
    from sharewise.cost import parameter_counts

    tasks = _tasks()
    torch.manual_seed(0)
    shared = SoftOrderModel(D_IN, tasks, SoftOrderOptions(widths=[6, 6, 6]))
    model = SoftOrderModel(D_IN, tasks, SoftOrderOptions(widths=[6, 6, 6], encoder="task_specific"))
    assert not hasattr(model, "encoder") and len(model.encoders) == 3
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        out = model(x)
        for i, t in enumerate(model.task_names):
            want = model.heads[t](model.soft(model.encoders[i](x), task=i))
            assert torch.allclose(out[t], want, atol=1e-6)
            assert torch.allclose(model(x, tasks=[t])[t], out[t], atol=1e-6)
        model.encoders[1][0].weight.add_(1.0)  # task t1's encoder only
        moved = model(x)
        assert torch.equal(moved["t0"], out["t0"]) and torch.equal(moved["t2"], out["t2"])
        assert not torch.allclose(moved["t1"], out["t1"])
        state = {k: v for k, v in shared.state_dict().items() if not k.startswith("encoder.")}
        for i in range(3):
            state.update({f"encoders.{i}.{k}": v for k, v in shared.encoder.state_dict().items()})
        model.load_state_dict(state)
        assert all(torch.allclose(model(x)[t], shared(x)[t], atol=1e-6) for t in model.task_names)
    counts = parameter_counts(model)
    encoder = D_IN * 6 + 6
    core = 2 * (6 * 6 + 6)
    assert counts["shared"] == core
    assert counts["per_task"]["t0"] == encoder + core + 2 * 2 + 6 * 3 + 3  # + its ordering row (D×L) and head
    assert counts["total"] == 3 * encoder + core + 3 * 4 + sum(6 * c + c for c in (3, 2, 4))
    with pytest.raises(ValueError, match="encoder"):
        SoftOrderOptions(encoder="per_task")


# spec §5.7: the reference architectures at H = 1024, M = 64, T = 16, heads 3 557 classes
@pytest.mark.parametrize("name,total", [("taan", 6_929_061), ("soft_order", 6_925_861), ("mmoe", 23_435_749),
                                        ("cross_stitch", 56_124_645)])
def test_published_youtube8m_parameter_counts(name, total):
    from sharewise.data.yt8m import REFERENCE_VERTICALS

    tasks = _tasks([c for _, c in REFERENCE_VERTICALS])
    h = [1024] * 3
    build = {"taan": lambda: TAANModel(1152, tasks, TAANOptions(widths=h, num_basis=64)),
             "soft_order": lambda: SoftOrderModel(1152, tasks, SoftOrderOptions(widths=h, depth=2)),
             "mmoe": lambda: MMoEModel(1152, tasks, MMoEOptions(widths=h, num_experts=6)),
             "cross_stitch": lambda: CrossStitchModel(1152, tasks, CrossStitchOptions(widths=h))}[name]
    with torch.device("meta"):
        model = build()
    assert sum(p.numel() for p in model.parameters()) == total


IMAGE = (2, 8, 8)


def _conv_models():
    tasks = _tasks()
    torch.manual_seed(0)
    conv = {"trunk": "conv", "widths": [3, 4]}
    return {
        "taan": TAANModel(IMAGE[0], tasks, TAANOptions(**conv, num_basis=3, regularizer="cosine")),
        "cross_stitch": CrossStitchModel(IMAGE[0], tasks, CrossStitchOptions(**conv)),
        "mmoe": MMoEModel(IMAGE[0], tasks, MMoEOptions(**conv, num_experts=2)),
        "soft_order": SoftOrderModel(IMAGE[0], tasks, SoftOrderOptions(trunk="conv", widths=[3, 3, 3])),
        "soft_order_task_encoders": SoftOrderModel(IMAGE[0], tasks, SoftOrderOptions(trunk="conv", widths=[3, 3, 3],
                                                                                    encoder="task_specific")),
        "mrn": MRNModel(IMAGE[0], tasks, MRNOptions(**conv, shared_layers=1)),
        "dmtrl": DMTRLModel.from_single_task(SingleTaskModel(IMAGE[0], tasks, DMTRLOptions(**conv)),
                                             DMTRLOptions(**conv, eps=0.3)),
    }


@pytest.mark.parametrize("name", ["taan", "cross_stitch", "mmoe", "soft_order", "soft_order_task_encoders", "mrn",
                                  "dmtrl"])
def test_conv_trunks_keep_the_cost_contract(name):
    """On image inputs (``trunk: conv``): output shapes, one task's call = its part of the all-task
    call, the path parameters are exactly what a task's output reaches, and the FLOPs order."""
    from sharewise.cost import flop_counts, parameter_counts

    model = _conv_models()[name].eval()
    x = torch.randn(5, *IMAGE)
    with torch.no_grad():
        out = model(x)
        assert all(out[t.name].shape == (5, t.out_features) for t in model.tasks)
        assert torch.allclose(model(x, tasks=["t1"])["t1"], out["t1"], atol=1e-6)
    counts = parameter_counts(model)
    for index, t in enumerate(model.tasks):
        model.zero_grad(set_to_none=True)
        model(x, tasks=[t.name])[t.name].square().sum().backward()
        reached = 0
        for module in model.modules():
            rows = getattr(module, "per_task_rows", False)
            for p in module.parameters(recurse=False):
                if p.grad is not None and p.grad.abs().sum() > 0:
                    reached += p[index].numel() if rows else p.numel()
        assert reached == counts["per_task"][t.name]
    flops = flop_counts(model, x[0])
    assert max(flops["per_task"].values()) <= flops["all_tasks"] <= flops["naive"]


@pytest.mark.parametrize("name", ["taan", "mmoe", "soft_order", "soft_order_task_encoders", "mrn", "dmtrl"])
def test_conv_whole_batch_hook_equals_one_call_per_task(name):
    model = _conv_models()[name].train()
    batches = {t.name: torch.randn(4, *IMAGE) for t in model.tasks}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    per_task = {t: model(x, tasks=[t])[t] for t, x in batches.items()}
    model.load_state_dict(state)
    whole = model.forward_all_tasks(batches)
    assert all(torch.allclose(per_task[t], whole[t], atol=1e-5) for t in batches)


def test_conv_trunk_needs_images():
    from sharewise.data.base import InputSpec
    from sharewise.errors import ConfigError
    from sharewise.methods._soft import check_trunk

    with pytest.raises(ConfigError, match="method.trunk: conv needs image inputs"):
        check_trunk(TAANOptions(trunk="conv"), InputSpec("vector", (5,)))


@pytest.mark.parametrize("method", ["taan", "cross_stitch", "mrn", "dmtrl"])
def test_conv_trunk_end_to_end_on_per_task_images(method, tmp_path):
    import json
    from pathlib import Path

    from sharewise import fit
    from test_images import make_idx

    path = make_idx(tmp_path / "idx", n_train=60, n_test=20)
    run = fit({"data": {"path": str(path), "task_views": {"upright": {}, "turned": {"rot90": 1}}},
               "method": {"name": method, "trunk": "conv", "widths": [4, 4]},
               "train": {"epochs": 1, "max_steps": 4, "batch_size": 8, "threads": 1, "progress": False},
               "output": {"dir": str(tmp_path / "run"), "tensorboard": False}})
    results = json.loads((Path(run.path) / "results.json").read_text())
    assert set(results["tasks"]) == {"upright", "turned"}
    assert all("accuracy" in entry["test"] for entry in results["tasks"].values())


def test_taan_omniglot50_network_as_published():
    """§6: 4 valid 3×3 TAL convolutions (BN) with 2×2 pools, 105→…→4, flattened 1 024 → TALLinear
    512 → heads N(0, 0.01²); 1 382 995 parameters with 1 623 classes over 50 tasks; the trunk,
    α and β included, at optim.backbone_lr, the heads at optim.lr."""
    from sharewise.config import validate_config
    from sharewise.methods.taan import TAAN

    sizes = [32] * 50
    sizes[0] += 1623 - sum(sizes)
    tasks = [Task(f"a{i}", "categorical", classes=list(range(c))) for i, c in enumerate(sizes)]
    opts = TAANOptions(trunk="conv", widths=[6, 12, 24, 64], padding="valid", fc_widths=[512], num_basis=32,
                       head_init_std=0.01)
    torch.manual_seed(0)
    model = TAANModel(1, tasks, opts, input_shape=(1, 105, 105))
    assert sum(p.numel() for p in model.parameters()) == 1_382_995
    assert model.layers[4].linear.in_features == 64 * 4 * 4 and len(model.layers) == 5
    assert sum(p.numel() for layer in model.layers for p in (layer.alpha, layer.beta)) == 8_160
    head = model.heads["a0"]
    assert torch.count_nonzero(head.bias) == 0 and 0.008 < head.weight.std().item() < 0.012
    small = TAANModel(1, tasks[:2], TAANOptions(trunk="conv", widths=[2, 3], padding="valid", fc_widths=[4],
                                               num_basis=2), input_shape=(1, 12, 12))
    x = {t.name: torch.rand(3, 1, 12, 12) for t in tasks[:2]}  # 12→10→5→3→1: 3 features flattened
    out = small.forward_all_tasks(x)
    assert out["a0"].shape == (3, sizes[0]) and small.layers[2].linear.in_features == 3
    with torch.no_grad():
        small.eval()
        assert torch.allclose(small.forward_all_tasks(x)["a1"], small(x["a1"], tasks=["a1"])["a1"], atol=1e-6)
    cfg = validate_config({"data": {"path": "x"}, "method": {"name": "taan"},
                           "optim": {"lr": 5e-4, "backbone_lr": 1e-5}})
    spec = TAAN(opts, cfg).optim(model)
    assert spec.lrs == {"backbone": 1e-5, "activations": 1e-5, "heads": 5e-4}
    with pytest.raises(Exception, match="leave no pixel"):
        TAANModel(1, tasks, TAANOptions(trunk="conv", widths=[4] * 8, padding="valid", fc_widths=[8]),
                  input_shape=(1, 28, 28))
