import pytest
import torch

from sharewise.backbones import apply_block, backbone_factory
from sharewise.data.base import InputSpec


def _build(name, spec, **opts):
    torch.manual_seed(0)
    return backbone_factory(name, opts, spec)()


@pytest.mark.parametrize("name,spec,opts", [
    ("mlp", InputSpec("vector", (10,)), {"widths": [8, 16, 16]}),
    ("resnet2d", InputSpec("image", (3, 12, 12)), {"widths": [4, 8], "blocks": [2, 1]}),
    ("resnet2d", InputSpec("image", (1, 8, 8)), {"widths": [4, 8], "blocks": [1, 1], "block": "bottleneck"}),
])
def test_block_includes_shortcut_and_identity_gate_equals_plain(name, spec, opts):
    net = _build(name, spec, **opts).eval()
    x = torch.randn(3, *spec.shape)
    h = net.stem(x)
    for block in net.blocks:
        # block(x) is the whole output: act(S(x) + G(x)), the residual added exactly once
        assert torch.allclose(block(h), block.act(block.shortcut(h) + block.residual(h)))
        h = block(h)
    gates = torch.tensor([[1.0, 0.0]] * net.num_blocks)
    assert torch.allclose(net(x), net(x, gates=gates))
    assert net(x).shape == (3, net.out_features)


def test_skip_gate_uses_shortcut_only():
    net = _build("mlp", InputSpec("vector", (6,)), width=6, depth=2).eval()
    x = torch.randn(2, 6)
    gates = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(net(x, gates=gates), net.stem(x))  # identity shortcuts
    h = net.stem(x)
    soft = apply_block(net.blocks[0], h, torch.tensor([0.3, 0.7]))
    assert torch.allclose(soft, 0.3 * net.blocks[0](h) + 0.7 * h)


def test_backbone_rejects_wrong_input_kind_and_unknown_name():
    from sharewise.errors import ConfigError

    with pytest.raises(ConfigError, match="resnet2d"):
        backbone_factory("resnet2d", {}, InputSpec("vector", (5,)))
    with pytest.raises(ConfigError, match="did you mean"):
        backbone_factory("resnet2", {}, InputSpec("image", (1, 8, 8)))
    with pytest.raises(ConfigError, match="backbone.widht"):
        backbone_factory("mlp", {"widht": 3}, InputSpec("vector", (5,)))


def test_plain_mlp_is_linear_relu_layers_without_residual():
    net = _build("plain_mlp", InputSpec("vector", (10,)), widths=[8, 8, 6]).eval()
    x = torch.randn(4, 10)
    layers = [net.stem[1], net.blocks[0].linear, net.blocks[1].linear]
    h = x
    for layer in layers:
        h = torch.relu(layer(h))
    assert torch.allclose(net(x), h) and net.out_features == 6
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)) for m in net.modules())
    # the published Hard3 trunk 1152→1024→1024→1024 has 3 279 872 parameters (spec §5.7)
    big = backbone_factory("plain_mlp", {"widths": [1024] * 3}, InputSpec("vector", (1152,)))()
    assert sum(p.numel() for p in big.parameters()) == 3_279_872
    # a skipped block passes its (padded or cut) input on, with no parameter of its own
    gates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(net(x, gates=gates), net.blocks[0](net.stem(x))[:, :6])
    assert sum(p.numel() for p in net.blocks[1].shortcut.parameters()) == 0


# ----------------------------------------------------------------- the backbone chosen from the data

@pytest.mark.parametrize("spec,name,extra", [
    (InputSpec("vector", (14,)), "mlp", {}),
    (InputSpec("image", (1, 28, 28)), "convnet", {}),  # 28 → 14 → 7 → 3 → 1: every block pools
    (InputSpec("image", (1, 8, 8)), "convnet", {"pool": [True, True, True, False]}),  # 8 → 4 → 2 → 1
    (InputSpec("image", (3, 5, 40)), "convnet", {"pool": [True, True, False, False]}),  # the short side: 5 → 2 → 1
    (InputSpec("volume", (1, 16, 16, 16)), "resnet3d", {}),
])
def test_default_backbone_from_the_input_kind_always_builds(spec, name, extra):
    from sharewise.backbones import default_backbone

    assert default_backbone(spec) == (name, extra)
    net = _build(name, spec, **({"depth": 10, "width": 2} if name == "resnet3d" else {}), **extra)
    assert net(torch.randn(2, *spec.shape)).shape == (2, net.out_features)
    if extra:  # the conv net's own default pooling does not fit such an image
        from sharewise.errors import ConfigError

        with pytest.raises(ConfigError, match="pool"):
            _build(name, spec)


