"""FlatOptimizer: each parameter group stepped as one buffer, bit-identical to torch's optimisers."""

import pytest
import torch
from torch import nn

from sharewise.engine.optim import FlatOptimizer, build_optimizer, build_scheduler
from sharewise.methods.base import OptimSpec


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _groups(model):
    params = list(model.parameters())
    return {"backbone": params[:-2], "heads": params[-2:]}


def _train(model, optimizer, scheduler, steps, start=0):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


SPECS = [OptimSpec("adam", {"backbone": 1e-2, "heads": 3e-2}, weight_decay=1e-3, schedule="step", step_size=2),
         OptimSpec("adamw", {"backbone": 1e-2, "heads": 3e-2}, weight_decay=0.05, betas=(0.5, 0.9)),
         OptimSpec("sgd", {"backbone": 0.1, "heads": 0.05}, weight_decay=1e-4, momentum=0.9, schedule="cosine")]


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_flat_steps_are_bit_identical_to_torch_and_resume_from_state_dicts(spec):
    ref, flat = _model(), _model()
    ref_opt = build_optimizer(spec, _groups(ref))
    flat_opt = build_optimizer(spec, _groups(flat), flat=True)
    assert isinstance(flat_opt, FlatOptimizer) and not isinstance(ref_opt, FlatOptimizer)
    assert [len(g["params"]) for g in flat_opt.param_groups] == [6, 2]  # the model's own parameters
    ref_sched, flat_sched = build_scheduler(spec, ref_opt, 6), build_scheduler(spec, flat_opt, 6)
    _train(ref, ref_opt, ref_sched, 6)
    _train(flat, flat_opt, flat_sched, 3)
    # resume: a new model and optimiser from the state dicts, then the last 3 steps
    state = {"model": flat.state_dict(), "opt": flat_opt.state_dict(),
             "sched": flat_sched.state_dict() if flat_sched else None}
    resumed = _model()
    opt = build_optimizer(spec, _groups(resumed), flat=True)
    sched = build_scheduler(spec, opt, 6)
    resumed.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
    _train(resumed, opt, sched, 3, start=3)
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


def test_zero_grad_as_torch_and_a_missing_gradient_counts_as_zero():
    model = _model()
    opt = build_optimizer(SPECS[2], _groups(model), flat=True)  # SGD, momentum
    _train(model, opt, None, 1)
    first, last = list(model.parameters())[0], list(model.parameters())[-1]
    opt.zero_grad(set_to_none=False)
    assert first.grad is not None and not first.grad.any()
    opt.zero_grad()
    assert first.grad is None
    # a step that reaches only the last layer: the others take a zero gradient (their momentum
    # still moves them), unlike torch's per-tensor step, which skips them: hence dense phases only
    before = first.detach().clone()
    last.grad = torch.ones_like(last)
    opt.step()
    assert not torch.equal(first, before)
    values = opt._buffers[0][0]
    assert first.data_ptr() == values.data_ptr()  # still a view into the buffer


def test_moving_the_model_after_building_is_an_error_not_a_silent_no_op():
    model = _model()
    opt = build_optimizer(SPECS[0], _groups(model), flat=True)
    model.double()
    with pytest.raises(RuntimeError, match="moved or replaced"):
        opt.step()


def test_flat_needs_one_float_dtype_and_device():
    model = _model()
    groups = _groups(model)
    groups["heads"][0].data = groups["heads"][0].data.double()
    assert not isinstance(build_optimizer(SPECS[0], groups, flat=True), FlatOptimizer)


def test_one_tensor_a_group_is_not_flattened():
    logits = nn.Parameter(torch.zeros(3, 4, 2))  # AdaShare's policy group
    assert not isinstance(build_optimizer(OptimSpec("adam", {"policy": 0.01}), {"policy": [logits]}, flat=True),
                          FlatOptimizer)


def test_resume_from_a_per_tensor_optimiser_state_is_a_clear_error(tmp_path):
    from sharewise.cli.main import main
    from sharewise.engine.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--no-progress", "--set", "output.tensorboard=false",
            "--set", "backbone.width=8", "--set", "backbone.depth=1"]
    assert main(args) == 0
    last = out / "checkpoints" / "train" / "last.pt"
    ck = load_checkpoint(last)
    assert set(ck["optimizers"]["main"]) == {"flat", "groups"}
    ck["optimizers"]["main"] = ck["optimizers"]["main"]["flat"]  # the state a per-tensor optimiser saves
    ck["state"]["done"] = False
    save_checkpoint(last, ck)
    assert main([*args, "--resume"]) == 2
