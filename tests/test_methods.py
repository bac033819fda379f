import pytest
import torch

from sharewise.config import validate_config
from sharewise.engine.runner import prepare
from sharewise.errors import ConfigError
from sharewise.methods import get_method, methods


def test_registry_lists_and_suggests():
    table = methods()
    assert {"hard", "independent"} <= set(table)
    assert all(cls.description for cls in table.values())
    with pytest.raises(ConfigError, match="did you mean: hard"):
        get_method("hardd")


@pytest.mark.parametrize("method", ["hard", "independent"])
def test_models_output_every_task(method):
    ctx = prepare(validate_config({"method": {"name": method}, "backbone": {"width": 8, "depth": 1}}))
    x = ctx.data.examples.inputs[:5]
    out = ctx.model(x)
    assert {k: v.shape for k, v in out.items()} == {"digit": (5, 10), "parity": (5, 2), "large": (5, 2), "value": (5, 1)}
    groups = ctx.model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(ctx.model.parameters()))


def test_unknown_method_option():
    with pytest.raises(ConfigError, match="method.foo"):
        prepare(validate_config({"method": {"name": "hard", "foo": 1}}))
