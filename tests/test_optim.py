"""FlatOptimizer: each parameter group stepped as one buffer, bit-identical to torch's optimisers."""

import io
import socket

import pytest
import torch
from torch import nn

from sharewise.engine.optim import FlatOptimizer, build_optimizer, build_scheduler
from sharewise.methods.base import OptimSpec


def _model():
    """Every tensor whole cache lines (16 floats): torch's bits exactly, values and state."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 16))


def _groups(model):
    params = list(model.parameters())
    return {"backbone": params[:-2], "heads": params[-2:]}


def _train(model, optimizer, scheduler, steps, start=0, without_grad=None, check=None):
    """``without_grad``: step index -> indices into ``model.parameters()`` whose gradient is dropped
    before that step; ``check(i)`` runs after step ``i``."""
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(8, 6, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(model.parameters())
        for j in (without_grad or {}).get(i, []):
            params[j].grad = None
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if check is not None:
            check(i)


SPECS = [OptimSpec("adam", {"backbone": 1e-2, "heads": 3e-2}, weight_decay=1e-3, schedule="step", step_size=2),
         OptimSpec("adamw", {"backbone": 1e-2, "heads": 3e-2}, weight_decay=0.05, betas=(0.5, 0.9)),
         OptimSpec("sgd", {"backbone": 0.1, "heads": 0.05}, weight_decay=1e-4, momentum=0.9, schedule="cosine")]


# steps (0-based) whose gradients miss a parameter: the first layer's weight in steps 2 and 4 of 6,
# the whole heads group in step 5
WITHOUT_GRAD = {1: [0], 3: [0], 4: [6, 7]}


def _param_state(opt, p):
    """``p``'s optimiser state as a per-tensor optimiser holds it (a FlatOptimizer's buffer: its slice)."""
    if not isinstance(opt, FlatOptimizer):
        return opt.state.get(p, {})
    if opt._per_tensor is not None and p in opt._per_tensor.state:
        return opt._per_tensor.state[p]
    if p in opt.inner.state:
        return opt.inner.state[p]
    for flat in opt._flat:
        for q, offset in zip(flat.flattened, flat.offsets):
            if q is p and flat.param in opt.inner.state:
                return {k: v[offset:offset + p.numel()].view_as(p) if v.shape == flat.param.shape else v
                        for k, v in opt.inner.state[flat.param].items()}
    return {}


def _assert_same(ref, ref_opt, model, opt, where, *, ulps_for=()):
    """Values and state equal bit for bit; for the parameters named in ``ulps_for`` to float32
    rounding (the last bits of a tensor's last few elements)."""
    for (name, a), b in zip(ref.named_parameters(), model.parameters()):
        same = (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-7)) if name in ulps_for else torch.equal
        assert same(a, b), f"{name} after {where}"
        sa, sb = _param_state(ref_opt, a), _param_state(opt, b)
        assert sa.keys() == sb.keys(), f"{name}'s state after {where}"
        for key in sa:
            assert same(sa[key], sb[key]), f"{name}'s {key} after {where}"
    for (name, a), b in zip(ref.named_buffers(), model.buffers()):
        assert torch.equal(a, b), f"{name} after {where}"


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
    _assert_same(ref, ref_opt, resumed, opt, "resuming")  # the state too
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_tensors_not_of_whole_cache_lines_stay_beside_the_buffer_and_keep_torchs_bits(spec):
    """Torch's fused CPU kernels step a tensor's last (size % vector width) elements with scalar
    code. Padded into the buffer they would take vector code and may round otherwise (they did:
    a 3-float bias differed in its last bit), so they are stepped as themselves, beside the buffer."""
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))

    ref, flat = model(), model()
    ref_opt = build_optimizer(spec, _groups(ref))
    flat_opt = build_optimizer(spec, _groups(flat), flat=True)
    backbone = flat_opt._flat[0]
    assert [tuple(p.shape) for p in backbone.flattened] == [(16, 5), (16,)]  # 80 and 16 floats
    assert backbone.offsets == [0, 80]
    assert [tuple(p.shape) for p in backbone.separate] == [(5, 6), (5,)]
    heads = flat_opt._flat[1]  # 3x16 weight (3 cache lines) and a 3-float bias
    assert [tuple(p.shape) for p in heads.flattened] == [(3, 16)] and [tuple(p.shape) for p in heads.separate] == [(3,)]
    _train(ref, ref_opt, None, 6)
    _train(flat, flat_opt, None, 6)
    _assert_same(ref, ref_opt, flat, flat_opt, "6 steps")
    # and across the switch to per-tensor stepping, and a state dict round trip
    _train(ref, ref_opt, None, 3, start=6, without_grad={7: [0]})
    _train(flat, flat_opt, None, 3, start=6, without_grad={7: [0]})
    _assert_same(ref, ref_opt, flat, flat_opt, "the switch")
    again = model()
    again.load_state_dict(flat.state_dict())
    again_opt = build_optimizer(spec, _groups(again), flat=True)
    again_opt.load_state_dict(io_round_trip(flat_opt.state_dict()))
    _train(ref, ref_opt, None, 2, start=9)
    _train(again, again_opt, None, 2, start=9)
    _assert_same(ref, ref_opt, again, again_opt, "resuming after the switch")


