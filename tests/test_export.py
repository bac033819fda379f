"""`sharewise export`: a compact file that rebuilds the selected model with the same outputs."""

import json
import os

import torch

from sharewise.api import load_run
from sharewise.cli.main import main
from sharewise.export import load_exported

TINY = ["--no-progress", "--set", "train.threads=1", "--set", "backbone.width=16", "--set", "backbone.depth=4",
        "--set", "method.total_iters=60", "--set", "method.cycle_iters=[2,2]", "--set", "method.warm_up_iters=10",
        "--set", "output.tensorboard=false"]


def test_export_adashare_architecture_same_outputs_and_smaller(tmp_path):
    out = tmp_path / "run"
    # an init that prefers skipping, so the sampled architecture drops blocks
    assert main(["run", "--method", "adashare", "--out", str(out), "--exp-ids", "0", *TINY,
                 "--set", "method.init_method=all_chosen", "--set", "method.init_neg_logits=8"]) == 0
    selection = json.loads((out / "selection.json").read_text())
    policy = selection["candidates"][0]["info"]["policy"]
    assert any(0 in d for d in policy.values())
    model_file = tmp_path / "model.pt"
    assert main(["export", str(out), "--out", str(model_file)]) == 0
    blob = torch.load(model_file, weights_only=True)
    assert set(blob) == {"description", "state_dict"}
    exported = load_exported(model_file)
    original = load_run(out).model
    x = torch.randn(5, 64)
    a, b = exported(x), original(x)
    assert all(torch.allclose(a[t], b[t]) for t in a)
    program = torch.export.load(model_file.with_suffix(".pt2")).module()
    with torch.no_grad():
        named, decoded = program(x), exported.decode(x)
    assert list(named) == exported.task_names  # named outputs, decoded: probabilities and values in units
    assert all(torch.allclose(named[t], decoded[t], atol=1e-6) for t in named)
    assert torch.allclose(named["digit"], torch.softmax(a["digit"], 1), atol=1e-6)
    value = exported.tasks[exported.task_names.index("value")]
    assert torch.allclose(named["value"], a["value"][:, 0] * value.std + value.mean, atol=1e-5)
    # smaller on disk than the same export with every block kept
    removed = [l for l in range(4) if not any(d[l] for d in policy.values())]
    full_state = {k: v for k, v in torch.load(out / "checkpoints" / "init.pt", weights_only=True)["model"].items()
                  if not k.startswith("policy.")}
    assert removed, "the test needs a block that no task executes"
    full_file = tmp_path / "full.pt"
    torch.save({"description": blob["description"], "state_dict": full_state}, full_file)
    assert model_file.stat().st_size < full_file.stat().st_size
    assert sum(v.numel() for v in blob["state_dict"].values()) < sum(v.numel() for v in full_state.values())
    # written atomically, yet with the permissions any new file gets (not mkstemp's 0600)
    mask = os.umask(0o022)
    os.umask(mask)
    for f in (model_file, model_file.with_suffix(".pt2"), out / "results.json", out / "checkpoints" / "init.pt"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    assert not list(tmp_path.glob(".*.tmp")) and not list(out.rglob(".*.tmp"))
