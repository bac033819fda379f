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
