"""AdaShare: properties of the gating, the policy mathematics (spec adashare.md §15) and the
train → retrain → test workflow on the built-in digits set (tiny sizes, seconds)."""

import json
import math

import pytest
import torch

from sharewise.backbones import backbone_factory
from sharewise.cli.main import main
from sharewise.config import validate_config
from sharewise.data.base import InputSpec
from sharewise.errors import ConfigError, RunDirError
from sharewise.methods.adashare import policy as P
from sharewise.methods.adashare import AdaShare, AdaShareArchitecture, AdaShareNet, RemovedBlock, load_matching
from sharewise.seeding import stream_seed
from sharewise.tasks import Task

TASKS = [Task("a", "categorical", classes=[0, 1, 2]), Task("b", "numerical"), Task("c", "categorical", classes=[0, 1])]
BACKBONES = [
    ("mlp", InputSpec("vector", (6,)), {"widths": [8, 12, 12]}),  # block 1 has a projection shortcut
    ("resnet2d", InputSpec("image", (2, 8, 8)), {"widths": [4, 8], "blocks": [2, 1]}),
    ("convnet", InputSpec("image", (1, 12, 12)), {"widths": [4, 4, 8]}),  # plain blocks, pooling shortcuts
]


def _net(name, spec, opts, **kw):
    torch.manual_seed(0)
    factory = backbone_factory(name, opts, spec)
    return AdaShareNet(factory(), TASKS, **kw), factory


def _fixed_forward(net, x, decisions):
    """The fixed architecture a binary policy encodes, written out by hand."""
    out = {}
    for i, t in enumerate(net.task_names):
        h = net.backbone.stem(x)
        for block, u in zip(net.backbone.blocks, decisions[i]):
            h = block(h) if u else block.shortcut(h)
        out[t] = net.heads[t](net.backbone.pool(h))
    return out


