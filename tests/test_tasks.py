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
