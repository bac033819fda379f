"""AdaShare's known-answer benchmark (issue 23): does the search give tasks of one group more similar
policies than tasks of different groups?

    .venv/bin/python benchmarks/adashare_known_answer.py                    # every variant, seeds 0 1 2
    .venv/bin/python benchmarks/adashare_known_answer.py --variants spec --seeds 0

configs/adashare/mnist_known_answer.yaml: four per-task MNIST tasks, a1 = a2 (digits as they are) and
b1 = b2 (digits turned by 90°). Each variant (`VARIANTS`: the spec's defaults and named changes to them)
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
CONFIG = "configs/adashare/mnist_known_answer.yaml"
GROUPS = {"a1": "upright", "a2": "upright", "b1": "rotated", "b2": "rotated"}
THREADS = 1
# name -> the --set changes to the config (the spec's defaults first)
VARIANTS: dict[str, tuple[str, ...]] = {
    "spec": (),
    "no_reg": ("method.reg_w=0", "method.reg_w_hamming=0"),
    "no_reg_plr0.1": ("method.reg_w=0", "method.reg_w_hamming=0", "method.policy_lr=0.1"),
}


def figures_of(policy: dict) -> tuple[dict[str, float], dict]:
    diag = D.diagnostics(policy)
    figures: dict[str, float] = {}
    for kind in ("mean_abs", "hamming_argmax"):
        sep = D.group_separation(diag["task_distance"][kind], GROUPS)
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


def measure(variant: str, seed: int, out_root: str, replace: bool) -> None:
    out = f"{out_root}/{SECTION}/{variant}-seed{seed}"
    argv = ["train", "--config", CONFIG, "--seed", str(seed), "--out", out, "--no-progress", "--overwrite",
            "--set", f"train.threads={THREADS}", "--set", "output.tensorboard=false"]
    for change in VARIANTS[variant]:
        argv += ["--set", change]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sharewise", *argv], cwd=REPO, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    figures, extra = figures_of(json.loads((Path(out) / "policy.json").read_text()))
    store_run(SECTION, f"{variant}-seed{seed}", command="sharewise " + shlex.join(argv), figures=figures,
              threads=THREADS, timings={"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}, extra=extra, replace=replace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out-root", default="/tmp/sw-bench")
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for variant in args.variants:
            measure(variant, seed, args.out_root, args.replace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
