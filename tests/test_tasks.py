import math

import numpy as np
import pytest
import torch

from sharewise.tasks import Task


def test_categorical_loss_masks_rows_exactly():
    task = Task("c", "categorical", classes=[0, 1, 2])
    out = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, -5.0, 0.0]])
    y = torch.tensor([0, 1, 99])  # the masked row holds garbage
    m = torch.tensor([True, True, False])
    expected = (-torch.log_softmax(out[0], 0)[0] - torch.log_softmax(out[1], 0)[1]) / 2
    assert task.compute_loss(out, y, m).item() == pytest.approx(expected.item(), rel=1e-6)


def test_numerical_mse_and_l1_masked():
    out = torch.tensor([[1.0], [3.0], [100.0]])
    y = torch.tensor([0.0, 1.0, float("nan")])
    m = torch.tensor([True, True, False])
    assert Task("n", "numerical").compute_loss(out, y, m).item() == pytest.approx((1 + 4) / 2)
    assert Task("n", "numerical", loss="l1").compute_loss(out, y, m).item() == pytest.approx((1 + 2) / 2)


def test_no_known_target_gives_zero_with_graph():
    head = torch.nn.Linear(2, 1)
    out = head(torch.ones(3, 2))
    loss = Task("n", "numerical").compute_loss(out, torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert head.weight.grad is not None and torch.all(head.weight.grad == 0)


def test_multilabel_bce():
    task = Task("m", "multilabel", classes=["a", "b"])
    out = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    m = torch.tensor([True, False])
    assert task.compute_loss(out, y, m).item() == pytest.approx(math.log(2))


def test_numerical_metrics_in_original_units():
    task = Task("age", "numerical", mean=40.0, std=10.0)
    scores = task.predict(torch.tensor([[0.0], [1.0], [-1.0]]))
    assert np.allclose(scores, [40, 50, 30])
    res = task.evaluate(scores, np.array([0.1, 1.0, -1.0]), np.array([True, True, True]))
    assert res["mae"] == pytest.approx(1 / 3)
    assert res["n"] == 3


def test_loss_kind_mismatch_rejected():
    with pytest.raises(ValueError):
        Task("c", "categorical", classes=[0, 1], loss="mse")


def test_compute_losses_equals_each_task_in_values_and_gradients():
    from sharewise.tasks import compute_losses

    g = torch.Generator().manual_seed(0)
    B = 7
    tasks = [Task("a", "categorical", classes=list(range(4))), Task("b", "categorical", classes=list(range(4))),
             Task("c", "categorical", classes=[0, 1]), Task("d", "numerical"), Task("e", "numerical", loss="l1"),
             Task("f", "numerical"), Task("g", "multilabel", classes=["x", "y", "z"]),
             Task("h", "categorical", classes=list(range(4)))]
    targets = {"a": torch.randint(0, 4, (B,), generator=g), "b": torch.randint(0, 4, (B,), generator=g),
               "c": torch.randint(0, 2, (B,), generator=g), "d": torch.randn(B, generator=g),
               "e": torch.randn(B, generator=g), "f": torch.randn(B, generator=g).fill_(float("nan")),
               "g": torch.randint(0, 2, (B, 3), generator=g).float(), "h": torch.randint(0, 4, (5,), generator=g)}
    masks = {t: torch.rand(len(y), generator=g) > 0.3 for t, y in targets.items()}
    masks["f"] = torch.zeros(B, dtype=torch.bool)  # no known target: 0, NaN targets ignored
    # "h" has another batch size (per-task batches): it cannot join "a" and "b"
    logits = {t.name: torch.randn(len(targets[t.name]), t.out_features, generator=g, requires_grad=True) for t in tasks}
    order = ["e", "a", "g", "b", "f", "c", "h", "d"]  # the result follows the order of ``outputs``
    losses = compute_losses(tasks, {t: (logits[t], targets[t], masks[t]) for t in order})
    by_name = {t.name: t for t in tasks}
    expected = torch.stack([by_name[t].compute_loss(logits[t], targets[t], masks[t]) for t in order])
    assert losses.shape == (8,) and torch.allclose(losses, expected, rtol=1e-6, atol=0)
    assert losses[order.index("f")].item() == 0.0
    weights = torch.arange(1.0, 9.0)
    grads = torch.autograd.grad((losses * weights).sum(), [logits[t] for t in order])
    want = torch.autograd.grad((expected * weights).sum(), [logits[t] for t in order])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(grads, want))
    assert compute_losses(tasks, {}).shape == (0,)