def io_round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_zero_grad_as_torch_and_a_parameter_without_a_gradient_stays_put():
    model = _model()
    opt = build_optimizer(SPECS[2], _groups(model), flat=True)  # SGD, momentum
    _train(model, opt, None, 1)
    first, last = list(model.parameters())[0], list(model.parameters())[-1]
    opt.zero_grad(set_to_none=False)
    assert first.grad is not None and not first.grad.any()
    opt.zero_grad()
    assert first.grad is None
    # a step that reaches only the last layer: the others are not stepped (their momentum would
    # move them), as torch's per-tensor step skips them
    before, momentum = first.detach().clone(), _param_state(opt, first)["momentum_buffer"].clone()
    last.grad = torch.ones_like(last)
    opt.step()
    assert torch.equal(first, before) and torch.equal(_param_state(opt, first)["momentum_buffer"], momentum)
    assert first.data_ptr() == opt._flat[0].param.data_ptr()  # still a view into the buffer
    assert last.grad is not None
    opt.zero_grad()  # the groups stepped per tensor too
    assert last.grad is None


@pytest.mark.parametrize("per_tensor", [False, True], ids=["flat", "per_tensor"])
def test_moving_the_model_after_building_is_an_error_not_a_silent_no_op(per_tensor):
    model = _model()
    opt = build_optimizer(SPECS[0], _groups(model), flat=True)
    if per_tensor:  # every group stepped per tensor after a step without gradients
        opt.step()
        assert opt._per_tensor_groups == [0, 1]
    model.double()
    with pytest.raises(RuntimeError, match="moved or replaced"):
        opt.step()


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_a_parameter_without_a_gradient_is_not_stepped_as_in_torch(spec):
    ref, flat = _model(), _model()
    ref_opt = build_optimizer(spec, _groups(ref))
    flat_opt = build_optimizer(spec, _groups(flat), flat=True)
    ref_sched, flat_sched = build_scheduler(spec, ref_opt, 6), build_scheduler(spec, flat_opt, 6)
    _train(ref, ref_opt, ref_sched, 6, without_grad=WITHOUT_GRAD)
    states = []
    _train(flat, flat_opt, flat_sched, 6, without_grad=WITHOUT_GRAD,
           check=lambda i: states.append(list(flat_opt._per_tensor_groups)))
    assert states == [[], [0], [0], [0], [0, 1], [0, 1]]  # a group goes per tensor at its first gap
    _assert_same(ref, ref_opt, flat, flat_opt, "6 steps")
    first = next(flat.parameters())
    if spec.kind != "sgd":
        assert _param_state(flat_opt, first)["step"].item() == 4  # its own count: 2 of 6 steps skipped
    assert first.data_ptr() == flat_opt._flat[0].param.data_ptr()  # the parameters are still the buffer's views
    assert flat_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("spec", SPECS[:2], ids=[s.kind for s in SPECS[:2]])
