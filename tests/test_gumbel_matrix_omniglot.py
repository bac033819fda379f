"""Parameter allocation, Omniglot-20 (spec §7.2, §8.1): the published routed network's strided
layers and sizes, the checkpoint table, and checkpoint selection that never reads test."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torch.nn.functional as F

from sharewise.layers import ConvComponent, IdentityComponent, PoolComponent, RoutedLayer, conv2d_same
from sharewise.methods.gumbel_matrix.checkpoints import checkpoint_rows, checkpoint_summary, checkpoint_table
from sharewise.methods.gumbel_matrix.network import RoutedNetwork, gumbel_router, omniglot_layers
from sharewise.tasks import Task


def _tasks(n: int, classes: int = 5) -> list[Task]:
    return [Task(f"t{i}", "categorical", classes=list(range(classes))) for i in range(n)]


# ------------------------------------------------------------------------------- the network


def test_strided_layers_turn_the_identity_into_a_strided_1x1_convolution():
    torch.manual_seed(0)
    layers = omniglot_layers(1)
    routed = [layer for layer in layers if isinstance(layer, RoutedLayer)]
    assert len(routed) == 8 and all(len(layer) == 7 for layer in routed)
    x = torch.randn(2, 48, 9, 9)
    strided = []
    for index, layer in enumerate(routed):
        identity = layer.components[6]
        if isinstance(identity, ConvComponent):
            strided.append(index)
            # a 1x1 convolution of stride 2, no norm, no activation: exactly conv2d_same of the input
            assert identity.ops == [(48, (1, 1), 2, None, False)]
            conv = identity.convs[0]
            torch.testing.assert_close(identity(x), conv2d_same(x, conv.weight, conv.bias, 2))
            assert identity(x).min() < 0  # no ReLU
        else:
            assert isinstance(identity, IdentityComponent)
            assert torch.equal(identity(x), x)
        # every component strides its last op only; pooling strides with the layer
        stride = 2 if index in strided else 1
        for comp in layer.components[:4]:
            assert [op[2] for op in comp.ops] == [1, stride]
            assert all(op[3] == 4 and op[4] for op in comp.ops)  # GroupNorm(4) + ReLU after every conv
        assert [c.stride for c in layer.components[4:6]] == [stride, stride]
        assert isinstance(layer.components[4], PoolComponent)
    assert strided == [int(1.6 * i) for i in range(5)] == [0, 1, 3, 4, 6]


def test_published_output_sizes_and_the_cpu_variant():
    torch.manual_seed(0)
    net = RoutedNetwork(omniglot_layers(1), [gumbel_router(20, 7, 0.97) for _ in range(8)], _tasks(20),
                        input_shape=(1, 105, 105))
    assert [105] + [s[1] for s in net.out_shapes] == [105, 53, 27, 27, 14, 7, 7, 4, 4]
    assert all(s[0] == 48 and s[1] == s[2] for s in net.out_shapes)
    assert net.out_features == 4 * 4 * 48 == 768 and net.total_components == 56
    # TF "same" sizes ⌈in / stride⌉, not PyTorch's floor: 105 -> 53 (floor would give 52)
    assert F.max_pool2d(torch.zeros(1, 1, 105, 105), 3, 2).shape[-1] == 52
    small = RoutedNetwork(omniglot_layers(1, filters=16), [gumbel_router(3, 7, 0.97) for _ in range(8)], _tasks(3),
                          input_shape=(1, 28, 28))
    assert [s[1] for s in small.out_shapes] == [14, 7, 7, 4, 2, 2, 1, 1] and small.out_features == 16
    out = small.eval()(torch.rand(2, 1, 28, 28), tasks=["t1"])
    assert out["t1"].shape == (2, 5)
    # the CPU variant strides layers 0, 1, 3 only and keeps the published final 4×4 map (16 features
    # were a bottleneck: a 28×28 run with the published strides stayed at chance)
    cpu = RoutedNetwork(omniglot_layers(1, filters=16, strided=(0, 1, 3)), [gumbel_router(3, 7, 0.97) for _ in range(8)],
                        _tasks(3), input_shape=(1, 28, 28))
    assert [s[1] for s in cpu.out_shapes] == [14, 7, 7, 4, 4, 4, 4, 4] and cpu.out_features == 4 * 4 * 16
    routed = [layer for layer in cpu.layers if isinstance(layer, RoutedLayer)]
    assert [i for i, layer in enumerate(routed) if isinstance(layer.components[6], ConvComponent)] == [0, 1, 3]


def test_filters_option_must_suit_group_norm():
    from sharewise.config import validate_options
    from sharewise.errors import ConfigError
    from sharewise.methods.gumbel_matrix import GumbelMatrixOptions

    assert validate_options(GumbelMatrixOptions, {"network": "omniglot", "filters": 16}, "method").filters == 16
    with pytest.raises(ConfigError, match=r"method.filters.*multiple of 4") as err:
        validate_options(GumbelMatrixOptions, {"network": "omniglot", "filters": 18}, "method")
    assert "\n" not in str(err.value)
    assert validate_options(GumbelMatrixOptions, {"strided_layers": [0, 1, 3]}, "method").strided_layers == [0, 1, 3]
    for bad in ([0, 8], [1, 1]):
        with pytest.raises(ConfigError, match=r"method.strided_layers"):
            validate_options(GumbelMatrixOptions, {"network": "omniglot", "strided_layers": bad}, "method")


# ------------------------------------------------------------------------------- the table


def _write_metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_checkpoint_table_rows_average_and_selected(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, [
        {"phase": "train", "step": 20, "split": "train", "loss/a": 1.0},  # a training-loss row: not a checkpoint
        {"phase": "train", "step": 40, "split": "val", "a/accuracy": 0.5, "a/loss": 1.0, "b/accuracy": 0.7, "b/loss": 3.0},
        {"phase": "train", "step": 40, "split": "train_eval", "a/accuracy": 0.6, "a/loss": 0.5, "b/accuracy": 0.8,
         "b/loss": 0.5},
        {"phase": "train", "step": 80, "split": "val", "a/accuracy": 0.9, "a/loss": 9.0, "b/accuracy": 0.1, "b/loss": 1.0},
        {"phase": "train", "step": 80, "split": "val", "a/accuracy": 0.8, "a/loss": 0.2, "b/accuracy": 0.4, "b/loss": 0.2},
        {"phase": "other", "step": 80, "split": "val", "a/accuracy": 0.0, "b/accuracy": 0.0},
    ])
    rows = checkpoint_rows(metrics, ["a", "b"], selected_step=40)
    assert [(r["step"], r["split"], r["task"]) for r in rows] == [
        (40, "val", "a"), (40, "val", "b"), (40, "val", "Average"), (40, "train", "a"), (40, "train", "b"),
        (40, "train", "Average"), (80, "val", "a"), (80, "val", "b"), (80, "val", "Average")]
    average = {(r["step"], r["split"]): r for r in rows if r["task"] == "Average"}
    assert average[(40, "val")]["accuracy"] == pytest.approx(0.6) and average[(40, "val")]["loss"] == pytest.approx(2.0)
    assert average[(80, "val")]["accuracy"] == pytest.approx(0.6)  # the later row of a step logged twice (resume)
    assert [r["selected"] for r in rows] == [1] * 6 + [0] * 3
    assert rows[0]["round"] == 20  # step 40 of 2 tasks
    assert [r["selected"] for r in checkpoint_rows(metrics, ["a", "b"], selected_step=None)] == [0] * 6 + [1] * 3
    text = checkpoint_table(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[2] == {"step": "40", "round": "20", "split": "val", "task": "Average", "accuracy": "0.6",
                         "loss": "2.0", "selected": "1"}
    summary = checkpoint_summary(text, 2)
    assert summary["evaluations"] == 2 and summary["selected_step"] == 40 and summary["selected_round"] == 20
    assert summary["selected_average"] == {"val": pytest.approx(0.6), "train": pytest.approx(0.7)}
    assert summary["curves"]["val"] == [[20.0, pytest.approx(0.6)], [40.0, pytest.approx(0.6)]]


# ------------------------------------------------------------------------------- selection never reads test


def _poison_test_labels(monkeypatch):
    """Every Omniglot test label replaced by another class: a model selected on test would change."""
    import sys

    from sharewise.data.sources import sources

    sources()
    info = sys.modules["sharewise.data.sources"]._SOURCES["omniglot"]
    original = info.build

    def poisoned(cfg, opts):
        loaded = original(cfg, opts)
        data = loaded.data
        for t in data.tasks:
            targets = data.examples[t.name].targets[t.name]
            test = torch.as_tensor(data.splits[t.name]["test"])
            targets[test] = (targets[test] + 1) % len(t.classes)
        return loaded

    monkeypatch.setattr(info, "build", poisoned)


def _count_evaluations(monkeypatch, calls):
    import sharewise.engine.runner as runner
    import sharewise.engine.trainer as trainer

    for module in (trainer, runner):
        original = module.evaluate

        def counted(*args, _original=original, _where=module.__name__.rsplit(".", 1)[-1], **kwargs):
            calls.append((_where, args[2]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "evaluate", counted)


def _omniglot_run(tmp_path, name, *extra):
    from test_images import make_omniglot

    from sharewise.cli.main import main

    data = tmp_path / "omniglot"
    if not data.exists():
        make_omniglot(data, as_zip=False, size=12)
    out = tmp_path / name
    rc = main(["run", "--config", "configs/gumbel_matrix/omniglot_gumbel_matrix_cpu.yaml", "--out", str(out),
               "--no-progress", "--set", f"data.path={data}", "--set", "data.alphabets=all", "--set", "data.image_size=12",
               "--set", "method.steps_per_task=6", "--set", "method.eval_every_rounds=2", "--set", "method.network=mlp",
               "--set", "method.widths=[16]", "--set", "method.strided_layers=null", "--set", "train.eval_batch_size=64",
               "--set", "method.p0=0.6", *extra])
    assert rc == 0
    return out


def _curves(out):
    rows = list(csv.DictReader(io.StringIO((out / "checkpoints.csv").read_text())))
    return [r for r in rows if r["split"] in ("val", "train")], [r for r in rows if r["split"] == "test_diagnostic"]


def test_selection_never_reads_test_and_tests_the_selected_checkpoint_once(tmp_path, monkeypatch):
    clean_calls: list = []
    _count_evaluations(monkeypatch, clean_calls)
    clean = _omniglot_run(tmp_path, "clean")
    # inline: validation and train at each of the 3 checkpoints (rounds 2, 4, 6), test never; then test once,
    # on the selected model
    assert [s for w, s in clean_calls if w == "trainer"] == ["val", "train"] * 3
    assert [s for w, s in clean_calls if w == "runner"] == ["val", "test"]  # the candidate's validation again
    clean_rows, diag = _curves(clean)
    assert diag == [] and len({r["step"] for r in clean_rows}) == 3
    selected = {r["step"] for r in clean_rows if r["selected"] == "1"}
    val_average = {int(r["step"]): float(r["accuracy"]) for r in clean_rows if r["split"] == "val" and r["task"] == "Average"}
    assert selected == {str(max(val_average, key=lambda s: (val_average[s], -s)))}  # the first best validation Average
    results = json.loads((clean / "results.json").read_text())
    assert results["checkpoints"]["selected_step"] == int(selected.pop())

    poisoned_calls: list = []
    monkeypatch.undo()
    _count_evaluations(monkeypatch, poisoned_calls)
    _poison_test_labels(monkeypatch)
    poisoned = _omniglot_run(tmp_path, "poisoned", "--all-splits")
    rows, diag = _curves(poisoned)
    assert rows == clean_rows  # the same validation and train curves, the same selected checkpoint
    assert len(diag) == len([r for r in rows if r["split"] == "val"])  # the diagnostic: test at every checkpoint
    assert [s for w, s in poisoned_calls if w == "trainer"] == ["val", "train", "test"] * 3
    assert [s for w, s in poisoned_calls if w == "runner"] == ["val", "test"]
    test_clean = json.loads((clean / "results.json").read_text())["tasks"]
    test_poisoned = json.loads((poisoned / "results.json").read_text())["tasks"]
    assert any(test_clean[t]["test"]["accuracy"] != test_poisoned[t]["test"]["accuracy"] for t in test_clean)
    assert "Checkpoints" in (poisoned / "report.md").read_text() and (poisoned / "plots" / "checkpoints.png").exists()


def test_strided_layers_outside_the_omniglot_network_is_one_clear_error(tmp_path, capsys):
    from sharewise.cli.main import main

    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--method", "gumbel_matrix", "--epochs", "1", "--no-progress",
               "--set", "method.strided_layers=[0]", "--set", "train.threads=1", "--set", "output.tensorboard=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not (out / "results.json").exists()
    assert "method.strided_layers: only the omniglot network has strided layers" in err and "mlp" in err
