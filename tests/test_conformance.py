"""Every registered method keeps the method contract (docs/ARCHITECTURE.md, "Writing a method").

Parametrised over ``sharewise.methods.methods()``: a method registered later is tested here with
no list to update. Each runs with its ``conformance_options`` on both dataset shapes: a shared-
input table (categorical and numerical targets, some missing) and per-task images (two views of
an MNIST-format set, each task its own examples).
"""

from __future__ import annotations

import pytest
import torch

from sharewise.config import validate_config
from sharewise.methods import methods
from test_images import make_idx

METHODS = sorted(methods())
SHAPES = ["shared", "per_task"]


def _config(method: str, shape: str, data_path, out, **train):
    if shape == "shared":
        data = {"path": str(data_path), "id_col": "subject"}
        tasks = [{"name": "sex", "kind": "categorical"}, {"name": "age", "kind": "numerical"},
                 {"name": "race.ethnicity", "kind": "categorical"}]
    else:
        data = {"path": str(data_path), "task_views": {"upright": {}, "turned": {"rot90": 1}}}
        tasks = []
    return validate_config({
        "data": data, "tasks": tasks,
        "backbone": {"name": "mlp", "width": 16, "depth": 2},
        "method": {"name": method, **methods()[method].conformance_options},
        "train": {"epochs": 1, "max_steps": 6, "batch_size": 16, "threads": 1, "progress": False, **train},
        "output": {"dir": str(out), "tensorboard": False}})


@pytest.fixture
def data_path(request, tmp_path, people_csv):
    return people_csv if request.param == "shared" else make_idx(tmp_path / "idx", n_train=120, n_test=40)


def _tensors(path):
    from sharewise.engine.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def _first_batch(ctx, split="test"):
    from sharewise.engine.evaluate import to_device

    return to_device(next(iter(ctx.data.batches(split, 8))), ctx.device)


def _inputs(batch):
    return batch[0] if isinstance(batch, tuple) else next(iter(batch.values()))[0]


