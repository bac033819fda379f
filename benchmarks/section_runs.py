"""Measure the runs behind a section of docs/benchmarks.md and store each as a run record.

    .venv/bin/python benchmarks/section_runs.py images                 # every run of the section
    .venv/bin/python benchmarks/section_runs.py ixi --names hard-seed0  # one run
    .venv/bin/python benchmarks/section_runs.py --list                 # the sections and their runs

A section is a list of `sharewise run` commands (`SECTIONS`, built by the functions below), each
with `train.threads=1` and its run directory under `--out-root` (default `/tmp/sw-bench`); a run
that needs another (`--reference` to the same seed's `independent` run) comes after it. Each run's
`results.json` becomes `benchmarks/results/runs/<section>/<name>.json` (benchmarks/record.py):
every test metric, Δ_t and Δ_MTL, parameters (total, per group), FLOPs (all tasks, per task),
AdaShare's candidate means, and under `extra` what is descriptive but not a figure (the learned
policy, the selected architecture). `--replace` overwrites the records (a re-measurement after a
change); without it a repetition is stored beside them (`<name>.2.json`).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adult_runs import figures_with_delta, run_sharewise  # noqa: E402
from record import REPO, store_run  # noqa: E402
import selection_evidence  # noqa: E402

THREADS = 1
DEFAULT_OUT_ROOT = "/tmp/sw-bench"
COMMON = ["--no-progress", "--overwrite", "--set", f"train.threads={THREADS}", "--set", "output.tensorboard=false"]


@dataclass(frozen=True)
class Run:
    """One `sharewise` invocation of a section: ``args`` with ``{out}`` standing for the out root."""
    name: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = field(default=())  # names of runs of the same section that must exist first
    prepare: Callable[[str], None] | None = None  # makes its input under the out root first (generated data)
    details: Callable[[Path], tuple[dict, dict]] | None = None  # more (figures, extra) from the run directory

    def argv(self, out_root: str) -> list[str]:
        return [a.replace("{out}", out_root) for a in self.args]

    def out_dir(self, out_root: str) -> Path:
        argv = self.argv(out_root)
        return Path(argv[argv.index("--out") + 1])


def _run(section: str, name: str, config: str, seed: int, *extra: str, needs: tuple[str, ...] = ()) -> Run:
    out = f"{{out}}/{section}/{name}"
    return Run(name, ("run", "--config", config, "--seed", str(seed), "--out", out, *COMMON, *extra), needs)


def images() -> list[Run]:
    runs = []
    for data in ("mnist", "omniglot20"):
        for method in ("hard", "independent"):
            runs.append(_run("images", f"{data}-{method}", f"configs/images/{data}.yaml", 0, "--method", method))
    return runs


def ixi(seeds=(0, 1, 2)) -> list[Run]:
    runs = []
    targets = ("--cat-target", "Sex", "--num-target", "Age")
    for seed in seeds:
        runs.append(_run("ixi", f"adashare-seed{seed}", "configs/adashare/ixi.yaml", seed, *targets))
        for method in ("hard", "independent"):
            runs.append(_run("ixi", f"{method}-seed{seed}", "configs/adashare/ixi.yaml", seed, *targets,
                             "--set", f"method={{name: {method}}}"))
        runs.append(_run("ixi", f"regional-seed{seed}", "configs/tables/ixi_regional.yaml", seed))
    return runs


def adashare(data: str, seeds=(0, 1, 2), *, config: str | None = None, section: str | None = None,
             extra: tuple[str, ...] = (), hard_epochs: int | None = None) -> list[Run]:
    """AdaShare against `hard` and `independent` from one AdaShare config (the others replace its
    `method` section); `hard` and AdaShare get `--reference` to the same seed's `independent`.
    ``extra``: more arguments for all three (an optimiser recipe they share); ``hard_epochs``: also
    `hard_long`, `hard` trained that many epochs (as many optimiser steps as AdaShare's whole run)."""
    section, config = section or f"adashare-{data}", config or f"configs/adashare/{data}.yaml"
    runs = []
    for seed in seeds:
        ref = f"independent-seed{seed}"
        reference = ("--reference", f"{{out}}/{section}/{ref}")
        runs.append(_run(section, ref, config, seed, *extra, "--set", "method={name: independent}"))
        runs.append(_run(section, f"hard-seed{seed}", config, seed, *extra, "--set", "method={name: hard}", *reference,
                         needs=(ref,)))
        runs.append(_run(section, f"adashare-seed{seed}", config, seed, *extra, *reference, needs=(ref,)))
        if hard_epochs:
            runs.append(_run(section, f"hard_long-seed{seed}", config, seed, *extra, "--set", "method={name: hard}",
                             "--set", f"train.epochs={hard_epochs}", *reference, needs=(ref,)))
    return runs


# issue 23: the three methods at one recipe. `optim`: the config's optim section (Adam β=(0.9, 0.999),
# constant lr) for all; `paper`: the spec's re-training recipe (Adam β=(0.5, 0.999), StepLR halving every
# 0.2 · 1 090 iterations) for all
PAPER_RECIPE_ADULT = ("--set", "optim.betas=[0.5,0.999]", "--set", "optim.schedule=step", "--set", "optim.step_size=218")


def adashare_task_bn(seeds=(1, 2)) -> list[Run]:
    return [_run("adashare-mnist-task_bn", f"adashare-seed{seed}", "configs/adashare/mnist.yaml", seed,
                 "--set", "method.task_bn=true") for seed in seeds]


# Youtube-8M video-level sample (TAAN specification §5): the methods at H = 256, TAAN with each regulariser
YT8M_VARIANTS = {"hard": ("yt8m_hard", ()), "independent": ("yt8m_independent", ()),
                 **{f"taan-{r}": ("yt8m_taan", ("--set", f"method.regularizer={r}"))
                    for r in ("none", "distance", "cosine", "l21", "nuclear")},
                 "cross_stitch": ("yt8m_cross_stitch", ()), "mmoe": ("yt8m_mmoe", ()), "soft_order": ("yt8m_soft_order", ()),
                 "mrn": ("yt8m_mrn", ()),
                 **{f"dmtrl-{f}": ("yt8m_dmtrl", ("--set", f"method.factorization={f}")) for f in ("tucker", "tt", "laf")},
                 # DMTRL with explicit ranks that compress (the ε = 0.1 rule keeps every singular value of
                 # these single-task weights): Tucker (32, 32, 8) and the reference's LAF rank k = 5
                 "dmtrl-tucker-r32": ("yt8m_dmtrl", ("--set", "method.ranks=[32,32,8]")),
                 "dmtrl-laf-k5": ("yt8m_dmtrl", ("--set", "method.factorization=laf", "--set", "method.ranks=[5]"))}


def yt8m(seeds=(0, 1, 2)) -> list[Run]:
    return [_run("yt8m", f"{name}-seed{seed}", f"configs/taan/{config}.yaml", seed, *extra)
            for seed in seeds for name, (config, extra) in YT8M_VARIANTS.items()]


# Omniglot, 50 alphabets (TAAN specification §6): TAAN's set-up reduced for 2 CPU cores (200 steps
# instead of 15 000, configs/taan/omniglot50_cpu.yaml), no regulariser and `distance` at the
# published best c = 0.3, selected on pooled validation accuracy
OMNIGLOT50_VARIANTS = {"none": (), "distance": ("--set", "method.regularizer=distance", "--set", "method.c=0.3")}


def omniglot50(seeds=(0,)) -> list[Run]:
    return [_run("omniglot50", f"{name}-seed{seed}", "configs/taan/omniglot50_cpu.yaml", seed, *extra)
            for seed in seeds for name, extra in OMNIGLOT50_VARIANTS.items()]


# Parameter allocation, MNIST with 4 tasks (spec parameter_allocation.md §7.1): the four published
# variants at the spec's reduced schedule for 2 CPU cores (5 000 rounds per task instead of 37 500;
# everything else as published), inline validation every 1 000 rounds, the final model reported.
GM_MNIST_VARIANTS = ("no_sharing", "shared_bottom", "gumbel_matrix", "gumbel_matrix_budget")
GM_MNIST_REDUCED = ("--set", "method.steps_per_task=5000", "--set", "method.eval_every_rounds=1000")


def gumbel_matrix_mnist(seeds=(0, 1, 2)) -> list[Run]:
    return [_run("gumbel_matrix-mnist", f"{variant}-seed{seed}", f"configs/gumbel_matrix/mnist_{variant}.yaml", seed,
                 *GM_MNIST_REDUCED) for seed in seeds for variant in GM_MNIST_VARIANTS]


# Parameter allocation, Omniglot with 20 alphabets (spec §7.2): shared_bottom and gumbel_matrix on the
# CPU variant (28×28, 16 filters, layers 0, 1, 3 strided, model lr 1e-3, 300 rounds, inline evaluation on
# train and validation every 50 rounds); `published_net` keeps the published strides (28 → 1×1) and model lr
# 1e-4 over 500 rounds: the runs that stayed near chance, the evidence for the CPU variant's deviations
GM_OMNIGLOT_VARIANTS = ("shared_bottom", "gumbel_matrix")


def gumbel_matrix_omniglot(seeds=(0, 1, 2), *, published_net: bool = False) -> list[Run]:
    section = "gumbel_matrix-omniglot-published-net" if published_net else "gumbel_matrix-omniglot"
    extra = ("--set", "optim.lr=0.0001", "--set", "method.strided_layers=null", "--set",
             "method.steps_per_task=500") if published_net else ()
    runs = [_run(section, f"{variant}-seed{seed}", f"configs/gumbel_matrix/omniglot_{variant}_cpu.yaml",
                 seed, *extra) for seed in seeds for variant in GM_OMNIGLOT_VARIANTS]
    if not published_net:  # the router's rate scaled to the short schedule (at 2e-3 the logits barely move in 300 rounds)
        runs.append(_run(section, "gumbel_matrix_fast_router-seed0", "configs/gumbel_matrix/omniglot_gumbel_matrix_cpu.yaml",
                         0, "--set", "method.router_lr=0.02"))
    return runs


# Parameter allocation, three task clusters (spec §7.3, preset offline: 20 Omniglot alphabets, MNIST and
# scikit-learn digits leave-one-out): the CPU variant (300 rounds, validation every 100 rounds)
GM_CLUSTERS_VARIANTS = ("gumbel_matrix", "shared_bottom")


def gumbel_matrix_clusters(seeds=(0, 1, 2)) -> list[Run]:
    return [_run("gumbel_matrix-clusters", f"{variant}-seed{seed}", f"configs/gumbel_matrix/clusters_{variant}_cpu.yaml",
                 seed) for seed in seeds for variant in GM_CLUSTERS_VARIANTS]


# Model selection rules: the rule of earlier releases (`objective`) against the default (`loss_ratio`)
# on the failing case (generated shapes, the command, seeds 0-7), Adult, MNIST and IXI
SELECTION_RULES = ("objective", "loss_ratio")


def _selection_details(run_dir: Path) -> tuple[dict, dict]:
    """The selected evaluation as figures; what every rule (metric-based ones too) would select, as extra."""
    alt = selection_evidence.alternatives(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    phase = results["selection"]["phases"][-1]
    return {"selection.best_step": phase["best_step"], "selection.evaluations": phase["evaluations"]}, {"rules": alt}


def _make_shapes(out_root: str) -> None:
    folder = Path(out_root) / "selection" / "shapes"
    if not (folder / "labels.csv").exists():
        selection_evidence.make_shapes(folder)


def _make_shapes32(out_root: str) -> None:
    folder = Path(out_root) / "selection" / "shapes32"
    if not (folder / "labels.csv").exists():
        selection_evidence.make_shapes(folder, size=32, centred=False)


def selection(seeds=range(8), seeds32=range(4)) -> list[Run]:
    runs = []
    shape_args = ("--image-col", "path", "--cat-target", "shape", "bright", "--num-target", "size",
                  "--backbone", "convnet", "--epochs", "10")
    cases = [(f"shapes-seed{s}", ("--data", "{out}/selection/shapes/labels.csv", *shape_args, "--seed", str(s)),
              _make_shapes) for s in seeds]
    cases += [(f"shapes32-seed{s}", ("--data", "{out}/selection/shapes32/labels.csv", *shape_args, "--seed", str(s)),
               _make_shapes32) for s in seeds32]
    cases += [("adult-hard", ("--config", "configs/tables/adult.yaml", "--method", "hard", "--seed", "0"), None),
              ("mnist-hard", ("--config", "configs/images/mnist.yaml", "--method", "hard", "--seed", "0"), None),
              ("ixi-hard", ("--config", "configs/adashare/ixi.yaml", "--cat-target", "Sex", "--num-target", "Age",
                            "--set", "method={name: hard}", "--seed", "0"), None)]
    for case, args, prepare in cases:
        for rule in SELECTION_RULES:
            out = f"{{out}}/selection/{case}-{rule}"
            runs.append(Run(f"{case}-{rule}", ("run", *args, "--out", out, *COMMON, "--set",
                                               f"train.selection_metric={rule}"),
                            prepare=prepare, details=_selection_details))
    return runs


SECTIONS: dict[str, list[Run]] = {
    "images": images(),
    "ixi": ixi(),
    "adashare-adult": adashare("adult"),
    "adashare-digits": adashare("digits"),
    "adashare-mnist": adashare("mnist"),
    "adashare-mnist-task_bn": adashare_task_bn(),
    # hard_long: 100 epochs, 10 900 steps, against AdaShare's 10 858 (warm-up, search and 8 re-trainings)
    "adashare-adult-fair": adashare("adult", config="configs/adashare/adult_fair.yaml", section="adashare-adult-fair",
                                    hard_epochs=100),
    "adashare-mnist-resnet-fair": adashare("mnist", config="configs/adashare/mnist_resnet.yaml",
                                          section="adashare-mnist-resnet-fair"),
    "adashare-ixi-fair": adashare("ixi", section="adashare-ixi-fair",
                                  extra=("--cat-target", "Sex", "--num-target", "Age", "--set", "method.recipe=optim",
                                         "--set", "method.retrain_total_iters=null", "--set", "method.num_archs=8")),
    "adashare-adult-fair-paper": adashare("adult", config="configs/adashare/adult_fair.yaml",
                                          section="adashare-adult-fair-paper", extra=PAPER_RECIPE_ADULT),
    "yt8m": yt8m(),
    "omniglot50": omniglot50(),
    "gumbel_matrix-mnist": gumbel_matrix_mnist(),
    "gumbel_matrix-omniglot": gumbel_matrix_omniglot(),
    "gumbel_matrix-omniglot-published-net": gumbel_matrix_omniglot(seeds=(0,), published_net=True),
    "gumbel_matrix-clusters": gumbel_matrix_clusters(),


    "selection": selection(),
}


def figures_of(run_dir: Path) -> tuple[dict[str, float], dict]:
    """(figures, extra) of one finished run directory."""
    results = json.loads((run_dir / "results.json").read_text())
    figures = figures_with_delta(results)
    for group, n in (results.get("parameters") or {}).get("by_group", {}).items():
        figures[f"parameters.{group}"] = n
    for task, flops in (results.get("flops") or {}).get("per_task", {}).items():
        figures[f"flops.{task}"] = flops
    candidates = results.get("candidates")
    extra: dict = {"test_n": {task: entry["test"].get("n") for task, entry in results["tasks"].items()}}
    if candidates:
        for task, metrics in candidates["mean_sd"].items():
            for metric, stats in metrics.items():
                if stats.get("mean") is not None:
                    figures[f"candidates.{task}.{metric}"] = stats["mean"]
        extra["selected"] = results["selection"].get("selected")
        extra["candidates"] = candidates["n"]
    figures.update(allocation_figures(run_dir, results))
    pooled = results.get("pooled_accuracy")
    if pooled:  # accuracy over every example of every task (TAAN's Omniglot number)
        figures["pooled_accuracy"] = pooled["test"]
        figures["pooled_accuracy.val"] = pooled["val"]
        phase = next((p for p in results["selection"]["phases"] if p.get("phase") == "train"), {})
        extra["selected_step"] = phase.get("best_step")
    for k, layer in enumerate(results.get("mrn_layers") or []):  # MRN: how far Ω_T moved from independence
        corr = layer["task_correlation"]
        off = [abs(corr[i][j]) for i in range(len(corr)) for j in range(len(corr)) if i != j]
        figures[f"mrn.layer{k}.mean_abs_task_correlation"] = sum(off) / len(off) if off else 0.0
        figures[f"mrn.layer{k}.omega_task_trace"] = sum(layer["omega_task"][i][i] for i in range(len(corr)))
    if results.get("dmtrl"):
        extra["dmtrl_ranks"] = results["dmtrl"]["ranks"]
    if results.get("steps"):  # optimiser steps of the whole run (AdaShare: warm-up, search, every re-training)
        figures["steps.total"] = results["steps"]["total"]
        extra["steps"] = results["steps"]["by_phase"]
    figures.update(adashare_figures(results))
    if results.get("adashare"):
        diag = results["adashare"]
        extra["diagnostics"] = {"task_distance": diag["task_distance"], "grad_norm_summary": diag["grad_norm_summary"],
                                "exec_prob_history": diag["exec_prob_history"]}
    checkpoints = results.get("checkpoints")
    if checkpoints:  # the routing methods' checkpoint table (checkpoints.csv): the selection and its curves
        figures["checkpoints.evaluations"] = checkpoints["evaluations"]
        if checkpoints.get("selected_round") is not None:
            figures["checkpoints.selected_round"] = checkpoints["selected_round"]
        for split, value in checkpoints.get("selected_average", {}).items():
            if value is not None:
                figures[f"checkpoints.selected_average.{split}"] = value
        extra["curves"] = checkpoints.get("curves")
    policy = run_dir / "policy.json"
    if policy.exists():
        p = json.loads(policy.read_text())
        extra["policy"] = {k: p[k] for k in ("cycle", "search_cycles", "temperature", "curriculum_complete", "exec_prob")
                           if k in p}
        extra["architectures"] = [{k: a[k] for k in ("name", "policy", "num_removed", "selected") if k in a}
                                  for a in p.get("architectures", [])]
    return figures, extra


def adashare_figures(results: dict) -> dict[str, float]:
    """AdaShare's diagnostics as figures: the mean pairwise task distance of the selected policy
    (mean |Δp_exec| and argmax Hamming) and each loss term's share of the policy-logit gradient."""
    diag = results.get("adashare")
    if not diag:
        return {}
    figures: dict[str, float] = {}
    tasks = list(diag["exec_prob"])
    pairs = [(s, t) for i, s in enumerate(tasks) for t in tasks[i + 1:]]
    if pairs:
        for kind in ("mean_abs", "hamming_argmax"):
            figures[f"adashare.distance.{kind}"] = sum(diag["task_distance"][kind][s][t] for s, t in pairs) / len(pairs)
    summary = diag.get("grad_norm_summary") or {}
    for term, share in (summary.get("share") or {}).items():
        if share is not None:
            figures[f"adashare.grad_share.{term}"] = share
    for term, value in (summary.get("mean") or {}).items():
        if "/" not in term:
            figures[f"adashare.grad_norm.{term}"] = value
    return figures


def allocation_figures(run_dir: Path, results: dict) -> dict[str, float]:
    """A routing method's learned allocation as figures: each task's active fraction (deterministic
    pattern) and expected fraction (mean connection probability p), and the family separation of
    the binary and soft task similarity (within, across, difference)."""
    allocation = results.get("allocation")
    if not allocation:
        return {}
    figures: dict[str, float] = {}
    for task, fraction in allocation.get("active_fraction", {}).items():
        figures[f"allocation.active_fraction.{task}"] = fraction
    record = run_dir / "allocation.json"
    if record.exists():
        layers = json.loads(record.read_text())["layers"]
        for task in allocation.get("active_fraction", {}):
            p = [v for layer in layers for v in layer["p"][task]]
            figures[f"allocation.expected_fraction.{task}"] = sum(p) / len(p)
    for kind, sep in (allocation.get("similarity") or {}).get("separation", {}).items():
        for key in ("within", "across", "difference"):
            if sep and sep.get(key) is not None:
                figures[f"allocation.separation.{kind}.{key}"] = sep[key]
        for family, parts in ((sep or {}).get("by_family") or {}).items():  # the per-family breakdown (§7.3)
            for key in ("within", "across", "difference"):
                if parts.get(key) is not None:
                    figures[f"allocation.separation.{kind}.by_family.{family}.{key}"] = parts[key]
    return figures


def measure(run: Run, out_root: str) -> tuple[str, dict, dict, dict]:
    """Run it; returns (command, figures, extra, timings)."""
    argv = run.argv(out_root)
    if run.prepare is not None:
        run.prepare(out_root)
    cpu_before = _children_cpu()
    wall = run_sharewise(argv)
    cpu = _children_cpu() - cpu_before
    figures, extra = figures_of(run.out_dir(out_root))
    if run.details is not None:
        more, more_extra = run.details(run.out_dir(out_root))
        figures.update(more)
        extra.update(more_extra)
    return "sharewise " + shlex.join(argv), figures, extra, {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (the run's CPU time: the machine
    is shared, so its wall time is an upper bound)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def select(section: str, names: list[str] | None) -> list[Run]:
    runs = SECTIONS[section]
    if not names:
        return runs
    known = {r.name for r in runs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"section {section!r} has no run {unknown[0]!r} (runs: {', '.join(sorted(known))})")
    return [r for r in runs if r.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", nargs="?", choices=sorted(SECTIONS))
    parser.add_argument("--names", nargs="+", help="only these runs of the section")
    parser.add_argument("--out-root", default=DEFAULT_OUT_ROOT)
    parser.add_argument("--replace", action="store_true", help="overwrite the records instead of adding repetitions")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list or not args.section:
        for section, runs in SECTIONS.items():
            print(f"{section}: " + " ".join(r.name for r in runs))
        return 0
    runs = select(args.section, args.names)
    by_name = {r.name: r for r in SECTIONS[args.section]}
    for run in runs:
        for need in run.needs:
            if not (by_name[need].out_dir(args.out_root) / "results.json").exists():
                raise SystemExit(f"{args.section}/{run.name} needs {need} first (run it, or leave out --names)")
        command, figures, extra, timings = measure(run, args.out_root)
        store_run(args.section, run.name, command=command, figures=figures, threads=THREADS,
                  timings=timings, extra=extra, replace=args.replace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
