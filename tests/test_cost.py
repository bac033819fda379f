import torch

from sharewise.config import validate_config
from sharewise.cost import count_flops, count_operations, flop_counts, parameter_counts
from sharewise.engine.runner import prepare


def _ctx(method, backbone, **data):
    return prepare(validate_config({"data": {"source": "digits", **data}, "method": {"name": method},
                                    "backbone": backbone}))


def test_mlp_flops_and_parameters_by_hand():
    ctx = _ctx("hard", {"name": "mlp", "width": 16, "depth": 2})
    w, d_in = 16, 64
    outs = {"digit": 10, "parity": 2, "large": 2, "value": 1}
    trunk = 2 * d_in * w + 2 * (2 * 2 * w * w)  # stem + 2 blocks of two linears (2·MACs)
    flops = flop_counts(ctx.model, ctx.data.examples.inputs[0])
    assert flops["per_task"] == {t: trunk + 2 * w * c for t, c in outs.items()}
    assert flops["all_tasks"] == trunk + sum(2 * w * c for c in outs.values())
    assert flops["naive"] == sum(flops["per_task"].values())
    params = parameter_counts(ctx.model)
    norm = 2 * w  # BatchNorm weight + bias
    trunk_params = (d_in * w + w + norm) + 2 * (2 * (w * w + w) + 2 * norm)
    heads = {t: w * c + c for t, c in outs.items()}
    assert params["by_group"] == {"backbone": trunk_params, "heads": sum(heads.values())}
    assert params["per_task"] == {t: trunk_params + h for t, h in heads.items()}
    assert params["shared"] == trunk_params
    assert params["total"] == params["unique_used"] == trunk_params + sum(heads.values())


def test_independent_counts_nothing_shared():
    ctx = _ctx("independent", {"name": "mlp", "width": 8, "depth": 1})
    params = parameter_counts(ctx.model)
    assert params["shared"] == 0 and sum(params["per_task"].values()) == params["total"]
    flops = flop_counts(ctx.model, ctx.data.examples.inputs[0])
    assert flops["all_tasks"] == flops["naive"]


def test_resnet_flops_by_hand():
    ctx = _ctx("hard", {"name": "resnet2d", "widths": [4, 8], "blocks": [1, 1]}, as_image=True)
    conv = lambda cin, cout, k, hw: 2 * cout * hw * cin * k * k  # noqa: E731
    trunk = (conv(1, 4, 3, 64)  # stem on 8×8
             + 2 * conv(4, 4, 3, 64)  # block 0
             + conv(4, 8, 3, 16) + conv(8, 8, 3, 16) + conv(4, 8, 1, 16))  # block 1 (stride 2) + projection
    flops = flop_counts(ctx.model, ctx.data.examples.inputs[0])
    assert flops["per_task"]["digit"] == trunk + 2 * 8 * 10
    assert count_flops(ctx.model.backbone, ctx.data.examples.inputs[:1]) == trunk


def test_count_operations_counts_forward_and_backward_calls():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3)
    assert count_operations(lambda: a.mul(b).add_(1.0)) == 2
    with torch.no_grad():
        assert count_operations(lambda: (a * b).relu()) == 2
    # one more operation is one more call; backward adds its own (at least one per node)
    forward = count_operations(lambda: (a * b).sum())
    both = count_operations(lambda: (a * b).sum().backward())
    assert forward == 2 and both > forward + 1
    # counts do not depend on sizes
    big = torch.randn(10_000)
    assert count_operations(lambda: (big * big).sum()) == 2
