"""Cross-stitch, MMoE and soft layer ordering: the properties of spec §4.1–4.3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharewise.layers import (CrossStitchConv2d, CrossStitchLinear, CrossStitchUnit, MMoE, SoftOrdering,
                              near_identity, single_task)


def test_near_identity_initialisation():
    a = near_identity(4)
    torch.testing.assert_close(a.sum(1), torch.ones(4))
    assert a[0, 0] == pytest.approx(0.9) and a[0, 1] == pytest.approx(0.1 / 3)
    torch.testing.assert_close(near_identity(1), torch.ones(1, 1))
    unit = CrossStitchUnit(3, num_channels=5)
    assert unit.mixing.shape == (5, 3, 3)
    torch.testing.assert_close(unit.mixing[2], near_identity(3))
    assert float(unit.regularization(1.0)) == 0.0


def test_cross_stitch_at_identity_equals_independent_networks():
    torch.manual_seed(0)
    T = 3
    l1 = CrossStitchLinear(6, 5, T, alpha_self=1.0, alpha_other=0.0)
    l2 = CrossStitchLinear(5, 4, T, alpha_self=1.0, alpha_other=0.0, activation=None)
    x = torch.randn(7, 6)
    out = l2(l1(x))  # (B, T, 4)
    for t in range(T):
        net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
        with torch.no_grad():
            net[0].weight.copy_(l1.weight[t]), net[0].bias.copy_(l1.bias[t])
            net[2].weight.copy_(l2.weight[t]), net[2].bias.copy_(l2.bias[t])
        torch.testing.assert_close(out[:, t], net(x))
    # a single-task call computes every column and returns its own
    h = l1(x)
    torch.testing.assert_close(l2(h, task=1), out[:, 1])
    with single_task(2):
        torch.testing.assert_close(l2(h), out[:, 2])
    # away from the identity the streams mix: h'_i = Σ_j A_ij h_j
    mixing = CrossStitchLinear(6, 5, T)
    with torch.no_grad():
        mixing.unit.mixing.copy_(torch.randn(T, T))  # not symmetric: A_ij mixes stream j into stream i
    cols = torch.relu(torch.einsum("toi,bi->bto", mixing.weight, x) + mixing.bias)
    a = mixing.unit.mixing.detach()
    for i in range(T):
        torch.testing.assert_close(mixing(x)[:, i], sum(a[i, j] * cols[:, j] for j in range(T)))


def test_cross_stitch_conv_at_identity_equals_independent_convs():
    torch.manual_seed(1)
    T = 2
    layer = CrossStitchConv2d(3, 4, 3, T, padding=1, alpha_self=1.0, alpha_other=0.0, per_channel_units=True)
    x = torch.randn(2, 3, 6, 6)
    out = layer(x)
    assert out.shape == (2, T, 4, 6, 6)
    for t in range(T):
        conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(layer.conv.weight[4 * t:4 * (t + 1)]), conv.bias.copy_(layer.conv.bias[4 * t:4 * (t + 1)])
        torch.testing.assert_close(out[:, t], torch.relu(conv(x)))
    assert layer(torch.randn(2, T, 3, 6, 6)).shape == (2, T, 4, 6, 6)


def test_mmoe_with_one_expert_is_a_shared_bottom():
    torch.manual_seed(2)
    layer = MMoE(6, 5, num_tasks=3, num_experts=1, task_names=["a", "b", "c"])
    x = torch.randn(8, 6)
    bottom = layer.experts[0](x)
    out = layer(x)
    assert out.shape == (8, 3, 5)
    for t in range(3):
        torch.testing.assert_close(out[:, t], bottom)
    torch.testing.assert_close(layer(x, task="b"), bottom)
    assert float(layer.regularization(1.0)) == 0.0


def test_mmoe_gates_mix_experts_per_task():
    torch.manual_seed(3)
    layer = MMoE(6, 5, num_tasks=2, num_experts=3)
    x = torch.randn(4, 6)
    g = layer.gate_weights(x)
    assert g.shape == (4, 2, 3)
    torch.testing.assert_close(g.sum(-1), torch.ones(4, 2))
    assert (g - 1 / 3).abs().max() < 0.05  # near-uniform at initialisation
    experts = torch.stack([e(x) for e in layer.experts], 1)
    want = torch.einsum("bte,beo->bto", g, experts)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer(x, task=1), want[:, 1])
    # feature maps: the gate reads the spatial mean
    conv = MMoE(3, None, num_tasks=2, experts=[nn.Conv2d(3, 4, 1) for _ in range(2)])
    img = torch.randn(2, 3, 5, 5)
    assert conv(img).shape == (2, 2, 4, 5, 5)
    torch.testing.assert_close(conv.gate_weights(img), conv.gate_weights(img.mean((2, 3))))


def test_soft_ordering_one_hot_equals_a_fixed_order():
    torch.manual_seed(4)
    layer = SoftOrdering(5, num_tasks=2, num_layers=3, depth=3)
    orders = [(2, 0, 1), (1, 1, 0)]
    with torch.no_grad():
        layer.order_logits.fill_(float("-inf"))
        for t, order in enumerate(orders):
            for d, j in enumerate(order):
                layer.order_logits[t, d, j] = 0.0
    h = torch.randn(6, 5)
    out = layer(h)
    for t, order in enumerate(orders):
        want = h
        for j in order:
            want = layer.shared_layers[j](want)
        torch.testing.assert_close(out[:, t], want)
        torch.testing.assert_close(layer(h, task=t), want)
    per_task = torch.randn(6, 2, 5)
    out = layer(per_task)
    want = per_task[:, 1]
    for j in orders[1]:
        want = layer.shared_layers[j](want)
    torch.testing.assert_close(out[:, 1], want)


def test_soft_ordering_first_depth_once_for_a_shared_input():
    layer = SoftOrdering(4, num_tasks=3, num_layers=2)
    rows = []
    for f in layer.shared_layers:
        f.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    layer(torch.randn(5, 4))
    assert rows == [5, 5, 15, 15]  # depth 1 on the 5 shared rows, depth 2 on 5 × 3 task rows
    assert float(layer.regularization(1.0)) == 0.0


def test_task_rows_count_only_the_tasks_own_row():
    from sharewise.cost import _path_pieces
    from sharewise.layers import TALLinear

    tal = TALLinear(6, 5, num_tasks=4, num_basis=3)
    path = sum(_path_pieces([tal], 2).values())
    assert path == 6 * 5 + 5 + 3 + 3  # W, b, the shared hinges β and task 2's three slopes
    mmoe = MMoE(6, 5, num_tasks=4, num_experts=2)
    assert sum(_path_pieces([mmoe], 0).values()) == 2 * (6 * 5 + 5) + 2 * 6
    order = SoftOrdering(5, num_tasks=4, num_layers=2)
    assert sum(_path_pieces([order], 1).values()) == 2 * (5 * 5 + 5) + 2 * 2