def test_the_data_chooses_the_backbone_and_the_run_records_it(tmp_path, capsys):
    import json

    import yaml

    from sharewise.cli.main import main

    fast = ["--epochs", "1", "--no-progress", "--set", "train.threads=1", "--set", "output.tensorboard=false",
            "--set", "data.as_image=true"]
    out = tmp_path / "images"
    assert main(["run", "--out", str(out), *fast]) == 0  # the built-in digits as 1×8×8 images
    said = capsys.readouterr().out
    assert "sharewise: backbone convnet (backbone.pool = [True, True, True, False]): the default for image " \
           "inputs of shape [1, 8, 8]; name another with --backbone" in said
    saved = yaml.safe_load((out / "config.yaml").read_text())["backbone"]
    assert saved == {"name": "convnet", "pool": [True, True, True, False]}
    assert json.loads((out / "results.json").read_text())["run"]["backbone"] == "convnet"
    # named: no line, the name kept
    named = tmp_path / "named"
    assert main(["run", "--out", str(named), *fast, "--backbone", "mlp", "--set", "backbone.width=8"]) == 0
    assert "the default for" not in capsys.readouterr().out
    assert yaml.safe_load((named / "config.yaml").read_text())["backbone"] == {"name": "mlp", "width": 8}
    # tables keep the MLP
    table = tmp_path / "table"
    assert main(["run", "--out", str(table), *fast[:-2], "--set", "backbone.width=8"]) == 0
    assert "backbone mlp: the default for vector inputs of shape [64]" in capsys.readouterr().out
    # an MLP key for image inputs without a name: one line that says which backbone the data chose
    bad = tmp_path / "bad"
    assert main(["run", "--out", str(bad), *fast, "--set", "backbone.width=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sharewise: error: unknown config key 'backbone.width'") and len(err.splitlines()) == 1
    assert "backbone 'convnet' is the default for image inputs" in err and not bad.exists()


def test_volumes_default_to_the_3d_resnet(tmp_path):
    from test_volumes import make_study

    from sharewise.config import validate_config
    from sharewise.engine.runner import prepare

    path = make_study(tmp_path / "s", n=20)
    cfg = validate_config({"data": {"source": "volumes", "path": str(path), "id_col": "MRID",
                                    "volume_pattern": "t1/{id}-*_T1.nii.gz", "volume_shape": [16, 16, 16]},
                           "tasks": [{"name": "Sex", "kind": "categorical"}, {"name": "Age", "kind": "numerical"}],
                           "backbone": {"depth": 10, "width": 2},
                           "output": {"dir": str(tmp_path / "run")}})
    ctx = prepare(cfg)
    assert ctx.defaults == {"backbone.name": "resnet3d"} and cfg.backbone.name is None  # the caller's config untouched
    assert ctx.cfg.backbone.name == "resnet3d" and ctx.cfg.backbone.options == {"depth": 10, "width": 2}
    assert type(ctx.model.backbone).__name__ == "ResNet3d"


def test_a_method_with_its_own_network_announces_no_backbone_and_says_a_named_one_is_unused(tmp_path, capsys):
    from sharewise.cli.main import main

    fast = ["--epochs", "1", "--no-progress", "--set", "train.threads=1", "--set", "output.tensorboard=false",
            "--method", "taan", "--set", "method.widths=[8]"]
    assert main(["run", "--out", str(tmp_path / "own"), *fast]) == 0
    said = capsys.readouterr()
    assert "the default for" not in said.out and "backbone" not in said.err
    with pytest.warns(UserWarning, match="backbone.name: 'mlp' is not used: method 'taan' builds its own network"):
        assert main(["run", "--out", str(tmp_path / "named"), *fast, "--backbone", "mlp"]) == 0
    # a method that trains the backbone still announces the one the data chose
    assert main(["run", "--out", str(tmp_path / "hard"), *fast[:7], "--method", "hard"]) == 0
    assert "backbone mlp: the default for vector inputs" in capsys.readouterr().out
