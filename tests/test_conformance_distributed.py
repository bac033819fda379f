"""Every registered method on 2 gloo processes: the ranks hold the same model, and the run gives
the numbers of one process with the same global batch (the per-rank batch halved).

The cases come from ``methods()``, so a method is covered as soon as it is registered; it runs
with its defaults unless the option tables below shrink it. All 2-process runs share one pair of
processes (``_replicas.run_replicas``); the 1-process runs happen in this process.
"""

import traceback

import pytest
import torch
from _replicas import differing_entries, raise_errors, run_in_process, run_replicas

from sharewise.methods import methods

GLOBAL_BATCH = 32
TASKS = [{"name": "digit", "kind": "categorical"}, {"name": "value", "kind": "numerical"}]
# method options that bound how many models a run trains (a method without an entry: its defaults)
COUNT_OPTIONS = {"adashare": {"num_archs": 1, "curriculum_speed": 1}}
# options that fix the phases' lengths in steps; without them, lengths derive from the data
# (an epoch of the global batch, a pass over a split)
# DMTRL decomposes its single-task networks by SVD: near-equal singular values let the factors
# rotate within their subspace for a rounding difference (1 / gap), so its factors are compared
# through the dense tensors they compute (Tucker: 𝒮 ×₁ U₁ ×₂ U₂ ×₃ U₃), which do not depend on that
# rotation. Adam's steps on the rotated factors then differ by up to the learning rate where a
# gradient is near zero: after 12 steps the dense tensors differ by up to 3.4e-3 and the test
# losses by 1.2e-3 relative (measured), against rounding-level agreement for every other method.
# The replicas' bit-identity is checked as for every method.
WEIGHT_ATOL = {"dmtrl": 1e-2}
METRIC_RTOL = {"dmtrl": 5e-3}
FIXED_LENGTHS = {"train": {"max_steps": 12, "eval_every": 6},
                 "adashare": {"warm_up_iters": 4, "cycle_iters": [2, 2], "search_cycles": 3, "retrain_total_iters": 6}}
METHODS = sorted(methods())

def _config(method, out, batch_size, *, fixed_lengths):
    lengths = FIXED_LENGTHS if fixed_lengths else {}
    return {
        "data": {"source": "digits"},
        "tasks": TASKS,
        # GroupNorm: BatchNorm statistics are per rank on gloo (train.sync_bn needs NCCL)
        "backbone": {"name": "mlp", "width": 16, "depth": 2, "norm": "group"},
        "method": {"name": method, **COUNT_OPTIONS.get(method, {}), **lengths.get(method, {})},
        "optim": {"lr": 0.003},
        "train": {"threads": 1, "progress": False, "batch_size": batch_size, "epochs": 1, **lengths.get("train", {})},
        "output": {"dir": str(out), "tensorboard": False},
    }


def _job(method, *, fixed_lengths=True):
    return method if fixed_lengths else f"{method}-default-lengths"


def _jobs(root, batch_size):
    return {_job(m, fixed_lengths=f): _config(m, root / _job(m, fixed_lengths=f), batch_size, fixed_lengths=f)
            for m in METHODS for f in (True, False)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(one, two)``: every job on 1 process with the global batch (in this process) and its
    per-rank dumps on 2 gloo processes with half of it each. The 1-process runs go first, so that
    the forked processes start with everything imported."""
    root = tmp_path_factory.mktemp("conformance")
    one = {}
    for name, config in _jobs(root / "one", GLOBAL_BATCH).items():
        try:
            one[name] = run_in_process(config)
        except Exception:  # reported by the job's tests
            one[name] = {"error": traceback.format_exc()}
    return one, run_replicas(_jobs(root / "two", GLOBAL_BATCH // 2), root / "dumps")


def _phase_steps(results):
    return [(p["phase"], p.get("directory", "."), p["steps"]) for p in results["selection"]["phases"]]


@pytest.mark.parametrize("method", METHODS)
def test_replicas_hold_identical_models(method, runs):
    """After training, both ranks hold bit-identical parameters and buffers in every model the
    engine trained (AdaShare: the search network and the re-trained architecture), and computed
    the same test metrics (from gathered predictions)."""
    rank0, rank1 = dumps = runs[1][_job(method)]
    raise_errors(dumps)
    assert rank0["models"] and rank0["models"].keys() == rank1["models"].keys()
    for directory, state in rank0["models"].items():
        differ = differing_entries(state, rank1["models"][directory])
        assert not differ, f"model {directory!r}: the ranks differ in {differ[:5]}"
    assert rank0["results"]["tasks"] == rank1["results"]["tasks"]


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one_process(method, runs):
    """The same steps, test metrics and weights as one process with the same global batch."""
    one, dumps = runs[0][_job(method)], runs[1][_job(method)]
    raise_errors([one, *dumps])
    two = dumps[0]
    assert _phase_steps(two["results"]) == _phase_steps(one["results"])
    for task, entry in one["results"]["tasks"].items():
        other = two["results"]["tasks"][task]["test"]
        assert other["n"] == entry["test"]["n"]  # every test example exactly once
        for metric in ("loss", entry["primary_metric"]):
            rel = METRIC_RTOL.get(method, 1e-3)
            assert other[metric] == pytest.approx(entry["test"][metric], rel=rel, abs=1e-4), (task, metric)
    assert one["models"].keys() == two["models"].keys()
    for directory, state in one["models"].items():
        mine, other = _tucker_dense(state), _tucker_dense(two["models"][directory])
        atol = WEIGHT_ATOL.get(method, 1e-4)
        far = [k for k in mine if not torch.allclose(mine[k], other[k], atol=atol)]
        assert not far, f"model {directory!r}: {far[:5]} differ from the 1-process run"


def _tucker_dense(state: dict) -> dict:
    """A state dict with each Tucker layer's factors replaced by the dense tensor they compute."""
    out = dict(state)
    for key in [k for k in state if k.endswith("core")]:
        p = key[: -len("core")]
        u3 = out.pop(p + "task_factor.value")
        out[p + "dense"] = torch.einsum("abc,ia,jb,nc->ijn", out.pop(key), out.pop(p + "u1"), out.pop(p + "u2"), u3)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_default_lengths_count_global_batches(method, runs):
    """With the lengths a method derives from the data (an epoch, a pass over a split), every
    phase takes as many steps on 2 processes as on 1 with the same global batch."""
    one, dumps = runs[0][_job(method, fixed_lengths=False)], runs[1][_job(method, fixed_lengths=False)]
    raise_errors([one, *dumps])
    assert _phase_steps(dumps[0]["results"]) == _phase_steps(one["results"])