def test_a_parameter_first_reached_late_starts_its_state_then(spec):
    """A buffer's parameter and a separate one (the 3-float bias) without a gradient in the first
    steps (torch's fused SGD fails on that per tensor, hence Adam and AdamW)."""
    ref, flat = _model(), _model()
    ref_opt, flat_opt = build_optimizer(spec, _groups(ref)), build_optimizer(spec, _groups(flat), flat=True)
    late = {0: [2, 7], 1: [2]}
    _train(ref, ref_opt, None, 4, without_grad=late)
    _train(flat, flat_opt, None, 4, without_grad=late)
    _assert_same(ref, ref_opt, flat, flat_opt, "4 steps")
    assert _param_state(flat_opt, list(flat.parameters())[2])["step"].item() == 2


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
@pytest.mark.parametrize("saved_after", [1, 3], ids=["before_switch", "after_switch"])
@pytest.mark.parametrize("into", ["fresh", "used"])
def test_state_dicts_resume_bit_identically_across_the_switch_to_per_tensor(spec, saved_after, into):
    """Saved before the backbone goes per tensor (after step 1) or between the backbone's switch and
    the heads' (after step 3); loaded into a new optimiser or into the one that saved it, already
    per tensor by then; the last steps equal an uninterrupted per-tensor run's, state included."""
    ref = _model()
    ref_opt = build_optimizer(spec, _groups(ref))
    ref_sched = build_scheduler(spec, ref_opt, 6)
    _train(ref, ref_opt, ref_sched, 6, without_grad=WITHOUT_GRAD)

    flat = _model()
    flat_opt = build_optimizer(spec, _groups(flat), flat=True)
    flat_sched = build_scheduler(spec, flat_opt, 6)
    _train(flat, flat_opt, flat_sched, saved_after, without_grad=WITHOUT_GRAD)
    buffer = io.BytesIO()
    torch.save({"model": flat.state_dict(), "opt": flat_opt.state_dict(),
                "sched": flat_sched.state_dict() if flat_sched else None}, buffer)
    assert ("per_tensor" in flat_opt.state_dict()) == (saved_after == 3)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as checkpoints are read
    if into == "fresh":
        model = _model()
        opt = build_optimizer(spec, _groups(model), flat=True)
        sched = build_scheduler(spec, opt, 6)
    else:
        model, opt, sched = flat, flat_opt, flat_sched
        _train(model, opt, sched, 6 - saved_after, start=saved_after, without_grad=WITHOUT_GRAD)
        assert opt._per_tensor_groups == [0, 1]
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
    assert opt._per_tensor_groups == ([0] if saved_after == 3 else [])
    _train(model, opt, sched, 6 - saved_after, start=saved_after, without_grad=WITHOUT_GRAD)
    assert opt._per_tensor_groups == [0, 1]
    _assert_same(ref, ref_opt, model, opt, "resuming")
    assert opt.param_groups[1]["lr"] == ref_opt.param_groups[1]["lr"]


def test_a_per_tensor_state_for_groups_that_do_not_exist_is_a_clear_error():
    model = _model()
    opt = build_optimizer(SPECS[0], _groups(model), flat=True)
    opt.step()
    state = opt.state_dict()
    state["per_tensor"]["groups"] = [0, 2]
    with pytest.raises(ValueError, match="per tensor"):
        build_optimizer(SPECS[0], _groups(_model()), flat=True).load_state_dict(state)


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


def _average_gradients_replica(rank, world, port):
    from sharewise.engine.trainer import _average_gradients

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        both, rank0_only, neither = (nn.Parameter(torch.zeros(3)) for _ in range(3))
        frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        both.grad = torch.full((3,), float(rank + 1))
        if rank == 0:
            rank0_only.grad = torch.tensor([2.0, 4.0, 6.0])
        _average_gradients([both, rank0_only, neither, frozen])
        assert torch.equal(both.grad, torch.full((3,), 1.5))
        assert torch.equal(rank0_only.grad, torch.tensor([1.0, 2.0, 3.0]))  # the mean, zero on rank 1
        assert neither.grad is None and frozen.grad is None  # not stepped, as with one process
    finally:
        torch.distributed.destroy_process_group()


def test_average_gradients_in_one_process_keeps_gradients_and_their_absence():
    from sharewise.engine.trainer import _average_gradients

    reached, missed = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    reached.grad = torch.tensor([1.0, 2.0, 3.0])
    _average_gradients([reached, missed])
    assert torch.equal(reached.grad, torch.tensor([1.0, 2.0, 3.0])) and missed.grad is None


def test_average_gradients_on_two_gloo_processes():
    """A gradient on some rank: the mean (zeros for the others); on none: still none."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_average_gradients_replica, args=(2, port), nprocs=2, join=True)


def test_a_group_without_a_tensor_of_whole_cache_lines_has_no_buffer():
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    ref, flat = model(), model()
    groups = lambda m: {"backbone": list(m.parameters())[:3], "heads": list(m.parameters())[3:]}  # noqa: E731
    ref_opt = build_optimizer(SPECS[0], groups(ref))
    flat_opt = build_optimizer(SPECS[0], groups(flat), flat=True)
    assert flat_opt._flat[1].param is None and len(flat_opt._flat[1].separate) == 1  # the 3-float bias
    _train(ref, ref_opt, None, 4)
    _train(flat, flat_opt, None, 4)
    _assert_same(ref, ref_opt, flat, flat_opt, "4 steps")