@pytest.mark.filterwarnings("ignore")  # tiny runs: AdaShare's sizing warnings
@pytest.mark.parametrize("data_path", SHAPES, indirect=True, ids=SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_method_keeps_the_contract(method, data_path, tmp_path, monkeypatch):
    from sharewise.cost import flop_counts, parameter_counts
    from sharewise.engine import trainer as trainer_mod
    from sharewise.engine.runner import load_candidate, prepare, read_selection, test, train
    from sharewise.export import export_run, load_exported

    shape = "shared" if data_path.suffix == ".csv" else "per_task"
    ctx = prepare(_config(method, shape, data_path, tmp_path / "ref"))
    model, tasks = ctx.model, ctx.tasks
    assert ctx.data.shape == shape

    # outputs per task, of the task's width, for every example of a batch
    batch = _first_batch(ctx)
    x = _inputs(batch)
    with torch.no_grad():
        out = model.eval()(x)
    model.train()
    assert list(out) == [t.name for t in tasks]
    assert all(out[t.name].shape == (x.shape[0], t.out_features) for t in tasks)
    with torch.no_grad():
        one = model.eval()(x, tasks=[tasks[-1].name])
    model.train()
    assert list(one) == [tasks[-1].name] and torch.allclose(one[tasks[-1].name], out[tasks[-1].name], atol=1e-6)

    # the parameter groups partition the trainable parameters
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}

    # an uninterrupted run, and one stopped after two steps (the engine's Ctrl-C path) and resumed
    # selection reads validation only; test is evaluated once per candidate, after it
    from sharewise.engine import runner as runner_mod

    seen = []
    for module in (runner_mod, trainer_mod):
        real = module.evaluate

        def recording(model_, data, split, *args, _real=real, **kwargs):
            seen.append(split)
            return _real(model_, data, split, *args, **kwargs)

        monkeypatch.setattr(module, "evaluate", recording)
    selection = train(ctx)
    assert seen and "test" not in seen
    seen.clear()
    reference = test(ctx, overwrite=True)
    assert seen == ["test"] * len(selection["candidates"])
    monkeypatch.undo()
    original = trainer_mod.Trainer._optimizer_step
    calls = {"n": 0}

    def stop_after_two(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            self._stop = True
        return result

    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", stop_after_two)
    with pytest.raises(trainer_mod.Interrupted):
        train(prepare(_config(method, shape, data_path, tmp_path / "resumed")))
    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", original)
    resumed_ctx = prepare(_config(method, shape, data_path, tmp_path / "resumed"))
    train(resumed_ctx, resume=True)
    resumed = test(resumed_ctx, overwrite=True)
    for t in tasks:
        assert resumed["tasks"][t.name]["test"] == reference["tasks"][t.name]["test"]
        assert resumed["tasks"][t.name]["val"] == reference["tasks"][t.name]["val"]
    selection = read_selection(tmp_path / "ref")
    assert read_selection(tmp_path / "resumed")["score"] == selection["score"]
    a, b = _tensors(tmp_path / "ref" / selection["checkpoint"]), _tensors(tmp_path / "resumed" / selection["checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the exported model gives the selected model's outputs
    entry = next(c for c in selection["candidates"] if c["name"] == selection["selected"])
    selected, _ = load_candidate(ctx, entry)
    selected.eval()
    export_run(tmp_path / "ref", tmp_path / "model.pt", program=False)
    exported = load_exported(tmp_path / "model.pt")
    with torch.no_grad():
        mine, theirs = selected(x), exported(x)
    assert all(torch.allclose(mine[t.name], theirs[t.name], atol=1e-6) for t in tasks)

    # cost accounting: a task's path is exactly the parameters its output depends on
    counts = parameter_counts(selected)
    assert reference["parameters"] == counts
    assert counts["total"] == sum(p.numel() for p in selected.parameters())
    probe = torch.randn(5, *x.shape[1:])
    for index, t in enumerate(tasks):
        selected.zero_grad(set_to_none=True)
        selected(probe, tasks=[t.name])[t.name].square().sum().backward()
        reached = 0
        for module in selected.modules():
            rows = getattr(module, "per_task_rows", False)
            for p in module.parameters(recurse=False):
                if p.grad is None or not p.grad.abs().sum() > 0:
                    continue
                if rows:  # a row per task: only the task's own row may move
                    moved = p.grad.flatten(1).abs().sum(1) > 0
                    assert moved.tolist() == [i == index for i in range(p.shape[0])]
                    reached += p[index].numel()
                else:
                    reached += p.numel()
        assert reached == counts["per_task"][t.name], f"task {t.name}: path parameters differ from task_modules"
    flops = flop_counts(selected, x[0])
    assert reference["flops"] == flops
    assert all(v > 0 for v in flops["per_task"].values())
    assert max(flops["per_task"].values()) <= flops["all_tasks"] <= flops["naive"]


@pytest.mark.parametrize("method", METHODS)
def test_bad_method_option_is_one_line_naming_the_key(method, people_csv, tmp_path, capsys):
    from sharewise.cli.main import main

    out = tmp_path / "bad"
    rc = main(["run", "--data", str(people_csv), "--cat-target", "sex", "--method", method, "--out", str(out),
               "--no-progress", "--set", "method.no_such_option=3"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc != 0 and len(err) == 1 and "method.no_such_option" in err[0], err
    assert not out.exists()


def test_methods_are_found_without_a_list(tmp_path, monkeypatch):
    """A new module in ``sharewise/methods/`` is registered by importing it: nothing else to edit."""
    import sys

    import sharewise.methods as package
    import sharewise.methods.base as base

    source = ("from sharewise.methods.hard import Hard\nfrom sharewise.methods.base import register_method\n\n"
              "@register_method\nclass Copy(Hard):\n    name = 'zz_conformance_copy'\n    description = 'a copy'\n")
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "zz_conformance_copy.py").write_text(source)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(base, "_DISCOVERED", False)
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))
    try:
        assert "zz_conformance_copy" in methods() and "hard" in methods()
    finally:
        sys.modules.pop("sharewise.methods.zz_conformance_copy", None)
