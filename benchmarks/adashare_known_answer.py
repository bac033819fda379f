"""AdaShare's known-answer benchmark (issue 23): does the search give tasks of one group more similar
policies than tasks of different groups?

    .venv/bin/python benchmarks/adashare_known_answer.py                    # every variant, seeds 0 1 2
    .venv/bin/python benchmarks/adashare_known_answer.py --variants spec --seeds 0

Two cases. `mnist` (configs/adashare/mnist_known_answer.yaml): four per-task MNIST tasks, a1 = a2
(digits as they are) and b1 = b2 (digits turned by 90°). `xor_noise` (`--case xor_noise`, a generated
table, :func:`make_xor_noise`): a1 = a2 learnable (the sign of x0·x1), b1 = b2 coin flips. Each variant (`VARIANTS`: the spec's defaults and named changes to them)
runs `sharewise train` (warm-up + search; nothing is re-trained) once per seed and is stored as
`benchmarks/results/runs/adashare-known-answer/<variant>-seed<S>.json` with, from policy.json, the
within-group and between-group mean task distances of the selected policy and their difference
(`separation`, > 0: the groups were told apart), for mean |Δp_exec| and the argmax Hamming distance,
and each loss term's share of the policy-logit gradient over the search.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import REPO, store_run  # noqa: E402

sys.path.insert(0, str(REPO / "src"))
from sharewise.methods.adashare import diagnostics as D  # noqa: E402

SECTION = "adashare-known-answer"
THREADS = 1
# name -> the --set changes to the config (the spec's defaults first)
VARIANTS: dict[str, tuple[str, ...]] = {
    "spec": (),
    "no_reg": ("method.reg_w=0", "method.reg_w_hamming=0"),
    "no_reg_fast_policy": ("method.reg_w=0", "method.reg_w_hamming=0", "method.policy_lr=0.1"),
}
NOISE_VARIANTS = ("spec", "no_reg", "no_sharing", "low_sharing", "sharing_1e-2", "sharing_2e-2")
VARIANTS["no_sharing"] = ("method.reg_w_hamming=0",)
VARIANTS["low_sharing"] = ("method.reg_w_hamming=0.005",)
# between the tenth of the spec's sharing weight that separates and the spec's 0.05 that does not
VARIANTS["sharing_1e-2"] = ("method.reg_w_hamming=0.01",)
VARIANTS["sharing_2e-2"] = ("method.reg_w_hamming=0.02",)


def make_xor_noise(path: Path, n: int = 800, seed: int = 0) -> Path:
    """A table with a known answer: x0..x3 ~ N(0, 1); a1 = a2 = 1[x0·x1 > 0] (learnable, the blocks
    help) and b1 = b2 = fair coins independent of x (nothing to learn: executing blocks can only fit
    noise). Right answer: a1, a2 one policy; b1, b2 another (skip more)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    a = (x[:, 0] * x[:, 1] > 0).astype(int)
    b = rng.integers(0, 2, size=n)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(4)]).assign(a1=a, a2=a, b1=b, b2=b)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


# case -> (the train command's arguments without --seed/--out, the task groups)
XOR_NOISE_ARGS = ("--cat-target", "a1", "a2", "b1", "b2", "--method", "adashare", "--set", "backbone.width=16",
                  "--set", "backbone.depth=2", "--set", "method.search_cycles=30", "--set", "method.cycle_iters=[3,3]",
                  "--set", "method.warm_up_iters=20", "--set", "method.curriculum_speed=1", "--set", "train.batch_size=64")
CASES = {
    "mnist": (("--config", "configs/adashare/mnist_known_answer.yaml"),
              {"a1": "upright", "a2": "upright", "b1": "rotated", "b2": "rotated"}),
    "xor_noise": (("--data", "{out}/xor_noise.csv", *XOR_NOISE_ARGS),
                  {"a1": "xor", "a2": "xor", "b1": "noise", "b2": "noise"}),
}


def figures_of(policy: dict, groups: dict[str, str]) -> tuple[dict[str, float], dict]:
    diag = D.diagnostics(policy)
    figures: dict[str, float] = {}
    for kind in ("mean_abs", "hamming_argmax"):
        sep = D.group_separation(diag["task_distance"][kind], groups)
        for key, value in sep.items():
            figures[f"{kind}.{key}"] = value
    summary = diag["grad_norm_summary"] or {}
    for term, share in (summary.get("share") or {}).items():
        figures[f"grad_share.{term}"] = share
    for term, value in (summary.get("mean") or {}).items():
        figures[f"grad_norm.{term}"] = value
    extra = {"policy": {"cycle": policy["cycle"], "search_cycles": policy.get("search_cycles"),
                        "temperature": policy["temperature"], "exec_prob": policy["exec_prob"]},
             "task_distance": diag["task_distance"]}
    return figures, extra


def record_name(case: str, variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}" if case == "mnist" else f"{case}-{variant}-seed{seed}"


def measure(case: str, variant: str, seed: int, out_root: str, replace: bool) -> None:
    name = record_name(case, variant, seed)
    out = f"{out_root}/{SECTION}/{name}"
    args, groups = CASES[case]
    if case == "xor_noise":
        make_xor_noise(Path(out_root) / SECTION / "xor_noise.csv")
    argv = ["train", *(a.replace("{out}", f"{out_root}/{SECTION}") for a in args), "--seed", str(seed), "--out", out,
            "--no-progress", "--overwrite", "--set", f"train.threads={THREADS}", "--set", "output.tensorboard=false"]
    for change in VARIANTS[variant]:
        argv += ["--set", change]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sharewise", *argv], cwd=REPO, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    figures, extra = figures_of(json.loads((Path(out) / "policy.json").read_text()), groups)
    store_run(SECTION, name, command="sharewise " + shlex.join(argv), figures=figures,
              threads=THREADS, timings={"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}, extra=extra, replace=replace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="mnist")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out-root", default="/tmp/sw-bench")
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args(argv)
    variants = args.variants or (list(NOISE_VARIANTS) if args.case == "xor_noise" else ["spec", "no_reg", "no_reg_fast_policy"])
    for seed in args.seeds:
        for variant in variants:
            measure(args.case, variant, seed, args.out_root, args.replace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