@pytest.mark.parametrize("name,spec,opts", BACKBONES)
def test_one_hot_policy_equals_the_fixed_architecture(name, spec, opts):
    net, factory = _net(name, spec, opts)
    net.eval()
    x = torch.randn(5, *spec.shape)
    decisions = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    got = net(x, policy=P.decisions_to_policy(decisions))
    want = _fixed_forward(net, x, decisions)
    arch = AdaShareArchitecture(factory(), TASKS, {t: decisions[i].tolist() for i, t in enumerate(net.task_names)})
    load_matching(arch, net.state_dict(), "test")
    arch.eval()
    pruned = arch(x)
    assert arch.removed == [1]
    for t in net.task_names:
        torch.testing.assert_close(got[t], want[t], rtol=0, atol=1e-6)
        torch.testing.assert_close(pruned[t], want[t], rtol=0, atol=1e-6)
        torch.testing.assert_close(arch(x, tasks=[t])[t], want[t], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,spec,opts", BACKBONES)
def test_all_execute_equals_the_plain_backbone(name, spec, opts):
    net, _ = _net(name, spec, opts)
    net.eval()
    x = torch.randn(4, *spec.shape)
    ones = P.decisions_to_policy(torch.ones(3, net.num_gated, dtype=torch.bool))
    gated, plain = net(x, policy=ones), net(x)
    for t in net.task_names:
        torch.testing.assert_close(gated[t], net.heads[t](net.backbone(x)), rtol=0, atol=0)
        torch.testing.assert_close(plain[t], gated[t], rtol=0, atol=0)


def test_residual_is_added_once_in_every_gated_block():
    net, _ = _net(*BACKBONES[1])
    net.eval()
    h = net.backbone.stem(torch.randn(2, 2, 8, 8))
    for block in net.backbone.blocks:
        torch.testing.assert_close(block(h), block.act(block.shortcut(h) + block.residual(h)))
        h = block(h)
    with pytest.raises(ConfigError, match="shortcut"):
        bad = backbone_factory("mlp", {"width": 4, "depth": 1}, InputSpec("vector", (4,)))()
        bad.blocks[0] = torch.nn.Linear(4, 4)
        AdaShareNet(bad, TASKS)


def test_skipped_block_gets_zero_gradient_under_a_hard_policy():
    net, _ = _net(*BACKBONES[0])
    with torch.no_grad():
        net.policy.logits.zero_()
        net.policy.logits[:, 1, 1] = 50.0  # every task skips block 1
        net.policy.logits[:, [0, 2], 0] = 50.0  # and executes the others
    g = torch.Generator().manual_seed(3)
    policy = P.sample_policy(net.policy.logits, 1.0, net.num_gated, g, hard=True)
    assert set(policy.detach().unique().tolist()) <= {0.0, 1.0}  # exact 0/1 values
    out = net(torch.randn(6, 6), policy=policy)
    sum(o.pow(2).sum() for o in out.values()).backward()
    skipped = net.backbone.blocks[1]
    for n, p in skipped.named_parameters():
        if not n.startswith("shortcut"):
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0, n
    assert any(torch.count_nonzero(p.grad) for p in net.backbone.blocks[0].parameters())
    assert torch.count_nonzero(net.policy.logits.grad) > 0  # straight-through gradient reaches the logits


def test_curriculum_padding_rows_are_exact_and_get_no_task_or_sparsity_gradient():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 2, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    policy = P.sample_policy(logits, 5.0, 2, g)
    assert torch.equal(policy[:, :2].detach(), torch.tensor([1.0, 0.0]).expand(3, 2, 2))
    assert not torch.equal(policy[:, 2:].detach(), torch.tensor([1.0, 0.0]).expand(3, 2, 2))
    task_like = (policy * torch.randn(3, 4, 2)).sum()
    (task_like + P.sparsity_loss(logits, 2)).backward()
    assert torch.count_nonzero(logits.grad[:, :2]) == 0 and torch.count_nonzero(logits.grad[:, 2:]) > 0
    # the sharing term covers every block (§6.3) unless curriculum_freeze_logits detaches them
    net, _ = _net(*BACKBONES[0])
    with torch.no_grad():
        net.policy.logits.copy_(torch.randn(3, 3, 2))
    net.aux_losses(window=1, sharing_weight=1.0)["sharing"].backward()
    assert torch.count_nonzero(net.policy.logits.grad[:, :2]) > 0
    net.policy.logits.grad = None
    net.aux_losses(window=1, sharing_weight=1.0, freeze_below_window=True)["sharing"].backward()
    assert torch.count_nonzero(net.policy.logits.grad[:, :2]) == 0


def _hand_logits():
    ln3 = math.log(3.0)
    # p_exec: task 0 = (0.5, 0.75), task 1 = (0.75, 0.25)
    return torch.tensor([[[0.0, 0.0], [ln3, 0.0]], [[ln3, 0.0], [0.0, ln3]]], dtype=torch.float64)


def test_sparsity_losses_on_hand_computed_logits():
    phi = _hand_logits()
    ln2, ln43 = math.log(2.0), math.log(4.0 / 3.0)
    assert P.sparsity_loss(phi, 2).item() == pytest.approx(1.5 * ln2 + (2 * ln2 + ln43) / 2)
    assert P.sparsity_loss(phi, 1).item() == pytest.approx(2 * ln2 + ln43)  # top block only
    assert P.sparsity_loss(phi, 2, depth_weights=True).item() == pytest.approx(2.5 * ln2 + ln2 + ln43)
    assert P.sparsity_loss(phi, 2, "log_exec").item() == pytest.approx(
        math.log(0.5) + 2 * math.log(0.75) + math.log(0.25))
    assert P.sparsity_loss(phi, 1, "log_exec").item() == pytest.approx(math.log(0.75) + math.log(0.25))


def test_sharing_losses_on_hand_computed_logits():
    phi = _hand_logits()
    ln3 = math.log(3.0)
    # paper: weights (L − l)/L = 1, 1/2 on |Δp| = 0.25, 0.5
    assert P.sharing_loss(phi, "paper").item() == pytest.approx(1.0 * 0.25 + 0.5 * 0.5)
    # reference: weights (l + 1)/L = 1/2, 1 on |ΔΦ[.,.,0]| = ln 3, ln 3; weight 1 without depth weights
    assert P.sharing_loss(phi, "reference").item() == pytest.approx(1.5 * ln3)
    assert P.sharing_loss(phi, "reference", depth_weights=False).item() == pytest.approx(2 * ln3)
    # the reference form ignores column 1: equal execute logits, different probabilities, no penalty
    quirk = torch.tensor([[[0.0, 0.0]], [[0.0, 5.0]]])
    assert P.sharing_loss(quirk, "reference").item() == 0.0 and P.sharing_loss(quirk, "paper").item() > 0.4
    # three tasks (0, 1, 0 again): a sum over the unordered pairs (0,1) + (0,2) + (1,2); one task: 0
    three = torch.cat([phi, phi[:1]])
    assert P.sharing_loss(three).item() == pytest.approx(0.5 + 0.0 + 0.5)
    assert P.sharing_loss(phi[:1]).item() == 0.0


def test_temperature_schedule_and_window_formula():
    for e in (0, 1, 21, 45, 60, 100):
        assert P.temperature(e) == pytest.approx(5 * 0.965 ** e)
    assert P.temperature(21) == pytest.approx(2.37, abs=0.01) and P.temperature(60) == pytest.approx(0.59, abs=0.01)
    assert P.temperature(200, min_temp=0.1) == 0.1
    for L, speed in ((8, 3), (16, 3), (5, 1)):
        for e in range(60):
            assert P.window_size(e, L, speed) == min(L, e // speed + 1)
        assert P.curriculum_complete_cycle(L, speed) == (L - 1) * speed
        assert P.window_size(P.curriculum_complete_cycle(L, speed), L, speed) == L
        assert P.window_size(P.curriculum_complete_cycle(L, speed) - 1, L, speed) == L - 1
    assert P.window_size(0, 8, 3, curriculum=False) == 8
    assert P.curriculum_complete_cycle(8, 3) == 21 and P.curriculum_complete_cycle(16, 3) == 45


def test_init_modes():
    assert torch.equal(P.exec_prob(P.init_logits(2, 3, "equal")), torch.full((2, 3), 0.5))
    assert P.init_logits(2, 3, "random").abs().max() < 1e-2
    assert P.exec_prob(P.init_logits(2, 3, "all_chosen", -10.0)).min() > 0.9999


def test_same_seed_same_architecture_and_argmax_ties_execute():
    probs = torch.rand(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = P.sample_decisions(probs, 123), P.sample_decisions(probs, 123)
    assert torch.equal(a, b)
    assert any(not torch.equal(a, P.sample_decisions(probs, s)) for s in range(1, 5))
    tie = P.exec_prob(torch.full((2, 3, 2), 0.7))
    assert torch.equal(tie, torch.full((2, 3), 0.5))
    assert P.argmax_decisions(tie).all()
    assert P.argmax_decisions(torch.tensor([[0.4999, 0.5001]])).tolist() == [[False, True]]


def test_method_architectures_record_their_seed():
    cfg = validate_config({"method": {"name": "adashare", "arch_seeds": [11, 12]}, "train": {"seed": 5}})
    method = AdaShare(AdaShare.Options.model_validate(cfg.method.options), cfg)
    search = {"tasks": ["a", "b"], "blocks": ["block0", "block1", "block2"],
              "exec_prob": {"a": [0.5, 0.0, 0.9], "b": [0.5, 0.0, 0.1]}}
    first, again = method.architecture(1, search), method.architecture(1, search)
    assert first == again and first["seed"] == 12 and first["kind"] == "sampled"
    assert first["removed_blocks"] == ["block1"] and first["num_removed"] == 1
    arg = method.architecture("argmax", search)
    assert arg["policy"] == {"a": [1, 0, 1], "b": [1, 0, 0]} and arg["kind"] == "argmax"
    with pytest.raises(ConfigError, match="arch_seeds"):
        method.arch_seed(2)
    cfg = validate_config({"method": {"name": "adashare"}, "train": {"seed": 5, "exp_ids": [0, "argmax", "3"]}})
    method = AdaShare(AdaShare.Options(), cfg)
    assert method.arch_seed(3) == stream_seed(5, "arch_sample", 3)
    assert method.exp_ids() == [0, "argmax", 3]


def test_removed_block_owns_no_parameters():
    _, factory = _net(*BACKBONES[0])
    full = AdaShareArchitecture(factory(), TASKS, {t: [1, 1, 1] for t in "abc"})
    pruned = AdaShareArchitecture(factory(), TASKS, {"a": [1, 0, 0], "b": [0, 0, 1], "c": [1, 0, 1]})
    assert pruned.removed == [1] and isinstance(pruned.backbone.blocks[1], RemovedBlock)
    removed = full.backbone.blocks[1]
    residual = sum(p.numel() for n, p in removed.named_parameters() if not n.startswith("shortcut"))
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(pruned) == total(full) - residual
    assert [n for n, _ in pruned.backbone.blocks[1].named_parameters()] == ["shortcut.weight"]  # projection stays
    assert pruned(torch.randn(3, 6))["b"].shape == (3, 1)


def test_gumbel_noise_is_reproducible_per_step():
    logits = torch.zeros(2, 3, 2)

    def draw(step):
        g = torch.Generator().manual_seed(stream_seed(0, "gumbel", step))
        return P.sample_policy(logits, 1.0, 3, g)

    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))


def test_sizing_warnings():
    cfg = validate_config({"method": {"name": "adashare"}})
    method = AdaShare(AdaShare.Options(search_cycles=10), cfg)
    problems = method.check_sizing(method.plan(20, 10, 10), num_blocks=8)
    assert any("never completes" in p for p in problems) and any("temperature ends" in p for p in problems)
    method = AdaShare(AdaShare.Options(search_cycles=50), cfg)
    assert method.check_sizing(method.plan(20, 10, 10), num_blocks=3) == []
    from sharewise.config import validate_options

    with pytest.raises(ConfigError, match="cycle_iters"):
        validate_options(AdaShare.Options, {"cycle_iters": [3]}, "method")
    with pytest.raises(ConfigError, match="method.sparsity_form"):
        validate_options(AdaShare.Options, {"sparsity_form": "l1"}, "method")


# ------------------------------------------------------------------------------ end to end

TINY = ["--no-progress", "--set", "train.threads=1", "--set", "backbone.width=16", "--set", "backbone.depth=2",
        "--set", "method.search_cycles=4", "--set", "method.cycle_iters=[2,2]", "--set", "method.warm_up_iters=4",
        "--set", "method.retrain_total_iters=6", "--set", "train.eval_every=6", "--set", "output.tensorboard=false",
        "--set", "method.curriculum_speed=1"]


def test_run_end_to_end_on_digits(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "adashare", "--out", str(out), "--exp-ids", "0", "1", "argmax", *TINY]) == 0
    policy = json.loads((out / "policy.json").read_text())
    assert policy["tasks"] == ["digit", "parity", "large", "value"] and policy["blocks"] == ["block0", "block1"]
    assert policy["curriculum_complete"] and policy["window"] == 2
    assert policy["temperature"] == pytest.approx(5 * 0.965 ** policy["cycle"])
    assert [h["temperature"] for h in policy["history"]] == pytest.approx([5 * 0.965 ** e for e in range(1, 5)])
    for t in policy["tasks"]:
        assert policy["exec_prob"][t] == pytest.approx(P.exec_prob(torch.tensor(policy["logits"][t])).tolist())
    archs = {a["name"]: a for a in policy["architectures"]}
    assert set(archs) == {"arch_0", "arch_1", "arch_argmax"}
    assert sum(a["selected"] for a in archs.values()) == 1 and all(a["val_score"] is not None for a in archs.values())
    assert archs["arch_0"]["seed"] == stream_seed(0, "arch_sample", 0) and archs["arch_argmax"]["kind"] == "argmax"
    for name in archs:
        assert (out / name / "checkpoints" / "retrain" / "best.pt").exists()
    assert (out / "checkpoints" / "init.pt").exists() and (out / "checkpoints" / "search" / "best.pt").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["candidates"]["n"] == 3 and results["selection"]["selected"] in archs
    assert {"mean", "sd", "n"} <= set(results["candidates"]["mean_sd"]["digit"]["accuracy"])
    report = (out / "report.md").read_text()
    assert "## AdaShare" in report
    for png in ("adashare_exec_prob", "adashare_architecture", "adashare_sharing", "adashare_exec_prob_history",
                "adashare_curves"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000, png
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("aux/sparsity" in r and "aux/sharing" in r for r in records if r["phase"] == "search")


def _tensors(path):
    return torch.load(path, weights_only=True)["model"]


def test_train_retrain_test_workflow_and_noop_resume(tmp_path, capsys):
    out = tmp_path / "wf"
    common = ["--method", "adashare", "--out", str(out), "--cat-target", "digit", "--num-target", "value", *TINY]
    assert main(["train", *common]) == 0
    assert not any(out.glob("arch_*")) and json.loads((out / "selection.json").read_text())["candidates"] == []
    assert main(["test", *common]) == 2 and "sharewise retrain" in capsys.readouterr().err
    before = {p.name: _tensors(p) for p in (out / "checkpoints" / "search").glob("*.pt")}
    n_records = len((out / "metrics.jsonl").read_text().splitlines())
    policy = json.loads((out / "policy.json").read_text())
    assert main(["train", *common, "--resume"]) == 0  # a finished search: nothing to do
    for name, state in before.items():
        after = _tensors(out / "checkpoints" / "search" / name)
        assert all(torch.equal(state[k], after[k]) for k in state)
    new = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()[n_records:]]
    assert all(r.get("event") == "resumed" or "split" not in r or r["split"] != "train" for r in new)
    assert json.loads((out / "policy.json").read_text())["logits"] == policy["logits"]
    assert main(["retrain", *common, "--exp_ids", "0", "2"]) == 0
    assert main(["retrain", *common, "--exp-ids", "0"]) == 2  # its outputs exist
    assert main(["retrain", *common, "--exp-ids", "1"]) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sorted(c["name"] for c in sel["candidates"]) == ["arch_0", "arch_1", "arch_2"]
    assert main(["test", *common, "--exp-ids", "0", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["candidates"]["n"] == 2 and res["selection"]["selected"] in ("arch_0", "arch_1")
    archs = json.loads((out / "policy.json").read_text())["architectures"]
    assert [a["exp_id"] for a in archs] == [0, 2, 1] and sum(a["selected"] for a in archs) == 1


def test_single_task_adashare_has_no_sharing_loss(tmp_path):
    out = tmp_path / "one"
    assert main(["train", "--method", "adashare", "--out", str(out), "--cat-target", "parity", *TINY]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    search = [r for r in records if r.get("phase") == "search" and r.get("split") == "train"]
    assert search and all("aux/sharing" not in r for r in search) and any("aux/sparsity" in r for r in search)


def _stop_and_resume(monkeypatch, cfg, out, step, how):
    """Train ``cfg(out)`` until search step ``step``, stopped by ``how`` (``"ctrl-c"``: the engine's
    stop flag, which saves; ``"kill"``: an exception, which saves nothing), then resume it."""
    from sharewise.engine import trainer as trainer_mod
    from sharewise.engine.runner import prepare, train

    original = trainer_mod.Trainer._optimizer_step

    class Killed(Exception):
        pass

    def stop(self, phase, stretch, state, *a, **k):
        result = original(self, phase, stretch, state, *a, **k)
        if phase.name == "search" and state.step == step:
            if how == "kill":
                raise Killed
            self._stop = True
        return result

    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", stop)
    with pytest.raises(Killed if how == "kill" else trainer_mod.Interrupted):
        train(prepare(cfg(out)), stage="train")
    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", original)
    return train(prepare(cfg(out)), stage="train", resume=True)


def _same_search(ref, other):
    a = _tensors(ref / "checkpoints" / "search" / "last.pt")
    b = _tensors(other / "checkpoints" / "search" / "last.pt")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_search_resumes_to_the_same_policy(tmp_path, monkeypatch):
    from sharewise.engine.runner import prepare, train

    def cfg(out):
        return validate_config({
            "method": {"name": "adashare", "search_cycles": 4, "cycle_iters": [2, 2], "warm_up_iters": 3,
                       "init_method": "random", "curriculum_freeze_logits": True, "curriculum_speed": 3},
            "backbone": {"width": 16, "depth": 3}, "tasks": [{"name": "digit", "kind": "categorical"},
                                                            {"name": "large", "kind": "categorical"}],
            "train": {"threads": 1, "progress": False}, "output": {"dir": str(out), "tensorboard": False}})

    ref = train(prepare(cfg(tmp_path / "ref")), stage="train")
    resumed = _stop_and_resume(monkeypatch, cfg, tmp_path / "killed", 7, "ctrl-c")
    a = _tensors(tmp_path / "ref" / "checkpoints" / "search" / "last.pt")
    assert _same_search(tmp_path / "ref", tmp_path / "killed")
    assert ref["phases"][-1]["steps"] == resumed["phases"][-1]["steps"] == 16
    # with curriculum_freeze_logits, blocks below the window (speed 3: only the top block in
    # cycles 0-2, two blocks in cycle 3) keep their initial logits exactly, weight decay included
    init = _tensors(tmp_path / "ref" / "checkpoints" / "init.pt")["policy.logits"]
    assert torch.equal(a["policy.logits"][:, 0], init[:, 0]) and not torch.equal(a["policy.logits"][:, 2], init[:, 2])


def test_short_cycles_save_once_an_epoch_and_a_kill_between_saves_resumes_exactly(tmp_path, monkeypatch):
    """Search cycles shorter than an epoch do not each write ``last.pt``; a kill (no save) after
    skipped cycle ends resumes from the last save to the same search as an uninterrupted run."""
    from sharewise.engine import trainer as trainer_mod
    from sharewise.engine.runner import prepare, train

    def cfg(out):
        return validate_config({
            "method": {"name": "adashare", "search_cycles": 8, "cycle_iters": [2, 2], "warm_up_iters": 2},
            "backbone": {"width": 16, "depth": 3}, "tasks": [{"name": "digit", "kind": "categorical"},
                                                            {"name": "large", "kind": "categorical"}],
            "train": {"threads": 1, "progress": False, "batch_size": 128},
            "output": {"dir": str(out), "tensorboard": False}})

    saves = []
    original_save = trainer_mod.Trainer._save

    def record(self, path, phase, state, *a, **k):
        if phase.name == "search" and path.name == "last.pt":
            saves.append(state.step)
        return original_save(self, path, phase, state, *a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "_save", record)
    ctx = prepare(cfg(tmp_path / "ref"))
    epoch = max(ctx.data.num_batches(split, 128) for split in ("train1", "train2"))
    assert 4 < epoch < 32  # several 4-step cycles an epoch
    ref = train(ctx, stage="train")
    cycle_ends = saves[:-1]  # the last one: the phase's end
    assert len(saves) < 8 and all(b - a >= epoch for a, b in zip([0, *cycle_ends], cycle_ends))

    # killed past a cycle end that did not save: resumed from the last save
    resumed = _stop_and_resume(monkeypatch, cfg, tmp_path / "killed", cycle_ends[0] + 6, "kill")
    assert _same_search(tmp_path / "ref", tmp_path / "killed")
    assert ref["phases"][-1]["steps"] == resumed["phases"][-1]["steps"] == 32


def test_retrain_needs_a_finished_search_and_other_methods_have_no_retrain(tmp_path, capsys):
    assert main(["retrain", "--method", "adashare", "--out", str(tmp_path / "none"), *TINY]) == 2
    assert "sharewise train" in capsys.readouterr().err
    assert main(["retrain", "--method", "hard", "--out", str(tmp_path / "h"), "--no-progress"]) == 2
    with pytest.raises(RunDirError):
        from sharewise.engine.runner import prepare, retrain

        retrain(prepare(validate_config({"method": {"name": "adashare"}, "output": {"dir": str(tmp_path / "x")}})))


def test_retrain_from_init_scratch_or_search(tmp_path):
    from sharewise.engine.checkpoint import save_checkpoint
    from sharewise.engine.runner import prepare

    ctx = prepare(validate_config({"method": {"name": "adashare"}, "backbone": {"width": 8, "depth": 2},
                                   "output": {"dir": str(tmp_path)}}))
    init = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    searched = {k: v + 1 if v.is_floating_point() else v for k, v in init.items()}
    save_checkpoint(tmp_path / "checkpoints" / "init.pt", {"model": init})
    save_checkpoint(tmp_path / "checkpoints" / "search" / "best.pt", {"model": searched})
    search = {"tasks": ctx.model.task_names, "blocks": ["block0", "block1"], "checkpoint": "checkpoints/search/best.pt",
              "exec_prob": {t: [1.0, 0.0] for t in ctx.model.task_names}}
    key = "backbone.blocks.0.fc1.weight"
    for source, expected in (("init", init), ("search", searched)):
        method = AdaShare(AdaShare.Options(retrain_from=source), ctx.cfg)
        model = method._architecture_model(ctx, method.architecture(0, search), search)
        assert model.removed == [1] and torch.equal(model.state_dict()[key], expected[key])
    method = AdaShare(AdaShare.Options(retrain_from="scratch"), ctx.cfg)
    a = method._architecture_model(ctx, method.architecture(0, search), search).state_dict()[key]
    b = method._architecture_model(ctx, method.architecture(0, search), search).state_dict()[key]
    c = method._architecture_model(ctx, method.architecture(1, search), search).state_dict()[key]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, init[key])  # seeded by the architecture


def test_non_default_options_run(tmp_path):
    """Every alternative form runs end to end: hard sampling, skip_layer, all_chosen init, no
    curriculum, min_temp, log_exec / reference losses with depth weights, soft validation policy,
    the last search checkpoint, argmax extraction from scratch."""
    out = tmp_path / "alt"
    opts = ["hard_sampling=true", "skip_layer=1", "init_method=all_chosen", "is_curriculum=false", "min_temp=4.5",
            "sparsity_form=log_exec", "sparsity_depth_weights=true", "sharing_form=reference",
            "diff_sparsity_weights=false", "search_val_policy=soft", "policy_checkpoint=last", "extract=argmax",
            "retrain_from=scratch", "search_decay_lr_freq=2"]
    args = ["run", "--method", "adashare", "--out", str(out), *TINY, "--set", "backbone.depth=3"]
    for o in opts:
        args += ["--set", f"method.{o}"]
    assert main(args) == 0
    policy = json.loads((out / "policy.json").read_text())
    assert policy["blocks"] == ["block1", "block2"] and policy["policy_checkpoint"] == "last"
    assert policy["temperature"] == 4.5 and [a["name"] for a in policy["architectures"]] == ["arch_argmax"]


# --------------------------------------------------------------------- per-task BatchNorm (task_bn)


def test_per_task_batchnorm_is_a_batchnorm_per_task():
    """In a pass for task t the layer is exactly a BatchNorm with task t's γ, β and statistics,
    and only task t's statistics move; stacked rows of a subset of tasks get the same."""
    from sharewise.layers import PerTaskBatchNorm, single_task, task_groups

    layer = PerTaskBatchNorm(3, 4, dims=0)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(3, 4) + 0.5)
        layer.bias.copy_(torch.randn(3, 4))
    x = torch.randn(6, 4)
    ref = torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        ref.weight.copy_(layer.weight[1])
        ref.bias.copy_(layer.bias[1])
    with single_task(1):
        got = layer(x)
    torch.testing.assert_close(got, ref(x))
    torch.testing.assert_close(layer.running_mean[1], ref.running_mean)
    assert torch.all(layer.running_mean[[0, 2]] == 0) and layer.num_batches_tracked.tolist() == [0, 1, 0]
    # tasks 2 and 0 stacked (rows b·2 + k) equal their own passes
    twin = PerTaskBatchNorm(3, 4, dims=0)
    twin.load_state_dict(layer.state_dict())
    xs = torch.randn(5, 2, 4)
    with task_groups(2, ids=[2, 0]):
        stacked = twin(xs.reshape(10, 4)).view(5, 2, 4)
    for k, t in enumerate([2, 0]):
        with single_task(t):
            torch.testing.assert_close(stacked[:, k], layer(xs[:, k]))
    torch.testing.assert_close(twin.running_mean, layer.running_mean)
    torch.testing.assert_close(twin.running_var, layer.running_var)
    assert twin.num_batches_tracked.tolist() == layer.num_batches_tracked.tolist() == [1, 1, 1]
    with pytest.raises(RuntimeError, match="task context"):
        layer(x)


@pytest.mark.parametrize("name,spec,opts", BACKBONES[:2])
@pytest.mark.parametrize("execution", ["batched", "auto"])
def test_task_bn_batched_equals_loop(name, spec, opts, execution):
    nets = {}
    for e in ("loop", execution):
        nets[e], _ = _net(name, spec, opts, execution=e, task_bn=True)
    net_l, net_b = nets["loop"], nets[execution]
    with torch.no_grad():  # tasks with different γ
        for m in net_l.modules():
            if hasattr(m, "num_tasks") and hasattr(m, "weight"):
                m.weight.copy_(torch.rand_like(m.weight) + 0.5)
    net_b.load_state_dict(net_l.state_dict())
    x = torch.randn(5, *spec.shape)
    logits = torch.randn(3, net_l.num_gated, 2)
    policy = torch.softmax(logits, -1)
    for tasks in (None, ["c", "a"]):  # all tasks, and a subset in another order
        out_l, out_b = net_l(x, tasks=tasks, policy=policy), net_b(x, tasks=tasks, policy=policy)
        assert set(out_l) == set(out_b)
        for t in out_l:
            torch.testing.assert_close(out_l[t], out_b[t], rtol=1e-4, atol=1e-5)
        sum(o.sum() for o in out_l.values()).backward()
        sum(o.sum() for o in out_b.values()).backward()
    for (n, pl), pb in zip(net_l.named_parameters(), net_b.parameters()):
        torch.testing.assert_close(pl.grad, pb.grad, rtol=1e-4, atol=1e-4, msg=n)
    for (n, bl), bb in zip(net_l.named_buffers(), net_b.buffers()):
        torch.testing.assert_close(bl.float(), bb.float(), rtol=1e-5, atol=1e-6, msg=n)
    # warm-up (no policy): every block, each task with its own normalisation
    out = net_b(x)
    net_l.train()
    ones = P.decisions_to_policy(torch.ones(3, net_l.num_gated, dtype=torch.bool))
    for t, o in net_l(x, policy=ones).items():
        torch.testing.assert_close(o, out[t], rtol=1e-4, atol=1e-5)


def test_task_bn_architecture_equals_per_task_passes_and_statistics_stay_per_task():
    name, spec, opts = BACKBONES[0]
    net, factory = _net(name, spec, opts, task_bn=True)
    decisions = {"a": [1, 0, 1], "b": [1, 0, 1], "c": [0, 1, 1]}  # a and b share every block
    arch = AdaShareArchitecture(factory(), TASKS, decisions, task_bn=True)
    load_matching(arch, net.state_dict(), "test")
    norms = [m for m in arch.modules() if type(m).__name__ == "PerTaskBatchNorm"]
    assert norms and all(m.weight.shape[0] == 3 for m in norms)
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand_like(m.weight) + 0.5)
    net.load_state_dict(arch.state_dict(), strict=False)
    x = torch.randn(6, *spec.shape)
    out = arch(x)  # training mode: every task's statistics updated from its own path
    policy = P.decisions_to_policy(torch.tensor([decisions[t] for t in net.task_names], dtype=torch.bool))
    want = net(x, policy=policy)
    for t in out:
        torch.testing.assert_close(out[t], want[t], rtol=1e-4, atol=1e-5)
    assert not torch.equal(out["a"], out["b"])  # same blocks, their own normalisation
    first = norms[0]
    assert first.num_batches_tracked.tolist() == [1, 1, 0]  # block 0: executed by a and b only


