"""AdaShare's known-answer benchmark at small scale (issue 23): two identical learnable tasks and
two identical coin-flip tasks (benchmarks/adashare_known_answer.py, case xor_noise). With the
regularisers off (variant no_reg) the search must give tasks of one group more similar policies
than tasks of different groups: between-group minus within-group distance > 0."""

import json
import sys
from pathlib import Path

from sharewise.cli.main import main
from sharewise.methods.adashare import diagnostics as D

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import adashare_known_answer as K  # noqa: E402


def _search(tmp_path, variant):
    table = K.make_xor_noise(tmp_path / "t.csv")
    args, groups = K.CASES["xor_noise"]
    out = tmp_path / variant
    argv = ["train", *(a.replace("{out}/xor_noise.csv", str(table)) for a in args), "--seed", "0", "--out", str(out),
            "--no-progress", "--set", "train.threads=1"]
    for change in K.VARIANTS[variant]:
        argv += ["--set", change]
    assert main(argv) == 0
    return D.diagnostics(json.loads((out / "policy.json").read_text())), groups


def test_the_search_tells_the_groups_apart_without_regularisers(tmp_path):
    diag, groups = _search(tmp_path, "no_reg")
    sep = D.group_separation(diag["task_distance"]["mean_abs"], groups)
    assert sep["separation"] > 0.2 and sep["within"] < 0.1
    hamming = D.group_separation(diag["task_distance"]["hamming_argmax"], groups)
    assert hamming["separation"] >= 1  # the argmax paths differ between the groups, not inside them
    p = diag["exec_prob"]
    assert min(p["a1"] + p["a2"]) > max(p["b1"][1], p["b2"][1])  # the learnable tasks execute the top block more
    assert diag["grad_norm_summary"]["share"] == {"task": 1.0, "sparsity": 0.0, "sharing": 0.0}
