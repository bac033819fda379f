"""MRN and DMTRL layers: the properties of TAAN specification §4.4 and §4.5 (§8's minimum list)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharewise.layers import (DMTRLConv2d, DMTRLLinear, MRNConv2d, MRNLinear, TaskConv2d, TaskLinear, single_task,
                              tensor_normal_penalty)
from sharewise.layers.mrn import official_precision


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T / n + 0.5 * torch.eye(n, dtype=torch.float64)


# ------------------------------------------------------------------ task-weight layers


def test_task_linear_is_independent_linears_for_every_call_form():
    torch.manual_seed(0)
    layer = TaskLinear(5, 4, 3, task_names=["a", "b", "c"])
    x, xs = torch.randn(6, 5), torch.randn(6, 2, 5)
    out = layer(x)
    assert out.shape == (6, 3, 4)
    for t in range(3):
        torch.testing.assert_close(out[:, t], x @ layer.weight[t].T + layer.bias[t])
    torch.testing.assert_close(layer(x, task="b"), out[:, 1])
    with single_task(2):
        torch.testing.assert_close(layer(x), out[:, 2])
    sub = layer(xs, task=[2, 0])  # per-task columns, in the order asked
    torch.testing.assert_close(sub[:, 0], xs[:, 0] @ layer.weight[2].T + layer.bias[2])
    torch.testing.assert_close(sub[:, 1], xs[:, 1] @ layer.weight[0].T + layer.bias[0])
    with pytest.raises(ValueError, match="per-task input"):
        layer(xs)


def test_task_conv_is_independent_convs():
    torch.manual_seed(0)
    layer = TaskConv2d(2, 3, 3, 2, padding=1)
    x = torch.randn(4, 2, 6, 6)
    out = layer(x)
    for t in range(2):
        expected = torch.nn.functional.conv2d(x, layer.weight[t].view(3, 2, 3, 3), layer.bias[t], padding=1)
        torch.testing.assert_close(out[:, t], expected)
    xs = torch.randn(4, 2, 2, 6, 6)
    stacked = layer(xs)
    torch.testing.assert_close(stacked[:, 1], torch.nn.functional.conv2d(xs[:, 1], layer.weight[1].view(3, 2, 3, 3),
                                                                         layer.bias[1], padding=1))


# ------------------------------------------------------------------ MRN


def test_mrn_penalty_is_the_vectorised_kronecker_formula():
    torch.manual_seed(1)
    layer = MRNLinear(4, 3, 2).double()
    assert torch.allclose(layer.penalty(), layer.weight.square().sum())  # identity precisions: ‖𝒲‖²_F
    omegas = [_spd(2, 1), _spd(3, 2), _spd(4, 3)]
    for buf, om in zip(layer.precisions(), omegas):
        buf.copy_(om)
    layer._identity = {k: False for k in layer._identity}
    vec = layer.weight.detach().reshape(-1)  # row-major (t, o, i): the Kronecker order Ω_T ⊗ Ω_out ⊗ Ω_in
    expected = vec @ torch.kron(omegas[0], torch.kron(omegas[1], omegas[2])) @ vec
    assert torch.allclose(layer.penalty(), expected)
    assert torch.allclose(layer.regularization(0.25), 0.25 * expected)
    # the same with loops over the definition Σ 𝒲[t,o,i] Ω_T[t,t'] Ω_out[o,o'] Ω_in[i,i'] 𝒲[t',o',i']
    w = layer.weight.detach().numpy()
    a, b, c = (om.numpy() for om in omegas)
    loops = np.einsum("toi,ts,op,ij,spj->", w, a, b, c, w)
    assert layer.penalty().item() == pytest.approx(loops, rel=1e-10)
    assert tensor_normal_penalty(layer.weight, [None, None, None]).item() == pytest.approx((w ** 2).sum())


def _direct_official(w: np.ndarray, mode: int, omegas: list[np.ndarray]) -> np.ndarray:
    """Σ̂_k from the mode-k unfolding and the Kronecker product of the other two precisions, then
    the official transform, all in numpy."""
    unfolding = np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)
    others = [om for k, om in enumerate(omegas) if k != mode]
    scatter = unfolding @ np.kron(others[0], others[1]) @ unfolding.T + 1e-5 * np.eye(w.shape[mode])
    s, u = np.linalg.eigh(scatter)
    s = np.where(s > 0.1, 1 / s, s)
    omega = u @ np.diag(s) @ u.T
    return omega * 3000 / np.trace(omega) if np.trace(omega) > 3000 else omega


def test_mrn_default_update_changes_only_the_task_precision_as_the_formula():
    torch.manual_seed(2)
    layer = MRNLinear(4, 3, 3).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)  # scatter eigenvalues above the 0.1 threshold and below it
    w = layer.weight.detach().numpy().copy()
    eye = [np.eye(n) for n in (3, 3, 4)]
    new = layer.update_precisions()
    assert list(new) == ["task"]
    np.testing.assert_allclose(layer.omega_task.numpy(), _direct_official(w, 0, eye), rtol=1e-9, atol=1e-12)
    assert torch.equal(layer.omega_output, torch.eye(3, dtype=torch.float64))
    assert torch.equal(layer.omega_input, torch.eye(4, dtype=torch.float64))
    assert not torch.allclose(layer.omega_task, torch.eye(3, dtype=torch.float64))
    # the penalty now uses Ω_T
    vec = layer.weight.detach().reshape(-1)
    expected = vec @ torch.kron(layer.omega_task, torch.eye(12, dtype=torch.float64)) @ vec
    assert torch.allclose(layer.penalty(), expected)


@pytest.mark.parametrize("order", ["sequential", "simultaneous"])
def test_mrn_update_of_all_three_modes_in_order(order):
    torch.manual_seed(3)
    layer = MRNLinear(4, 3, 2, update_output=True, update_input=True, update_order=order).double()
    w = layer.weight.detach().numpy().copy()
    omegas = [np.eye(2), np.eye(3), np.eye(4)]
    before = [om.copy() for om in omegas]
    for mode in range(3):
        estimate = _direct_official(w, mode, omegas if order == "sequential" else before)
        omegas[mode] = before[mode] + 0.0003 * estimate if mode == 2 else estimate  # Ω_in additive
    layer.update_precisions()
    for got, want in zip(layer.precisions(), omegas):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    if order == "sequential":  # Ω_out used the new Ω_T: not what the pre-update one gives
        assert not np.allclose(omegas[1], _direct_official(w, 1, before))


def test_mrn_mle_rule_and_trace_cap():
    torch.manual_seed(4)
    layer = MRNLinear(4, 3, 3, rule="mle").double()
    w = layer.weight.detach().numpy().copy()
    layer.update_precisions()
    unfolding = w.reshape(3, -1)
    expected = np.linalg.inv(unfolding @ unfolding.T / 12 + 1e-5 * np.eye(3))
    np.testing.assert_allclose(layer.omega_task.numpy(), expected, rtol=1e-8)
    # 400 eigenvalues 0.11 → precision trace 400/0.11 = 3636 > 3000: scaled to 3000
    capped = official_precision(torch.eye(400, dtype=torch.float64) * (0.11 - 1e-5))
    assert torch.trace(capped).item() == pytest.approx(3000.0)
    torch.testing.assert_close(capped, torch.eye(400, dtype=torch.float64) * 7.5)
    kept = official_precision(torch.diag(torch.tensor([0.05, 2.0], dtype=torch.float64)))  # s ≤ 0.1 kept as is
    torch.testing.assert_close(torch.diagonal(kept), torch.tensor([0.05 + 1e-5, 1 / (2.0 + 1e-5)], dtype=torch.float64))


def test_mrn_with_c_zero_equals_the_unregularised_layer():
    x = torch.randn(5, 4)
    grads = []
    for make in (lambda: TaskLinear(4, 3, 2), lambda: MRNLinear(4, 3, 2)):
        torch.manual_seed(5)
        layer = make()
        loss = layer(x).square().sum() + layer.regularization(0.0)
        loss.backward()
        grads.append((layer(x).detach(), layer.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)
    torch.manual_seed(5)
    layer = MRNLinear(4, 3, 2)
    (layer(x).square().sum() + layer.regularization(0.5)).backward()
    torch.testing.assert_close(layer.weight.grad, grads[1][1] + 0.5 * 2 * layer.weight.detach())  # ∂‖𝒲‖²_F = 2𝒲


def test_mrn_conv_prior_on_the_flattened_kernels_and_state_round_trip():
    torch.manual_seed(6)
    layer = MRNConv2d(2, 3, 3, 2, padding=1)
    assert layer.omega_input.shape == (18, 18) and layer.weight.shape == (2, 3, 18)
    layer.update_precisions()
    copy = MRNConv2d(2, 3, 3, 2, padding=1)
    copy.load_state_dict(layer.state_dict())
    assert copy._identity["task"] is False and copy._identity["input"] is True
    torch.testing.assert_close(copy.penalty(), layer.penalty())


# ------------------------------------------------------------------ DMTRL


def _formula(layer: DMTRLLinear) -> torch.Tensor:
    """𝒲 (d_in, d_out, T) from the factors by the definitions of §4.5, in one expression each."""
    rows = layer.task_factor.value
    if layer.method == "tucker":
        return torch.einsum("abc,ia,jb,tc->ijt", layer.core, layer.u1, layer.u2, rows)
    if layer.method == "tt":
        return torch.einsum("ia,ajb,tb->ijt", layer.g1, layer.g2, rows)
    return (layer.u @ rows.T).view(layer.fan_in, layer.out_features, layer.num_tasks)


@pytest.mark.parametrize("method", ["tucker", "tt", "laf"])
def test_dmtrl_computes_its_dense_tensor(method):
    torch.manual_seed(7)
    layer = DMTRLLinear(6, 5, 3, method, ranks={"tucker": [3, 2, 2], "tt": [3, 2], "laf": [2]}[method])
    dense = _formula(layer)
    torch.testing.assert_close(layer.dense(), dense)
    x = torch.randn(4, 6)
    out = layer(x)
    for t in range(3):
        torch.testing.assert_close(out[:, t], x @ dense[:, :, t] + layer.biases.value[t])
        torch.testing.assert_close(layer(x, task=t), out[:, t])
    torch.testing.assert_close(layer.dense([2, 0]), dense[:, :, [2, 0]])
    assert float(layer.regularization(1.0)) == 0.0


@pytest.mark.parametrize("method", ["tucker", "tt", "laf"])
def test_dmtrl_full_rank_stl_initialisation_equals_the_stl_layer(method):
    torch.manual_seed(8)
    stl = TaskLinear(6, 5, 3).double()
    layer = DMTRLLinear.from_weights(stl.weight, stl.bias, method, eps=0.0)
    assert layer.ranks == {"tucker": [6, 5, 3], "tt": [6, 3], "laf": [3]}[method]
    torch.testing.assert_close(layer.dense(), stl.weight.detach().permute(2, 1, 0))
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), stl(x))


def test_dmtrl_rank_rule_keeps_singular_values_above_eps_times_the_largest():
    g = torch.Generator().manual_seed(9)
    # task weights spanning two directions: tasks 2 and 3 are combinations of tasks 0 and 1
    base = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    weight = torch.stack([base[0], base[1], base[0] + base[1], 2 * base[0] - base[1]])
    for method, rank_index in (("tucker", 2), ("tt", 1), ("laf", 0)):
        layer = DMTRLLinear.from_weights(weight, None, method, eps=1e-6)
        assert layer.ranks[rank_index] == 2, (method, layer.ranks)
        torch.testing.assert_close(layer.dense(), weight.permute(2, 1, 0))  # exact: the dropped values are 0
    s = torch.linalg.svdvals(weight.permute(2, 1, 0).reshape(-1, 4))
    laf = DMTRLLinear.from_weights(weight, None, "laf", eps=float(s[1] / s[0]) + 1e-9)
    assert laf.ranks == [1]  # only s_1 > ε s_1 left
    assert DMTRLLinear.from_weights(weight, None, "tucker", ranks=[2, 3, 1]).ranks == [2, 3, 1]


def test_dmtrl_conv_from_stl_kernels_equals_the_stl_convs():
    torch.manual_seed(10)
    stl = TaskConv2d(2, 3, 3, 2, padding=1).double()
    layer = DMTRLConv2d.from_weights(stl.weight, stl.bias, "tucker", eps=0.0, in_features=2, kernel_size=3, padding=1)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), stl(x))
    assert isinstance(layer, DMTRLConv2d) and layer.ranks[0] == 6  # 𝒲 (18, 3, 2): mode-1 rank ≤ 3·2


def test_dmtrl_random_initialisation_uses_the_explicit_ranks():
    torch.manual_seed(11)
    layer = DMTRLLinear(40, 40, 4, "tucker")
    assert layer.ranks == [32, 32, 4]
    assert DMTRLLinear(40, 40, 4, "tt").ranks == [32, 4] and DMTRLLinear(40, 40, 4, "laf").ranks == [4]  # k ≤ T
    assert 0.001 < layer.dense().std().item() < 0.01  # 0.01·N(0, 1) noise projected on 32×32×4 of 40×40×4
    with pytest.raises(ValueError, match="ranks must be 3"):
        DMTRLLinear(4, 4, 2, "tucker", ranks=[2, 2])


# ------------------------------------------------------------------ the methods


def _tasks(classes=(3, 2, 4)):
    from sharewise.tasks import Task

    return [Task(f"t{i}", "multilabel", classes=list(range(c))) for i, c in enumerate(classes)]


def test_dmtrl_model_from_full_rank_single_task_networks_equals_them():
    from sharewise.methods.dmtrl import DMTRLModel, DMTRLOptions, SingleTaskModel

    torch.manual_seed(12)
    for trunk, shape in (("mlp", (7,)), ("conv", (2, 6, 6))):
        opts = DMTRLOptions(widths=[5, 4], trunk=trunk, eps=0.0)
        stl = SingleTaskModel(shape[0], _tasks(), opts).double().eval()
        model = DMTRLModel.from_single_task(stl, opts).eval()
        x = torch.randn(3, *shape, dtype=torch.float64)
        want, got = stl(x), model(x)
        assert all(torch.allclose(want[t], got[t]) for t in want), trunk
        assert model.ranks()[1] == ([5, 4, 3] if trunk == "mlp" else [12, 4, 3])  # conv mode 1: min(5·3·3, 4·3)
    # the default precision rule truncates: fewer factor elements than at full rank
    small = DMTRLModel.from_single_task(stl, DMTRLOptions(widths=[5, 4], trunk="conv", eps=0.5))
    assert sum(p.numel() for p in small.columns.parameters()) < sum(p.numel() for p in model.columns.parameters())


@pytest.mark.parametrize("name", ["mrn", "dmtrl"])
def test_whole_batch_hook_equals_one_call_per_task(name):
    from sharewise.methods.dmtrl import DMTRLModel, DMTRLOptions
    from sharewise.methods.mrn import MRNModel, MRNOptions

    torch.manual_seed(13)
    model = (MRNModel(7, _tasks(), MRNOptions(widths=[6, 5], shared_layers=1)) if name == "mrn"
             else DMTRLModel(7, _tasks(), DMTRLOptions(widths=[6, 5], init="random", ranks=[3, 3, 2])))
    batches = {t.name: torch.randn(n, 7) for t, n in zip(model.tasks, (5, 3, 4))}
    per_task = {t: model(x, tasks=[t])[t] for t, x in batches.items()}
    whole = model.forward_all_tasks(batches)
    assert all(torch.allclose(per_task[t], whole[t], atol=1e-6) for t in batches)


def test_mrn_c_zero_equals_unregularised_and_aux_is_the_layers_sum():
    from sharewise.methods.mrn import MRNModel, MRNOptions

    x = torch.randn(4, 7)
    grads = []
    for c in (0.0, 0.5):
        torch.manual_seed(14)
        model = MRNModel(7, _tasks(), MRNOptions(widths=[6, 5], c=c))
        aux = model.aux_losses()
        (sum(o.square().sum() for o in model(x).values()) + sum(aux.values())).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        if c:
            expected = 0.5 * sum(layer.weight.square().sum() for layer in model.columns)  # identity precisions
            assert torch.allclose(aux["mrn_prior"], expected)
        else:
            assert aux == {}
    heads = [k for k in grads[0] if k.startswith("heads")]
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in heads)
    assert all(not torch.equal(grads[0][k], grads[1][k]) for k in grads[0] if k.endswith("weight") and "columns" in k)


def test_mrn_precisions_change_during_training_through_the_hook(tmp_path):
    """A run through the engine: the task precisions leave the identity at the update steps and
    not between them (``update_interval``), and the checkpoint holds them."""
    import json

    from sharewise import fit
    from sharewise.engine.checkpoint import load_checkpoint
    from sharewise.methods import mrn as mrn_mod
    from test_images import make_idx

    calls = []
    original = mrn_mod.MRNModel.update_precisions

    def counting(self):
        calls.append(1)
        return original(self)

    mrn_mod.MRNModel.update_precisions = counting
    try:
        path = make_idx(tmp_path / "idx", n_train=60, n_test=20)
        run = fit({"data": {"path": str(path), "task_views": {"upright": {}, "turned": {"rot90": 1}}},
                   "method": {"name": "mrn", "widths": [8, 8], "update_interval": 3, "c": 0.01},
                   "train": {"epochs": 1, "max_steps": 7, "batch_size": 8, "threads": 1, "progress": False},
                   "output": {"dir": str(tmp_path / "run"), "tensorboard": False}})
    finally:
        mrn_mod.MRNModel.update_precisions = original
    assert len(calls) == 2  # steps 3 and 6 of 7
    from pathlib import Path

    state = load_checkpoint(Path(run.path) / "checkpoints/train/last.pt")["model"]
    for k in ("columns.0.omega_task", "columns.1.omega_task"):
        assert not torch.allclose(state[k], torch.eye(2)), k
    assert torch.equal(state["columns.0.omega_output"], torch.eye(8))
    results = json.loads((Path(run.path) / "results.json").read_text())
    layer = results["mrn_layers"][0]
    np.testing.assert_allclose(np.diag(layer["task_correlation"]), 1.0)
    assert layer["omega_task"] != [[1.0, 0.0], [0.0, 1.0]]


def test_dmtrl_pretrains_single_task_networks_then_trains_the_factorisation(tmp_path):
    import json
    from pathlib import Path

    from sharewise import fit
    from sharewise.engine.checkpoint import load_checkpoint
    from test_images import make_idx

    path = make_idx(tmp_path / "idx", n_train=60, n_test=20)
    run = fit({"data": {"path": str(path), "task_views": {"upright": {}, "turned": {"rot90": 1}}},
               "method": {"name": "dmtrl", "widths": [8, 8], "factorization": "tt", "eps": 0.0},
               "train": {"epochs": 1, "max_steps": 4, "batch_size": 8, "threads": 1, "progress": False},
               "output": {"dir": str(tmp_path / "run"), "tensorboard": False}})
    root = Path(run.path)
    stl = load_checkpoint(root / "checkpoints/stl_pretrain/best.pt")["model"]
    selection = json.loads((root / "selection.json").read_text())
    assert [p["phase"] for p in selection["phases"]] == ["stl_pretrain", "train"]
    ranks = selection["candidates"][0]["info"]["ranks"]
    assert ranks == [[min(784, 16), 2], [8, 2]]  # full TT ranks (eps 0): r1 = min(d_in, d_out·T), r2 = T
    results = json.loads((root / "results.json").read_text())
    assert results["dmtrl"]["ranks"] == ranks
    # the factorised model's first state is the single-task networks' (full ranks): the heads equal
    init = load_checkpoint(root / "checkpoints/train/last.pt")["model"]
    assert init["heads.upright.weight"].shape == stl["heads.upright.weight"].shape
    assert "columns.0.g2" in init and "columns.0.weight" in stl


@pytest.mark.parametrize("method", ["tucker", "tt", "laf"])
def test_dmtrl_decomposition_is_stable_to_rounding(method):
    """Weights equal up to rounding (e.g. one process against two) give factors equal up to
    rounding: the singular vectors' signs are fixed, not left to the solver."""
    torch.manual_seed(15)
    w = torch.randn(3, 4, 6, dtype=torch.float64)
    a = DMTRLLinear.from_weights(w, None, method, eps=0.0)
    b = DMTRLLinear.from_weights(w + 1e-9 * torch.randn_like(w), None, method, eps=0.0)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    for name, p in a.named_parameters():  # the largest entry of every column of a left factor is positive
        if name in ("u1", "u2", "g1", "u"):
            assert (p.gather(0, p.abs().argmax(0, keepdim=True)) > 0).all(), name