def test_task_bn_parameter_counts_put_one_row_on_each_path():
    from sharewise.cost import parameter_counts

    name, spec, opts = BACKBONES[0]
    _, factory = _net(name, spec, opts)
    decisions = {"a": [1, 0, 1], "b": [1, 0, 1], "c": [0, 1, 1]}
    plain = parameter_counts(AdaShareArchitecture(factory(), TASKS, decisions))
    per_task_bn = parameter_counts(AdaShareArchitecture(factory(), TASKS, decisions, task_bn=True))
    # a task's path holds its own row of γ, β: as many elements as one shared BatchNorm
    assert per_task_bn["per_task"] == plain["per_task"]
    blocks = factory().blocks
    bn = [sum(p.numel() for m in b.modules() if isinstance(m, torch.nn.BatchNorm1d) for p in m.parameters())
          for b in blocks]
    users = [sum(decisions[t][j] for t in decisions) for j in range(len(blocks))]
    assert users == [2, 1, 3] and all(bn)
    # the rows are never shared; every executing task adds its own row to the used count
    assert plain["shared"] - per_task_bn["shared"] == bn[0] + bn[2]
    assert per_task_bn["unique_used"] - plain["unique_used"] == sum((u - 1) * n for u, n in zip(users, bn) if u)
    assert per_task_bn["total"] - plain["total"] == 2 * sum(bn)  # (T, C) rows for 3 tasks against 1


def test_task_bn_runs_end_to_end_and_exports(tmp_path):
    from sharewise.export import export_run, load_exported

    out = tmp_path / "tbn"
    assert main(["run", "--method", "adashare", "--out", str(out), "--exp-ids", "0", *TINY,
                 "--set", "method.task_bn=true"]) == 0
    state = _tensors(out / "checkpoints" / "search" / "best.pt")
    assert state["backbone.blocks.1.norm1.weight"].shape == (4, 16)  # 4 tasks, width 16
    assert state["backbone.stem.2.weight"].shape == (16,)  # the stem stays shared
    info = export_run(out, tmp_path / "model.pt", program=False)
    model = load_exported(info["path"])
    assert model.model.task_bn and set(model(torch.zeros(2, 64))) == {"digit", "parity", "large", "value"}
    with pytest.raises(ConfigError, match="task_bn"):
        AdaShareNet(backbone_factory("mlp", {"widths": [8], "norm": "layer"}, InputSpec("vector", (4,)))(), TASKS,
                    task_bn=True)
