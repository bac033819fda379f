"""AdaShare's training recipe (issue 23): ``recipe: optim`` trains warm-up and re-training exactly as
``hard`` trains (the config's optim and train sections); ``paper`` (default) keeps the spec's Adam
β=(0.5, 0.999) with StepLR; results.json counts every method's optimiser steps."""

import json

import pytest

from sharewise.cli.main import main
from sharewise.config import validate_config, validate_options
from sharewise.errors import ConfigError
from sharewise.methods import get_method
from sharewise.methods.adashare import AdaShare

OPTIM = {"optimizer": "adam", "lr": 0.003, "betas": [0.8, 0.99], "schedule": "cosine", "weight_decay": 0.001}
TRAIN = {"epochs": 3, "eval_every": 7, "patience": 2}


def _method(name, **opts):
    cfg = validate_config({"method": {"name": name, **opts}, "optim": OPTIM, "train": TRAIN})
    cls = get_method(name)
    return cls(cls.Options.model_validate(cfg.method.options), cfg)


def test_optim_recipe_retrains_as_hard_trains():
    hard = _method("hard").phases(None, 10)[0]
    ada = _method("adashare", recipe="optim")
    retrain = ada.retrain_phases(ada.plan(10))[0]
    assert retrain.optimizers["main"] == hard.optimizers["main"]
    assert retrain.optimizers["main"].betas == (0.8, 0.99) and retrain.optimizers["main"].schedule == "cosine"
    assert (retrain.cycles, retrain.max_steps, retrain.eval_every, retrain.patience) == (3, None, 7, 2)
    assert (hard.cycles, hard.max_steps, hard.eval_every, hard.patience) == (3, None, 7, 2)


def test_paper_recipe_is_the_default_and_keeps_the_spec():
    ada = _method("adashare", total_iters=100)
    plan = ada.plan(10)
    spec = ada.retrain_phases(plan)[0].optimizers["main"]
    assert ada.options.recipe == "paper"
    assert (spec.kind, spec.betas, spec.schedule, spec.step_size, spec.gamma) == ("adam", (0.5, 0.999), "step", 20, 0.5)
    assert ada.retrain_phases(plan)[0].max_steps == 100


def test_optim_recipe_refuses_its_own_retrain_length():
    with pytest.raises(ConfigError, match="retrain_total_iters: with recipe optim"):
        validate_options(AdaShare.Options, {"recipe": "optim", "retrain_total_iters": 5}, "method")


TINY = ["--no-progress", "--set", "train.threads=1", "--set", "backbone.width=16", "--set", "backbone.depth=2",
        "--set", "method.search_cycles=3", "--set", "method.cycle_iters=[2,3]", "--set", "method.warm_up_iters=4",
        "--set", "output.tensorboard=false", "--set", "method.curriculum_speed=1", "--set", "train.max_steps=5",
        "--set", "method.recipe=optim", "--set", "train.eval_every=5", "--exp-ids", "0", "1"]


def test_results_count_every_optimiser_step(tmp_path):
    out = tmp_path / "ada"
    assert main(["run", "--method", "adashare", "--out", str(out), *TINY]) == 0
    steps = json.loads((out / "results.json").read_text())["steps"]
    # warm-up 4, search 3 cycles of 2 + 3, re-training 5 (train.max_steps, as hard) per architecture
    assert steps["by_phase"] == {"warmup": 4, "search": 15, "arch_0/retrain": 5, "arch_1/retrain": 5}
    assert steps["total"] == 29
    hard = tmp_path / "hard"
    assert main(["run", "--method", "hard", "--out", str(hard), "--no-progress", "--set", "train.threads=1",
                 "--set", "backbone.width=16", "--set", "train.max_steps=5", "--set", "output.tensorboard=false"]) == 0
    assert json.loads((hard / "results.json").read_text())["steps"] == {"total": 5, "by_phase": {"train": 5}}
