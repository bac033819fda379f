"""Renderers of docs/benchmarks.md's generated tables for the sections measured by
benchmarks/section_runs.py (Images, IXI, AdaShare) and the loading and speed benchmarks.

Each renderer reads run records (benchmarks/record.py) and returns a block's text; collected by
benchmarks/tables.py into its `RENDERERS`. Numbers are formatted as the prose around the tables
expects (accuracy 4 digits, MAE 3, parameters grouped by thousands, FLOPs in M where large).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from typing import Callable

from _format import grouped, mean_sd
from record import load_run, load_runs

# name -> (render(runs_root) -> block text, what the block's opening line names as its sources)
REGISTERED: dict[str, tuple[Callable[[Path], str], str]] = {}


def register(name: str, sources: str):
    def wrap(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        REGISTERED[name] = (fn, sources)
        return fn
    return wrap

# --- helpers ------------------------------------------------------------------------------------


def _figures(runs_root: Path, section: str, name: str) -> dict[str, float]:
    return load_run(section, name, runs_root)["figures"]


def _record(runs_root: Path, section: str, name: str) -> dict:
    return load_run(section, name, runs_root)


def _mflops(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else grouped(n)


def _wall(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _walls(records: list[dict]) -> str:
    walls = [r["timings"]["wall_s"] for r in records if r.get("timings", {}).get("wall_s") is not None]
    if not walls:
        return "–"
    lo, hi = min(walls), max(walls)
    return _wall(lo) if len(walls) == 1 or round(lo) == round(hi) else f"{_wall(lo)} – {_wall(hi)}"


def _signed_mean_sd(values: list[float], digits: int) -> str:
    """'+0.38 ± 0.09' (a mean that rounds to zero is '+0.00', never '-0.00')."""
    mean = round(statistics.mean(values), digits) + 0.0
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.{digits}f} ± {sd:.{digits}f}"


# --- Images ---------------------------------------------------------------------------------------

MNIST_TASKS = (("digit.accuracy", 4), ("parity.accuracy", 4), ("large.accuracy", 4), ("value.mae", 4), ("value.r2", 4))


@register("images-mnist", "benchmarks/results/runs/images/mnist-{hard,independent}.json")
def images_mnist(runs_root: Path) -> str:
    rows = ["| method | digit acc | parity acc | large acc | value MAE ↓ | value R² | parameters (total) "
            "| FLOPs / example, all tasks | wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in ("hard", "independent"):
        rec = _record(runs_root, "images", f"mnist-{method}")
        f = rec["figures"]
        cells = [f"{f[k]:.{d}f}" for k, d in MNIST_TASKS]
        rows.append(f"| `{method}` | " + " | ".join(cells)
                    + f" | {grouped(f['parameters'])} | {_mflops(f['flops'])} | {_walls([rec])} |")
    return "\n".join(rows)


def _omniglot_tasks(figures: dict[str, float]) -> list[str]:
    return [k[:-len(".accuracy")] for k in figures if k.endswith(".accuracy") and not k.startswith("candidates.")]


@register("images-omniglot", "benchmarks/results/runs/images/omniglot20-{hard,independent}.json")
def images_omniglot(runs_root: Path) -> str:
    recs = {m: _record(runs_root, "images", f"omniglot20-{m}") for m in ("hard", "independent")}
    figs = {m: r["figures"] for m, r in recs.items()}
    tasks = _omniglot_tasks(figs["hard"])
    rows = ["| alphabet | hard | independent |", "|---|---:|---:|"]
    for t in tasks:
        rows.append(f"| {t} | {figs['hard'][t + '.accuracy']:.4f} | {figs['independent'][t + '.accuracy']:.4f} |")
    means = {m: statistics.mean(figs[m][t + ".accuracy"] for t in tasks) for m in figs}
    rows.append(f"| **mean test accuracy ({len(tasks)} tasks)** | **{means['hard']:.4f}** | **{means['independent']:.4f}** |")

    def params(f: dict) -> str:
        parts = [f"{g} {grouped(f[f'parameters.{g}'])}" for g in ("backbone", "heads") if f"parameters.{g}" in f]
        return f"{grouped(f['parameters'])}" + (f" ({' + '.join(parts)})" if parts else "")
    rows.append(f"| parameters (total) | {params(figs['hard'])} | {params(figs['independent'])} |")
    rows.append(f"| FLOPs / example, all {len(tasks)} tasks | {_mflops(figs['hard']['flops'])} "
                f"| {_mflops(figs['independent']['flops'])} |")
    rows.append(f"| wall (`run`: train + test + report) | {_walls([recs['hard']])} | {_walls([recs['independent']])} |")
    return "\n".join(rows)


# --- Brain MRI (IXI) ----------------------------------------------------------------------------

IXI_SEEDS = (0, 1, 2)
IXI_METHODS = (("adashare", "`adashare` (selected of 2 architectures)", "T1 volume 48³"),
               ("hard", "`hard`", "T1 volume 48³"),
               ("independent", "`independent`", "T1 volume 48³"),
               ("regional", "`hard`, MLP", "260 DLMUSE regional volumes"))
IXI_METRICS = (("Age.mae", 2), ("Sex.accuracy", 3), ("Sex.auroc", 3), ("Age.r2", 3))


def _ixi_baselines(runs_root: Path) -> dict:
    path = runs_root.parent / "ixi_baselines.json"
    if not path.exists():
        raise FileNotFoundError(f"no trivial-predictor results {path} (benchmarks/ixi_baselines.py)")
    return json.loads(path.read_text())


@register("ixi-test", "benchmarks/results/runs/ixi/*-seed{0,1,2}.json and benchmarks/results/ixi_baselines.json")
def ixi_test(runs_root: Path) -> str:
    rows = ["| method | input | age MAE ↓ (years) | sex accuracy ↑ | sex AUROC ↑ | age R² ↑ |",
            "|---|---|---|---|---|---|"]
    for key, label, data in IXI_METHODS:
        figs = [_figures(runs_root, "ixi", f"{key}-seed{s}") for s in IXI_SEEDS]
        rows.append(f"| {label} | {data} | " + " | ".join(mean_sd([f[k] for f in figs], d) for k, d in IXI_METRICS) + " |")
    base = _ixi_baselines(runs_root)["mean_sd"]
    majority = _ixi_baselines(runs_root)["per_seed"]["0"]["Sex"]["prediction"]
    rows.append(f"| trivial predictor | median age / majority sex (`{majority}`) | "
                f"{base['Age']['mean']:.2f} ± {base['Age']['sd']:.2f} | "
                f"{base['Sex']['mean']:.3f} ± {base['Sex']['sd']:.3f} | – | – |")
    return "\n".join(rows)


@register("ixi-per-seed", "benchmarks/results/runs/ixi/*-seed{0,1,2}.json and benchmarks/results/ixi_baselines.json")
def ixi_per_seed(runs_root: Path) -> str:
    def seeds(key: str, prefix: str = "") -> str:
        figs = [_figures(runs_root, "ixi", f"{key}-seed{s}") for s in IXI_SEEDS]
        return ", ".join(f"{f[prefix + 'Age.mae']:.2f} / {f[prefix + 'Sex.accuracy']:.3f}" for f in figs)
    base = _ixi_baselines(runs_root)["per_seed"]
    trivial = ", ".join(f"{base[str(s)]['Age']['mae']:.2f}" for s in IXI_SEEDS)
    medians = ", ".join(f"{base[str(s)]['Age']['prediction']:.1f}" for s in IXI_SEEDS)
    return (f"Per seed (0, 1, 2), age MAE / sex accuracy: `adashare` {seeds('adashare')} (the mean of both\n"
            f"re-trained architectures: {seeds('adashare', 'candidates.')}); `hard` {seeds('hard')};\n"
            f"`independent` {seeds('independent')}; regional {seeds('regional')}; trivial {trivial}\n"
            f"(median age {medians}) / {base['0']['Sex']['accuracy']:.3f}.")


@register("ixi-cost", "benchmarks/results/runs/ixi/*-seed{0,1,2}.json")
def ixi_cost(runs_root: Path) -> str:
    rows = ["| method | parameters | FLOPs per example, both tasks | wall time per `run` (seeds 0–2, 1 thread) |",
            "|---|---|---|---|"]
    for key, label, _ in IXI_METHODS:
        recs = [_record(runs_root, "ixi", f"{key}-seed{s}") for s in IXI_SEEDS]
        params = sorted({r["figures"]["parameters"] for r in recs}, key=lambda x: x)
        flops = [r["figures"]["flops"] for r in recs]
        label = label.split(" (")[0] if key != "regional" else "regional MLP"
        if len(params) == 1:
            p, fl = grouped(params[0]), _mflops(flops[0])
        else:
            p = " / ".join(grouped(r["figures"]["parameters"]) for r in recs) + " (selected architecture, seeds 0/1/2)"
            fl = " / ".join(_mflops(x) for x in flops) + " (tree execution)"
        rows.append(f"| {label} | {p} | {fl} | {_walls(recs)} |")
    return "\n".join(rows)


# --- AdaShare against hard and independent ---------------------------------------------------------

ADASHARE = {
    "adult": (("income.accuracy", 4), ("marital-status.accuracy", 4), ("age.mae", 3)),
    "digits": (("digit.accuracy", 4), ("parity.accuracy", 4), ("large.accuracy", 4), ("value.mae", 3)),
    "mnist": (("digit.accuracy", 4), ("parity.accuracy", 4), ("large.accuracy", 4), ("value.mae", 3)),
    "ixi": (("Sex.accuracy", 4), ("Age.mae", 3)),
}
ADASHARE_SEEDS = (0, 1, 2)


def _metric_header(key: str) -> str:
    task, metric = key.rsplit(".", 1)
    return f"{task} acc ↑" if metric == "accuracy" else f"{task} MAE ↓"


def _method_cells(method: str, figs: list[dict], metrics) -> tuple[list[str], str, str]:
    """A method's row over seeds: each metric's mean ± sd, its Δ_MTL and its parameter count."""
    cells = [mean_sd([f[k] for f in figs], d) for k, d in metrics]
    delta = "(reference)" if method == "independent" else _signed_mean_sd([f["delta_mtl"] for f in figs], 2)
    params = [f["parameters"] for f in figs]
    p = grouped(params[0]) if len(set(params)) == 1 else (
        f"{grouped(statistics.mean(params))} ± {grouped(statistics.stdev(params))}")
    return cells, delta, p


def _adashare_table(runs_root: Path, data: str) -> str:
    section, metrics = f"adashare-{data}", ADASHARE[data]
    tasks = [k.rsplit(".", 1)[0] for k, _ in metrics]
    rows = ["| method | " + " | ".join(_metric_header(k) for k, _ in metrics)
            + " | Δ_MTL (%) | parameters | FLOPs / example, per task (" + " / ".join(tasks) + ") | wall per run |",
            "|---" * (len(metrics) + 5) + "|"]
    for method in ("independent", "hard", "adashare"):
        recs = [_record(runs_root, section, f"{method}-seed{s}") for s in ADASHARE_SEEDS]
        figs = [r["figures"] for r in recs]
        cells, delta, p = _method_cells(method, figs, metrics)
        per_task = [statistics.mean(f[f"flops.{t}"] for f in figs) for t in tasks]
        same = all(len({f[f"flops.{t}"] for f in figs}) == 1 for t in tasks)
        fl = " / ".join(_mflops(x) for x in per_task) + ("" if same else " (means)")
        rows.append(f"| `{method}` | " + " | ".join(cells) + f" | {delta} | {p} "
                    f"| {fl} | {_walls(recs)} |")
    return "\n".join(rows)


def _candidates_line(runs_root: Path, data: str) -> str:
    section, metrics = f"adashare-{data}", ADASHARE[data]
    figs = [_figures(runs_root, section, f"adashare-seed{s}") for s in ADASHARE_SEEDS]
    parts = []
    for key, d in metrics:
        vals = [f[f"candidates.{key}"] for f in figs]
        parts.append(f"{_metric_header(key).rsplit(' ', 1)[0]} {min(vals):.{d}f}–{max(vals):.{d}f}")
    return ("Mean over the re-trained architectures of each seed (test, not used for any choice; per seed, "
            "lowest–highest of the three means): " + ", ".join(parts) + ".")


def _selected_architecture(archs: list[dict]) -> str:
    """The selected architecture task by task, one digit per block (1 = run); '–' if none is marked."""
    chosen = next((a for a in archs if a.get("selected")), None)
    return " ".join("".join(map(str, v)) for v in chosen["policy"].values()) if chosen else "–"


def _architectures_line(runs_root: Path, data: str) -> str:
    section = f"adashare-{data}"
    out = []
    for s in ADASHARE_SEEDS:
        rec = _record(runs_root, section, f"adashare-seed{s}")
        archs = rec.get("architectures", [])
        pol = rec.get("policy", {})
        probs = "; ".join(f"{t} " + "/".join(f"{p:.2f}" for p in ps) for t, ps in pol.get("exec_prob", {}).items())
        removed = sum(1 for a in archs if a.get("num_removed"))
        sel = _selected_architecture(archs)
        out.append(f"- seed {s}: selected `{sel}` of {len(archs)} ({removed} with a block no task runs); "
                   f"search ended at cycle {pol.get('cycle')}/{pol.get('search_cycles')}, τ = {pol.get('temperature', 0):.2f}, "
                   f"curriculum {'complete' if pol.get('curriculum_complete') else 'incomplete'}; p_exec {probs}")
    return "\n".join(out)


for _data in ADASHARE:
    register(f"adashare-{_data}", f"benchmarks/results/runs/adashare-{_data}/*-seed{{0,1,2}}.json")(
        lambda root, d=_data: _adashare_table(root, d))
    register(f"adashare-{_data}-candidates", f"benchmarks/results/runs/adashare-{_data}/adashare-seed{{0,1,2}}.json")(
        lambda root, d=_data: _candidates_line(root, d))
    register(f"adashare-{_data}-architectures", f"benchmarks/results/runs/adashare-{_data}/adashare-seed{{0,1,2}}.json")(
        lambda root, d=_data: _architectures_line(root, d))


# --- AdaShare at equal recipe and its diagnostics (issue 23) ---------------------------------------

FAIR = {"adashare-adult-fair": "adult", "adashare-adult-fair-paper": "adult",
        "adashare-mnist-resnet-fair": "mnist", "adashare-ixi-fair": "ixi"}


def _cpu(records: list[dict]) -> str:
    cpus = [r["timings"]["cpu_s"] for r in records if r.get("timings", {}).get("cpu_s") is not None]
    if not cpus:
        return "–"
    lo, hi = min(cpus), max(cpus)
    return _wall(lo) if round(lo) == round(hi) else f"{_wall(lo)} – {_wall(hi)}"


def _fair_seeds(runs_root: Path, section: str) -> list[int]:
    """The seeds of 0, 1, 2 whose three runs are all recorded (a section measured in part says n)."""
    seeds = [s for s in ADASHARE_SEEDS
             if all((runs_root / section / f"{m}-seed{s}.json").exists() for m in ("independent", "hard", "adashare"))]
    if not seeds:
        raise FileNotFoundError(f"no complete seed (independent, hard, adashare) under {runs_root / section}")
    return seeds


def _fair_table(runs_root: Path, section: str) -> str:
    """The three methods at one recipe: metrics, Δ_MTL, parameters and FLOPs (AdaShare: of the selected
    architecture, skipped blocks not counted), the optimiser steps of the whole
    run (AdaShare: warm-up + search + every re-trained architecture) and CPU time per run."""
    metrics = ADASHARE[FAIR[section]]
    seeds = _fair_seeds(runs_root, section)
    rows = [f"| method (n = {len(seeds)}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}) | "
            + " | ".join(_metric_header(k) for k, _ in metrics)
            + " | Δ_MTL (%) | parameters | FLOPs / example, all tasks | optimiser steps per run | CPU per run |",
            "|---" * (len(metrics) + 6) + "|"]
    long = [s for s in seeds if (runs_root / section / f"hard_long-seed{s}.json").exists()]
    for method in ("independent", "hard", "adashare") + (("hard_long",) if long else ()):
        recs = [_record(runs_root, section, f"{method}-seed{s}") for s in (long if method == "hard_long" else seeds)]
        figs = [r["figures"] for r in recs]
        cells, delta, p = _method_cells(method, figs, metrics)
        flops = [f["flops"] for f in figs]
        fl = _mflops(flops[0]) if len(set(flops)) == 1 else f"{_mflops(statistics.mean(flops))} (mean)"
        steps = sorted({f["steps.total"] for f in figs})
        st = " / ".join(grouped(x) for x in steps)
        if method == "adashare":
            phases = recs[0].get("steps", {})
            search = phases.get("warmup", 0) + phases.get("search", 0)
            st += f" ({grouped(search)} warm-up + search, {grouped(steps[0] - search)} re-training)"
        label = f"`hard`, as many steps as AdaShare (n = {len(recs)})" if method == "hard_long" else f"`{method}`"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {delta} | {p} | {fl} | {st} | {_cpu(recs)} |")
    return "\n".join(rows)


def _fair_diagnostics(runs_root: Path, section: str) -> str:
    """Per seed: what AdaShare's policy learned (pairwise distances) and which term decided it."""
    out = []
    for s in _fair_seeds(runs_root, section):
        rec = _record(runs_root, section, f"adashare-seed{s}")
        f, pol = rec["figures"], rec.get("policy", {})
        probs = "; ".join(f"{t} " + "/".join(f"{p:.3f}" for p in ps) for t, ps in pol.get("exec_prob", {}).items())
        summary = rec.get("diagnostics", {}).get("grad_norm_summary") or {}
        archs = rec.get("architectures", [])
        sel = _selected_architecture(archs)
        means = ", ".join(f"{_metric_header(k).rsplit(' ', 1)[0]} {f[f'candidates.{k}']:.{d}f}"
                          for k, d in ADASHARE[FAIR[section]] if f"candidates.{k}" in f)
        out.append(f"- seed {s}: selected `{sel}` of {len(archs)} (mean of the {len(archs)} on test, used for "
                   f"nothing: {means}); p_exec {probs}; mean pairwise |Δp_exec| {f['adashare.distance.mean_abs']:.4f}, "
                   f"argmax Hamming {f['adashare.distance.hamming_argmax']:.2f} blocks; gradient on the logits "
                   f"(mean norm over {summary.get('cycles', '–')} cycles) task {f['adashare.grad_norm.task']:.3g}, "
                   f"sparsity {f['adashare.grad_norm.sparsity']:.3g}, sharing {f['adashare.grad_norm.sharing']:.3g} "
                   f"(shares {100 * f['adashare.grad_share.task']:.0f} / {100 * f['adashare.grad_share.sparsity']:.0f} / "
                   f"{100 * f['adashare.grad_share.sharing']:.0f} %)")
    return "\n".join(out)


for _section in FAIR:
    register(_section, f"benchmarks/results/runs/{_section}/*-seed{{0,1,2}}.json (the seeds with all three runs)")(
        lambda root, s=_section: _fair_table(root, s))
    register(f"{_section}-diagnostics", f"benchmarks/results/runs/{_section}/adashare-seed{{0,1,2}}.json")(
        lambda root, s=_section: _fair_diagnostics(root, s))


KNOWN_ANSWER = "adashare-known-answer"
KNOWN_CASES = {"mnist": "MNIST: a1 = a2 upright, b1 = b2 turned 90°",
               "xor_noise": "table: a1 = a2 = 1[x0·x1 > 0], b1 = b2 coin flips"}
KNOWN_CHANGES = {"spec": "the spec's defaults (λ_sp = λ_sh = 0.05, policy lr 0.01)", "no_reg": "λ_sp = λ_sh = 0",
                 "no_reg_fast_policy": "λ_sp = λ_sh = 0, policy lr 0.1", "no_sharing": "λ_sh = 0 (λ_sp 0.05)",
                 "low_sharing": "λ_sh = 0.005 (λ_sp 0.05)", "sharing_1e-2": "λ_sh = 0.01 (λ_sp 0.05)",
                 "sharing_2e-2": "λ_sh = 0.02 (λ_sp 0.05)"}


def _known_runs(runs_root: Path) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in _section_records(runs_root, KNOWN_ANSWER):
        name = r["name"].rsplit("-seed", 1)[0]
        case, variant = ("xor_noise", name[len("xor_noise-"):]) if name.startswith("xor_noise-") else ("mnist", name)
        groups.setdefault((case, variant), []).append(r)
    return groups


@register("adashare-known-answer", "benchmarks/results/runs/adashare-known-answer/*.json")
def known_answer(runs_root: Path) -> str:
    rows = ["| case | setting | n (seeds) | within-group mean \\|Δp\\| | between-group | separation (between − within) "
            "| argmax Hamming separation (blocks) | gradient share task / sparsity / sharing (%) | CPU per run |",
            "|---" * 9 + "|"]
    groups = _known_runs(runs_root)
    for case in KNOWN_CASES:
        for variant in KNOWN_CHANGES:
            recs = sorted(groups.get((case, variant), []), key=lambda r: r["name"])
            if not recs:
                continue
            f = [r["figures"] for r in recs]
            seeds = ", ".join(r["name"].rsplit("-seed", 1)[1] for r in recs)
            shares = " / ".join(f"{100 * statistics.mean(x[f'grad_share.{k}'] for x in f):.0f}"
                                for k in ("task", "sparsity", "sharing"))
            rows.append(f"| {KNOWN_CASES[case]} | {KNOWN_CHANGES[variant]} | {len(recs)} ({seeds}) "
                        f"| {mean_sd([x['mean_abs.within'] for x in f], 4)} | {mean_sd([x['mean_abs.between'] for x in f], 4)} "
                        f"| {_signed_mean_sd([x['mean_abs.separation'] for x in f], 4)} "
                        f"| {_signed_mean_sd([x['hamming_argmax.separation'] for x in f], 2)} | {shares} | {_cpu(recs)} |")
    return "\n".join(rows)


@register("adashare-mnist-task_bn", "benchmarks/results/runs/adashare-mnist/adashare-seed{0,1,2}.json "
          "and benchmarks/results/runs/adashare-mnist-task_bn/adashare-seed{1,2}.json")
def adashare_mnist_task_bn(runs_root: Path) -> str:
    metrics = ADASHARE["mnist"]
    rows = ["| method | " + " | ".join(_metric_header(k) for k, _ in metrics) + " | parameters | FLOPs / example, all tasks |",
            "|---" * (len(metrics) + 3) + "|"]
    base = [_figures(runs_root, "adashare-mnist", f"adashare-seed{s}") for s in ADASHARE_SEEDS]
    fl = [f["flops"] for f in base]
    rows.append(f"| `adashare` (above, n = {len(base)}) | " + " | ".join(mean_sd([f[k] for f in base], d) for k, d in metrics)
                + f" | {' / '.join(sorted({grouped(f['parameters']) for f in base}))} | {_mflops(min(fl))} – {_mflops(max(fl))} |")
    for s in (1, 2):
        f = _figures(runs_root, "adashare-mnist-task_bn", f"adashare-seed{s}")
        rows.append(f"| `adashare`, `task_bn`, seed {s} | " + " | ".join(f"{f[k]:.{d}f}" for k, d in metrics)
                    + f" | {grouped(f['parameters'])} | {_mflops(f['flops'])} |")
    return "\n".join(rows)


# --- loading throughput ------------------------------------------------------------------------------


def _loading_table(runs_root: Path, name: str, header: str, variants: dict[str, dict], labels: dict[str, str],
                   digits: int = 1) -> str:
    """One row per cache variant of the latest run of `loading/<name>`: `variants[v]` = {"cells":
    the row's figures from that run, "ratio": (run -> that variant's ratio to `none`)}; the last
    column is that ratio over every stored run."""
    runs = load_runs("loading", name, runs_root)
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for variant, spec in variants.items():
        ratios = [spec["ratio"](run["result"]) for run in runs]
        lo, hi = f"{min(ratios):.{digits}f}", f"{max(ratios):.{digits}f}"
        spread = f"{lo}× (n = {len(ratios)})" if lo == hi else f"{lo}–{hi}× (n = {len(ratios)})"
        rows.append(f"| {labels[variant]} | " + " | ".join(spec["cells"](runs[-1]["result"])) + f" | {spread} |")
    return "\n".join(rows)


def _num(v: float) -> str:
    return grouped(v) if v >= 1000 else f"{v:.1f}"


@register("loading-images", "benchmarks/results/runs/loading/images*.json")
def loading_images(runs_root: Path) -> str:
    def row(variant: str):
        return lambda result: next(r for r in result["rows"] if r["variant"] == variant)

    def cells(variant: str):
        def fn(result: dict) -> list[str]:
            r = row(variant)(result)
            ratio = f"{r['speedup_vs_none']:.1f}×"
            return [f"{r['median_s']:.3f}", grouped(r["images_per_s"]), f"**{ratio}**" if variant == "memory" else ratio]
        return fn
    variants = {v: {"cells": cells(v), "ratio": (lambda result, v=v: row(v)(result)["speedup_vs_none"])}
                for v in ("none", "memory", "disk")}
    labels = {"none": "`none` (decode PNG from the zip every batch)", "memory": "`memory` (default, warm)",
              "disk": "`disk` (`.npy` memory map, warm)"}
    return _loading_table(runs_root, "images", "| cache | median s / epoch | images / s | vs `none` | vs `none`, every stored run |",
                          variants, labels)


@register("loading-volumes", "benchmarks/results/runs/loading/volumes*.json")
def loading_volumes(runs_root: Path) -> str:
    def cells(variant: str):
        def fn(result: dict) -> list[str]:
            stats = result["volumes_per_s"][variant]
            return [_num(stats["median"]), f"{_num(min(stats['all']))} – {_num(max(stats['all']))}",
                    f"{result['ratio_vs_none'][variant]:.0f}"]
        return fn
    variants = {v: {"cells": cells(v), "ratio": (lambda result, v=v: result["ratio_vs_none"][v])}
                for v in ("none", "memory", "disk")}
    labels = {"none": "`none` (every access decodes)", "memory": "`memory` (warm)",
              "disk": "`disk` (warm, a later run's fresh store)"}
    return _loading_table(runs_root, "volumes", "| cache | volumes/s (median) | min – max | × none | × none, every stored run |",
                          variants, labels, digits=0)


# --- AdaShare speed (benchmarks/adashare_speed.py) ---------------------------------------------------

SPEED_NAMES = {"mlp": "MLP", "resnet": "ResNet", "mlp_wide": "wide MLP", "resnet_32px": "32-px ResNet",
               "mlp_demo": "demo MLP"}
SPEED_POLICIES = {"random": "random", "all_shared": "all-shared", "disjoint": "disjoint",
                  "learned_demo": "learned on the demo"}


def speed_runs(runs_root: Path, full_only: bool = False) -> list[dict]:
    """Every stored run of the speed benchmark at the default allocator setting, oldest first
    (full runs `adashare*.json`; with `full_only` only those, else also `--only`/`--sizes` runs)."""
    folder = runs_root / "speed"
    names = sorted({p.stem.split(".")[0] for p in folder.glob("adashare*.json")}) if folder.exists() else []
    runs = []
    for name in names:
        if "default_malloc" in name or (full_only and name != "adashare"):
            continue
        runs.extend(load_runs("speed", name, runs_root))
    if not runs:
        raise FileNotFoundError(f"no speed records under {folder} (benchmarks/adashare_speed.py)")
    return sorted(runs, key=lambda r: r["measured"])


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}–{hi:.2f} (n = {len(values)})" if len(values) > 1 else f"{lo:.2f} (n = 1)"


def _over_runs(runs: list[dict], key: str) -> list[float]:
    return [r["figures"][key] for r in runs if key in r["figures"]]


@register("speed-search", "the latest full run in benchmarks/results/runs/speed/adashare*.json; ranges over every stored run")
def speed_search(runs_root: Path) -> str:
    runs = speed_runs(runs_root)
    last = speed_runs(runs_root, full_only=True)[-1]["result"]
    rows = ["| backbone | tasks | window | FLOP ratio | loop ms | auto ms | batched ms | auto speed-up | batched speed-up "
            "| auto speed-up, every stored run | peak MB loop / auto / batched |", "|---" * 11 + "|"]
    for r in last["search"]:
        ms = {k: 1e3 * r["timing"][k]["median_s"] for k in ("loop", "auto", "batched")}
        key = f"search.{r['backbone']}.{r['tasks']}.{r['window']}.auto"
        peak = " / ".join(f"{r['peak_bytes'][k] / 2**20:.1f}" for k in ("loop", "auto", "batched"))
        rows.append(f"| {SPEED_NAMES[r['backbone']]} | {r['tasks']} | {r['window']} | {r['flop_ratio']:.2f} | {ms['loop']:.1f} "
                    f"| {ms['auto']:.1f} | {ms['batched']:.1f} | **{r['speedup']:.2f}** | {r['speedup_batched']:.2f} "
                    f"| {_spread(_over_runs(runs, key))} | {peak} |")
    return "\n".join(rows)


@register("speed-tree", "the latest full run in benchmarks/results/runs/speed/adashare*.json; ranges over every stored run")
def speed_tree(runs_root: Path) -> str:
    runs = speed_runs(runs_root)
    last = speed_runs(runs_root, full_only=True)[-1]["result"]
    rows = ["| backbone | tasks | policy | FLOP ratio | train speed-up | (÷ ratio) | train ÷ ratio, every stored run "
            "| without the Adam step | bound (one task's step) | train ÷ bound | op ratio | train ÷ op ratio "
            "| inference speed-up | (÷ ratio) | inference ÷ ratio, every stored run | peak MB, train: per-task / tree "
            "| peak MB, inference |", "|---" * 17 + "|"]
    for r in last["tree"]:
        if r["tasks"] < 4:
            continue  # the 2-task rows are in the JSON
        key = f"tree.{r['backbone']}.{r['tasks']}.{r['policy']}"
        fr = r["flop_ratio"]
        ops = r["operations"]["per_task"] / r["operations"]["tree"]
        train_fr = [t / f for t, f in zip(_over_runs(runs, key + ".train"), _over_runs(runs, key + ".flop_ratio"))]
        inf_fr = [t / f for t, f in zip(_over_runs(runs, key + ".inference"), _over_runs(runs, key + ".flop_ratio"))]
        pt, pi = r["peak_bytes"]["train"], r["peak_bytes"]["inference"]
        rows.append(f"| {SPEED_NAMES[r['backbone']]} | {r['tasks']} | {SPEED_POLICIES.get(r['policy'], r['policy'])} | {fr:.2f} "
                    f"| {r['train_speedup']:.2f} | {r['train_speedup'] / fr:.2f} | {_spread(train_fr)} "
                    f"| {r['train_speedup_no_step']:.2f} | {r['train_bound']:.2f} | {r['train_speedup'] / r['train_bound']:.2f} "
                    f"| {ops:.2f} | {r['train_speedup'] / ops:.2f} | {r['inference_speedup']:.2f} "
                    f"| {r['inference_speedup'] / fr:.2f} | {_spread(inf_fr)} "
                    f"| {pt['per_task'] / 2**20:.1f} / {pt['tree'] / 2**20:.1f} | {pi['per_task'] / 2**20:.2f} / {pi['tree'] / 2**20:.2f} |")
    return "\n".join(rows)


def _range_median(values: list[float]) -> str:
    if not values:
        return "not measured"
    return (f"{min(values):.2f}–{max(values):.2f}×, median {statistics.median(values):.2f} (n = {len(values)})"
            if len(values) > 1 else f"{values[0]:.2f}× (n = 1)")


@register("speed-targets", "every stored run in benchmarks/results/runs/speed/adashare*.json")
def speed_targets(runs_root: Path) -> str:
    runs = speed_runs(runs_root)

    def search(backbone: str, tasks: int, window: str, variant: str = "auto") -> list[float]:
        return _over_runs(runs, f"search.{backbone}.{tasks}.{window}.{variant}")

    def met(values: list[float], target: float, unit: str = "runs") -> str:
        if not values:
            return "not measured"
        hits = sum(v >= target for v in values)
        return "met" if hits == len(values) else f"met in {hits} of {len(values)} {unit}"

    def tree_ratio(kind: str, policies: tuple[str, ...], backbones: tuple[str, ...], ops: bool = False) -> list[float]:
        """speed-up ÷ FLOP ratio (with ``ops``: ÷ the lower of the FLOP and op ratios) of every
        (row, run) pair with 4 or 8 tasks."""
        out = []
        for run in runs:
            f = run["figures"]
            for b in backbones:
                for t in (4, 8):
                    for p in policies:
                        key = f"tree.{b}.{t}.{p}"
                        if f"{key}.{kind}" in f:
                            limit = min(f[f"{key}.flop_ratio"], f.get(f"{key}.op_ratio", 1e9)) if ops else f[f"{key}.flop_ratio"]
                            out.append(f[f"{key}.{kind}"] / limit)
        return out

    def lo_hi(values: list[float]) -> str:
        if not values:
            return "not measured"
        lo, hi = min(values), max(values)
        return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"

    rows = ["| target | measured (every stored run) | |", "|---|---|---|"]
    for tasks, target in ((4, 1.5), (8, 2.0)):
        full = search("mlp", tasks, "full")
        rows.append(f"| batched search ≥ {target}× the loop, small MLP, {tasks} tasks | full window {_range_median(full)}; "
                    f"first window {lo_hi(search('mlp', tasks, 'first'))}× | {met(full, target)} |")
    resnet = search("resnet", 4, "full") + search("resnet", 8, "full") + search("resnet_32px", 4, "full") + search("resnet_32px", 8, "full")
    rows.append(f"| never slower on the ResNets (full window, 4 and 8 tasks) | {lo_hi(resnet)}× | {met(resnet, 1.0)} |")
    pairs = "(row, run) pairs"
    inference = tree_ratio("inference", tuple(SPEED_POLICIES), tuple(SPEED_NAMES))
    rows.append(f"| tree inference ≥ 0.9 × FLOP ratio (4 and 8 tasks, every network and policy) | {lo_hi(inference)} "
                f"| {met(inference, 0.9, pairs)} |")
    train_rd = tree_ratio("train", ("random", "disjoint"), tuple(SPEED_NAMES))
    rows.append(f"| tree re-training ≥ 0.9 × FLOP ratio, random and disjoint policies | {lo_hi(train_rd)} "
                f"| {met(train_rd, 0.9, pairs)} |")
    train_sh = tree_ratio("train", ("all_shared", "learned_demo"), tuple(SPEED_NAMES))
    rows.append(f"| tree re-training ≥ 0.9 × FLOP ratio, all-shared and learned policies | {lo_hi(train_sh)} "
                f"| {met(train_sh, 0.9, pairs)} |")
    train_ops = tree_ratio("train", ("all_shared", "learned_demo"), tuple(SPEED_NAMES), ops=True)
    rows.append(f"| the same against min(FLOP ratio, op ratio) | {lo_hi(train_ops)} | {met(train_ops, 0.9, pairs)} |")
    return "\n".join(rows)


# --- where and how each section was measured, and its exact commands ----------------------------------


def _section_records(runs_root: Path, section: str) -> list[dict]:
    folder = runs_root / section
    if not folder.exists():
        raise FileNotFoundError(f"no run records under {folder}")
    names = sorted({p.stem.split(".")[0] for p in folder.glob("*.json")})
    return [r for name in names for r in load_runs(section, name, runs_root)]


def measured_line(runs_root: Path, sections: tuple[str, ...]) -> str:
    """'Measured <dates> at commit <c> (clean tree), torch <v>, <threads> thread(s), <cpus>-core machine;
    records <folders>': from every record of the sections (several commits or dates are all named)."""
    records = [r for s in sections for r in _section_records(runs_root, s)]
    dates = sorted({r["measured"][:10] for r in records})
    commits = sorted({r["commit"][:7] + (" + uncommitted changes" if r["dirty"] else "") for r in records})
    torches = sorted({r["torch"] for r in records})
    threads = sorted({r["threads"] for r in records})
    cpus = sorted({r["machine"]["cpus"] for r in records})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    folders = ", ".join(f"[`benchmarks/results/runs/{s}/`](../benchmarks/results/runs/{s}/)" for s in sections)
    return (f"*Measured {when} at commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}, "
            f"torch {', '.join(torches)}, {'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''} "
            f"on a {'/'.join(map(str, cpus))}-core machine; run records {folders} "
            f"({len(records)} files: each names its command, commit, date and machine).*")


def commands_block(runs_root: Path, section: str) -> str:
    """The exact command of every record of a section, as a bash block (the reader runs the same)."""
    commands = []
    for r in _section_records(runs_root, section):
        c = r["command"]
        c = ".venv/bin/" + c if c.startswith("sharewise ") else c
        if c not in commands:
            commands.append(c)
    return "```bash\n" + "\n".join(commands) + "\n```"


MEASURED = {"adult": ("adult",), "demo": ("demo",), "images": ("images",), "ixi": ("ixi",), "yt8m": ("yt8m",),
            "omniglot50": ("omniglot50",),
            "gumbel_matrix-mnist": ("gumbel_matrix-mnist",), "gumbel_matrix-clusters": ("gumbel_matrix-clusters",),
            "gumbel_matrix-cost": ("gumbel_matrix-cost",), "gumbel_matrix-omniglot": ("gumbel_matrix-omniglot",),
            "gumbel_matrix-omniglot-published-net": ("gumbel_matrix-omniglot-published-net",),
            "adashare": ("adashare-adult", "adashare-digits", "adashare-mnist", "adashare-mnist-task_bn"),
            "adashare-fair": ("adashare-adult-fair", "adashare-adult-fair-paper"),
            "adashare-mnist-resnet-fair": ("adashare-mnist-resnet-fair",), "adashare-ixi-fair": ("adashare-ixi-fair",),
            "adashare-known-answer": ("adashare-known-answer",),
            "loading": ("loading",), "speed": ("speed",), "selection": ("selection",)}
for _key, _sections in MEASURED.items():
    register(f"measured-{_key}", " ".join(f"benchmarks/results/runs/{s}/*.json" for s in _sections))(
        lambda root, s=_sections: measured_line(root, s))
for _section in ("images", "ixi", "adashare-adult", "adashare-digits", "adashare-mnist", "adashare-mnist-task_bn", "yt8m",
                 "omniglot50",
                 "gumbel_matrix-mnist", "gumbel_matrix-clusters", "gumbel_matrix-omniglot", "selection", "adashare-adult-fair",
                 "adashare-adult-fair-paper", "adashare-known-answer", "adashare-mnist-resnet-fair", "adashare-ixi-fair"):
    register(f"commands-{_section}", f"benchmarks/results/runs/{_section}/*.json")(
        lambda root, s=_section: commands_block(root, s))


@register("speed-malloc", "benchmarks/results/runs/speed/adashare-search-default_malloc.json and adashare-search.json")
def speed_malloc(runs_root: Path) -> str:
    default = load_run("speed", "adashare-search-default_malloc", runs_root)["result"]
    kept = load_run("speed", "adashare-search", runs_root)["result"]

    def faults(r: dict) -> str:
        return " / ".join(f"{r['timing'][k]['page_faults_per_call']:,.0f}" for k in ("auto", "batched"))
    kept_rows = {(r["backbone"], r["tasks"], r["window"]): r for r in kept["search"]}
    rows = ["| backbone | tasks | default: auto speed-up | default: batched | default: faults a step (auto / batched) "
            "| kept: auto speed-up | kept: batched | kept: faults (auto / batched) |", "|---" * 8 + "|"]
    for r in default["search"]:
        if r["window"] != "full" or r["tasks"] < 4:
            continue
        k = kept_rows.get((r["backbone"], r["tasks"], r["window"]))
        if k is None:
            continue
        rows.append(f"| {SPEED_NAMES[r['backbone']]} | {r['tasks']} | {r['speedup']:.2f} | {r['speedup_batched']:.2f} "
                    f"| {faults(r)} | {k['speedup']:.2f} | {k['speedup_batched']:.2f} | {faults(k)} |")
    return "\n".join(rows)


# --- parameter allocation speed (benchmarks/gumbel_matrix_speed.py) -----------------------------------

GM_NETWORKS = {"mnist_c4": "MNIST, C = 4", "mnist_c7": "MNIST, C = 7", "clusters": "clusters, C = 16 (2 kinds)"}


@register("speed-gumbel_matrix", "the latest run in benchmarks/results/runs/speed/gumbel_matrix*.json; ranges over every stored run")
def speed_gumbel_matrix(runs_root: Path) -> str:
    runs = load_runs("speed", "gumbel_matrix", runs_root)
    last = runs[-1]["result"]
    rows = ["| network | training update: grouped ms | looped ms | **grouped speed-up** | every stored run "
            "| peak MB grouped / looped |", "|---" * 6 + "|"]
    for r in last["train"]:
        ms = {k: 1e3 * r["timing"][k]["median_s"] for k in ("grouped", "looped")}
        rows.append(f"| {GM_NETWORKS.get(r['network'], r['network'])} | {ms['grouped']:.2f} | {ms['looped']:.2f} "
                    f"| **{r['speedup']:.2f}** | {_spread(_over_runs(runs, 'train.' + r['network'] + '.speedup'))} "
                    f"| {r['peak_bytes']['grouped'] / 2**20:.1f} / {r['peak_bytes']['looped'] / 2**20:.1f} |")
    rows += ["", "| network | batch | allocation | inference: FLOP ratio | selected-only speed-up | (÷ ratio) "
             "| ÷ ratio, every stored run | peak MB selected / dense |", "|---" * 8 + "|"]
    for r in last["inference"]:
        key = f"inference.b{r['batch']}.{r['network']}.{r['allocation']}"
        ratios = [s / f for s, f in zip(_over_runs(runs, key + ".speedup"), _over_runs(runs, key + ".flop_ratio"))]
        rows.append(f"| {GM_NETWORKS.get(r['network'], r['network'])} | {r['batch']} "
                    f"| {SPEED_POLICIES.get(r['allocation'], r['allocation'])} | {r['flop_ratio']:.2f} | {r['speedup']:.2f} | {r['speedup_over_flop_ratio']:.2f} | {_spread(ratios)} "
                    f"| {r['peak_bytes']['selected'] / 2**20:.2f} / {r['peak_bytes']['dense'] / 2**20:.2f} |")
    return "\n".join(rows)


# --- parameter allocation, MNIST (benchmarks/section_runs.py gumbel_matrix-mnist) ----------------------

GM_MNIST_ROWS = (("no_sharing", "`no_sharing`"), ("shared_bottom", "`shared_bottom`"),
                 ("gumbel_matrix", "`gumbel_matrix`"), ("gumbel_matrix_budget", "`gumbel_matrix`, budget 0.75, λ_b = 1"))
GM_MNIST_TASKS = ("mnist", "mnist_2", "mnist_rot", "mnist_rot_2")
GM_MNIST_SEEDS = (0, 1, 2)


def _gm_seeds(runs_root: Path) -> tuple[int, ...]:
    """The seeds every variant has a record of (the section is measured seed by seed)."""
    folder = Path(runs_root) / "gumbel_matrix-mnist"
    return tuple(s for s in GM_MNIST_SEEDS
                 if all((folder / f"{name}-seed{s}.json").exists() for name, _ in GM_MNIST_ROWS))


def _gm_records(runs_root: Path, name: str) -> list[dict]:
    return [_record(runs_root, "gumbel_matrix-mnist", f"{name}-seed{s}") for s in _gm_seeds(runs_root)]


@register("gumbel_matrix-mnist", "benchmarks/results/runs/gumbel_matrix-mnist/*-seed<S>.json, the seeds every variant has")
def gumbel_matrix_mnist_table(runs_root: Path) -> str:
    seeds = _gm_seeds(runs_root)
    if not seeds:
        raise FileNotFoundError("benchmarks/results/runs/gumbel_matrix-mnist: no seed has a record of every variant")
    rows = [f"*Seeds {', '.join(map(str, seeds))} (n = {len(seeds)}).*", "",
            "| variant | " + " | ".join(f"`{t}` acc ↑" for t in GM_MNIST_TASKS)
            + " | mean ↑ | parameters | FLOPs / example, all tasks | wall per run |", "|---" * 9 + "|"]
    for name, label in GM_MNIST_ROWS:
        recs = _gm_records(runs_root, name)
        cells = [mean_sd([r["figures"][f"{t}.accuracy"] for r in recs], 4) for t in GM_MNIST_TASKS]
        mean = mean_sd([statistics.mean(r["figures"][f"{t}.accuracy"] for t in GM_MNIST_TASKS) for r in recs], 4)
        params = sorted({r["figures"]["parameters"] for r in recs})
        flops = [r["figures"]["flops"] for r in recs]
        flop_cell = _mflops(min(flops)) if min(flops) == max(flops) else f"{_mflops(min(flops))} – {_mflops(max(flops))}"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {' / '.join(grouped(p) for p in params)} "
                    f"| {flop_cell} | {_walls(recs)} |")
    return "\n".join(rows)


@register("gumbel_matrix-mnist-allocation",
          "benchmarks/results/runs/gumbel_matrix-mnist/gumbel_matrix*-seed<S>.json, the seeds every variant has")
def gumbel_matrix_mnist_allocation(runs_root: Path) -> str:
    rows = ["| variant | seed | active fraction per task (`mnist`, `mnist_2`, `mnist_rot`, `mnist_rot_2`) "
            "| expected fraction (mean p) per task | binary similarity: within pair / across / difference "
            "| soft similarity: within / across / difference |", "|---" * 6 + "|"]
    for name, label in GM_MNIST_ROWS[2:]:
        for seed, rec in zip(_gm_seeds(runs_root), _gm_records(runs_root, name)):
            f = rec["figures"]
            active = " / ".join(f"{f[f'allocation.active_fraction.{t}']:.2f}" for t in GM_MNIST_TASKS)
            expected = " / ".join(f"{f[f'allocation.expected_fraction.{t}']:.2f}" for t in GM_MNIST_TASKS)
            sep = {k: " / ".join(f"{f[f'allocation.separation.{k}.{x}']:+.3f}" if x == "difference"
                                 else f"{f[f'allocation.separation.{k}.{x}']:.3f}" for x in ("within", "across", "difference"))
                   for k in ("binary", "soft")}
            rows.append(f"| {label} | {seed} | {active} | {expected} | {sep['binary']} | {sep['soft']} |")
    return "\n".join(rows)


# --- parameter allocation: the cost of one update (benchmarks/gumbel_matrix_update_cost.py) ---------------

GM_COST_ROWS = (("omniglot28-f16-shared_bottom", "Omniglot-20 at 28×28, 16 filters, published strides (the first CPU "
                 "variant, 500 rounds), `shared_bottom`", 10_000),
                ("omniglot28-f16-gumbel_matrix", "Omniglot-20 at 28×28, 16 filters, published strides (the first CPU "
                 "variant, 500 rounds), `gumbel_matrix`", 10_000),
                ("omniglot105-f48-gumbel_matrix", "Omniglot-20 published (105×105, 48 filters), `gumbel_matrix`; "
                 "updates: the published 8 000 rounds", 160_000),
                ("clusters-shared_bottom", "clusters (3×32×32, 40 tasks), `shared_bottom`", 12_000),
                ("clusters-gumbel_matrix", "clusters (3×32×32, 40 tasks), `gumbel_matrix`", 12_000))


def _cpu_time(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


@register("gumbel_matrix-cost", "benchmarks/results/runs/gumbel_matrix-cost/update-cost*.json; ranges over every stored run")
def gumbel_matrix_cost(runs_root: Path) -> str:
    runs = load_runs("gumbel_matrix-cost", "update-cost", runs_root)
    rows = ["| network, method | CPU s / update | wall s / update (machine loaded) | updates in the schedule "
            "| CPU time of those updates |", "|---" * 5 + "|"]
    for key, label, updates in GM_COST_ROWS:
        cpu = [r["figures"][f"{key}.cpu_s_per_update"] for r in runs if f"{key}.cpu_s_per_update" in r["figures"]]
        wall = [r["figures"][f"{key}.wall_s_per_update"] for r in runs if f"{key}.wall_s_per_update" in r["figures"]]
        if not cpu:
            continue
        span = (lambda v, d: f"{min(v):.{d}f}" if len(v) == 1 or round(min(v), d) == round(max(v), d)
                else f"{min(v):.{d}f} – {max(v):.{d}f}")
        rows.append(f"| {label} | {span(cpu, 3)} | {span(wall, 3)} | {grouped(updates)} "
                    f"| {_cpu_time(min(cpu) * updates)} |")
    return "\n".join(rows)


# --- parameter allocation, three task clusters (benchmarks/section_runs.py gumbel_matrix-clusters) -------

GM_CLUSTERS_ROWS = (("gumbel_matrix", "`gumbel_matrix`, budget 0.5, λ_b = 1"), ("shared_bottom", "`shared_bottom`"))


def cluster_family(task: str) -> str:
    """A clusters task's family from its name (the task_families source's names)."""
    for family in ("mnist", "fashion", "digits"):
        if task.startswith(f"{family}_loo"):
            return family
    return "omniglot" if not task.startswith("coarse") else "cifar100"


def _seeded_records(runs_root: Path, section: str, variants) -> list[tuple[str, str, int, dict]]:
    """(name, label, seed, record) of every ``<name>-seed<S>.json`` of a section, variant by variant."""
    folder = Path(runs_root) / section
    out = []
    for name, label in variants:
        for path in sorted(folder.glob(f"{name}-seed*.json")):
            seed = path.stem.rsplit("-seed", 1)[1]
            if seed.isdigit():
                out.append((name, label, int(seed), _record(runs_root, section, path.stem)))
    if not out:
        raise FileNotFoundError(f"benchmarks/results/runs/{section}: no record")
    return out


def _gm_cluster_records(runs_root: Path) -> list[tuple[str, str, int, dict]]:
    return _seeded_records(runs_root, "gumbel_matrix-clusters", GM_CLUSTERS_ROWS)


@register("gumbel_matrix-clusters", "benchmarks/results/runs/gumbel_matrix-clusters/*-seed<S>.json")
def gumbel_matrix_clusters_table(runs_root: Path) -> str:
    records = _gm_cluster_records(runs_root)
    families = sorted({cluster_family(k.rsplit(".", 1)[0]) for _, _, _, r in records for k in r["figures"]
                       if k.endswith(".accuracy") and "." not in k.rsplit(".", 1)[0]},
                      key=["omniglot", "cifar100", "mnist", "fashion", "digits"].index)
    rows = ["| variant | seed | " + " | ".join(f"{f} test acc (mean over its tasks) ↑" for f in families)
            + " | all tasks ↑ | selected round | validation Average there | wall |", "|---" * (len(families) + 6) + "|"]
    for _, label, seed, rec in records:
        f = rec["figures"]
        acc = {k.rsplit(".", 1)[0]: v for k, v in f.items() if k.endswith(".accuracy") and k.count(".") == 1}
        cells = [f"{statistics.mean(v for t, v in acc.items() if cluster_family(t) == fam):.4f}" for fam in families]
        rows.append(f"| {label} | {seed} | " + " | ".join(cells) + f" | {statistics.mean(acc.values()):.4f} "
                    f"| {f.get('checkpoints.selected_round', float('nan')):g} "
                    f"| {f.get('checkpoints.selected_average.val', float('nan')):.4f} | {_walls([rec])} |")
    return "\n".join(rows)


@register("gumbel_matrix-clusters-separation",
          "benchmarks/results/runs/gumbel_matrix-clusters/gumbel_matrix-seed<S>.json")
def gumbel_matrix_clusters_separation(runs_root: Path) -> str:
    records = [r for r in _gm_cluster_records(runs_root) if r[0] == "gumbel_matrix"]
    rows = ["| seed | similarity | within family | across families | difference | per family: within / across / "
            "difference | active fraction (mean over tasks) |", "|---" * 7 + "|"]
    for _, _, seed, rec in records:
        f = rec["figures"]
        active = statistics.mean(v for k, v in f.items() if k.startswith("allocation.active_fraction."))
        for kind in ("binary", "soft"):
            base = f"allocation.separation.{kind}"
            fams = sorted({k[len(base) + 11:].rsplit(".", 1)[0] for k in f if k.startswith(base + ".by_family.")})
            per = "; ".join(f"{fam} {f[f'{base}.by_family.{fam}.within']:.3f} / {f[f'{base}.by_family.{fam}.across']:.3f}"
                            f" / {f[f'{base}.by_family.{fam}.difference']:+.3f}" for fam in fams)
            rows.append(f"| {seed} | {kind} | {f[f'{base}.within']:.3f} | {f[f'{base}.across']:.3f} "
                        f"| {f[f'{base}.difference']:+.3f} | {per} | {active:.2f} |")
    return "\n".join(rows)


# --- parameter allocation, Omniglot-20 (benchmarks/section_runs.py gumbel_matrix-omniglot) ---------------

GM_OMNIGLOT_ROWS = (("shared_bottom", "`shared_bottom`"), ("gumbel_matrix", "`gumbel_matrix`"),
                    ("gumbel_matrix_fast_router", "`gumbel_matrix`, router lr 2e-2"))


def _task_accuracies(figures: dict[str, float]) -> dict[str, float]:
    return {k[: -len(".accuracy")]: v for k, v in figures.items()
            if k.endswith(".accuracy") and not k.startswith(("candidates.", "checkpoints."))}


def _gm_omniglot_table(runs_root: Path, section: str) -> str:
    records = _seeded_records(runs_root, section, GM_OMNIGLOT_ROWS)
    rows = ["| variant | seed | mean test accuracy over the 20 tasks ↑ | lowest / highest task | selected round "
            "| validation Average there | active fraction (mean over tasks) | CPU | wall |", "|---" * 9 + "|"]
    for _, label, seed, rec in records:
        f = rec["figures"]
        acc = _task_accuracies(f)
        active = [v for k, v in f.items() if k.startswith("allocation.active_fraction.")]
        cpu = rec.get("timings", {}).get("cpu_s")
        rows.append(f"| {label} | {seed} | {statistics.mean(acc.values()):.4f} | {min(acc.values()):.3f} / "
                    f"{max(acc.values()):.3f} | {f.get('checkpoints.selected_round', float('nan')):g} "
                    f"| {f.get('checkpoints.selected_average.val', float('nan')):.4f} "
                    f"| {f'{statistics.mean(active):.2f}' if active else '–'} | {_wall(cpu) if cpu else '–'} "
                    f"| {_walls([rec])} |")
    by_variant: dict[str, list[dict]] = {}
    for name, _, _, rec in records:
        by_variant.setdefault(name, []).append(rec)
    for name, label in GM_OMNIGLOT_ROWS:
        recs = by_variant.get(name, [])
        if len(recs) > 1:
            means = [statistics.mean(_task_accuracies(r["figures"]).values()) for r in recs]
            rows.append(f"| **{label}, mean ± sd** | {len(recs)} seeds | **{statistics.mean(means):.4f} ± "
                        f"{statistics.stdev(means):.4f}** | | | | | | |")
    base = {name: _record(runs_root, "images", f"omniglot20-{name}") for name in ("hard", "independent")}
    columns = []
    for name, label in GM_OMNIGLOT_ROWS:
        recs = by_variant.get(name, [])
        if recs:
            per_seed = [_task_accuracies(r["figures"]) for r in recs]
            seeds = "seed 0" if len(recs) == 1 else f"mean of {len(recs)} seeds"
            columns.append((f"{label} {seeds}", {t: statistics.mean(a[t] for a in per_seed) for t in per_seed[0]}))
    columns += [(f"`{name}` (28×28 convnet, Images section)", _task_accuracies(rec["figures"]))
                for name, rec in base.items()]
    tasks = list(columns[0][1])
    rows += ["", "| task (test accuracy) | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {t} | " + " | ".join(f"{acc[t]:.3f}" if t in acc else "–" for _, acc in columns) + " |" for t in tasks]
    rows.append("| **mean** | " + " | ".join(f"**{statistics.mean(acc.values()):.4f}**" for _, acc in columns) + " |")
    return "\n".join(rows)


for _section, _what in (("gumbel_matrix-omniglot", "the CPU variant"),
                       ("gumbel_matrix-omniglot-published-net", "published strides and model lr at 28×28")):
    register(_section, f"benchmarks/results/runs/{_section}/*-seed<S>.json ({_what}), and "
             "images/omniglot20-{hard,independent}.json for the per-task comparison")(
        lambda root, s=_section: _gm_omniglot_table(root, s))


# --- Youtube-8M (benchmarks/section_runs.py yt8m) --------------------------------------------------------

YT8M_ROWS = (("hard", "`hard` (plain MLP trunk)"), ("independent", "`independent`"),
             ("taan-none", "`taan`, no regulariser"), ("taan-distance", "`taan`, `distance`"),
             ("taan-cosine", "`taan`, `cosine`"), ("taan-l21", "`taan`, `l21`"), ("taan-nuclear", "`taan`, `nuclear`"),
             ("cross_stitch", "`cross_stitch`"), ("mmoe", "`mmoe`"), ("soft_order", "`soft_order`"),
             ("mrn", "`mrn` (Ω_T updated every 50 steps)"), ("dmtrl-tucker", "`dmtrl`, Tucker, ranks by ε = 0.1 †"),
             ("dmtrl-tucker-r32", "`dmtrl`, Tucker, ranks (32, 32, 8) †"), ("dmtrl-laf-k5", "`dmtrl`, LAF, k = 5 †"))
YT8M_METRICS = (("gap_at_20", "GAP@20"), ("map_at_10", "mAP@10"), ("hit_at_1", "Hit@1"))
YT8M_SEEDS = (0, 1, 2)


def _yt8m_records(runs_root: Path, name: str) -> list[dict]:
    """The records of ``name`` for seeds 0, 1, 2; the rows added with MRN and DMTRL may have fewer
    (the leading seeds), the others must have all three."""
    if name not in YT8M_MRN_DMTRL:
        return [_record(runs_root, "yt8m", f"{name}-seed{s}") for s in YT8M_SEEDS]
    recs = []
    for s in YT8M_SEEDS:
        if not (Path(runs_root) / "yt8m" / f"{name}-seed{s}.json").exists() and recs:
            break
        recs.append(_record(runs_root, "yt8m", f"{name}-seed{s}"))
    return recs


def _task_mean(figures: dict[str, float], metric: str) -> float:
    values = [v for k, v in figures.items() if k.endswith("." + metric) and not k.startswith("candidates.")]
    return statistics.mean(values)


@register("yt8m", "benchmarks/results/runs/yt8m/*-seed{0,1,2}.json")
def yt8m_table(runs_root: Path) -> str:
    rows = ["| method | " + " | ".join(f"{label} (mean over tasks) ↑" for _, label in YT8M_METRICS)
            + " | parameters | FLOPs / example, all tasks | wall per run |", "|---" * (len(YT8M_METRICS) + 4) + "|"]
    for name, label in YT8M_ROWS:
        recs = _yt8m_records(runs_root, name)
        if len(recs) < len(YT8M_SEEDS):
            label += f" (seed{'s' if len(recs) > 1 else ''} {', '.join(str(s) for s in YT8M_SEEDS[:len(recs)])} only)"
        cells = [mean_sd([_task_mean(r["figures"], m) for r in recs], 4) for m, _ in YT8M_METRICS]
        f = recs[0]["figures"]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {grouped(f['parameters'])} | {_mflops(f['flops'])} | {_walls(recs)} |")
    return "\n".join(rows)


@register("yt8m-per-task", "benchmarks/results/runs/yt8m/{hard,independent,taan-distance}-seed{0,1,2}.json")
def yt8m_per_task(runs_root: Path) -> str:
    names = ("hard", "independent", "taan-distance")
    recs = {n: [_record(runs_root, "yt8m", f"{n}-seed{s}") for s in YT8M_SEEDS] for n in names}
    tasks = [k[:-len(".gap_at_20")] for k in recs["hard"][0]["figures"] if k.endswith(".gap_at_20")]
    rows = ["| vertical (task) | test videos (seeds 0 / 1 / 2) | `hard` GAP@20 | `independent` | `taan`, `distance` |",
            "|---|---|---|---|---|"]
    for t in tasks:
        counts = " / ".join(str(r.get("test_n", {}).get(t, "–")) for r in recs["hard"])
        cells = [mean_sd([r["figures"][f"{t}.gap_at_20"] for r in recs[n]], 3) for n in names]
        rows.append(f"| {t} | {counts} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


YT8M_MRN_DMTRL = ("mrn", "dmtrl-tucker", "dmtrl-tucker-r32", "dmtrl-laf-k5")


@register("yt8m-mrn-dmtrl", "benchmarks/results/runs/yt8m/{mrn,dmtrl-*}-seed{0,1,2}.json")
def yt8m_mrn_dmtrl(runs_root: Path) -> str:
    rows = ["| method | ranks per layer (seed 0) | trunk parameters | all parameters | MRN: mean \\|task correlation\\| "
            "implied by Ω_T, layers 1 / 2 / 3 | MRN: trace of Ω_T (identity: 16) | CPU time per run | wall per run |",
            "|---" * 8 + "|"]
    labels = dict(YT8M_ROWS)
    for name in YT8M_MRN_DMTRL:
        recs = _yt8m_records(runs_root, name)
        f = recs[0]["figures"]
        ranks = recs[0].get("dmtrl_ranks")
        rank_text = " / ".join("(" + ", ".join(map(str, r)) + ")" for r in ranks) if ranks else "–"
        corr = trace = "–"
        if "mrn.layer0.mean_abs_task_correlation" in f:
            corr = " / ".join(mean_sd([r["figures"][f"mrn.layer{k}.mean_abs_task_correlation"] for r in recs], 4)
                              for k in range(3))
            trace = " / ".join(mean_sd([r["figures"][f"mrn.layer{k}.omega_task_trace"] for r in recs], 3)
                               for k in range(3))
        rows.append(f"| {labels[name]} | {rank_text} | {grouped(f['parameters.backbone'])} | {grouped(f['parameters'])} "
                    f"| {corr} | {trace} | {_cpu(recs)} | {_walls(recs)} |")
    return "\n".join(rows)


# --- Omniglot-50, TAAN's set-up (benchmarks/section_runs.py omniglot50) -----------------------------

# the TAAN reference's logged runs (TAAN specification §6.1): pooled test accuracy %, 5 runs each,
# selected on the TEST split after up to 15 000 steps
OMNIGLOT50_PUBLISHED = {"none": ("0", 84.12, 0.86), "distance": ("0.3 (best of 0.1–0.4)", 86.72, 0.61)}


@register("omniglot50", "benchmarks/results/runs/omniglot50/*-seed0.json")
def omniglot50_table(runs_root: Path) -> str:
    rows = ["| regulariser | c | CPU variant, 200 steps, seed 0: pooled test accuracy (selected on validation) "
            "| its pooled validation accuracy | mean of per-task test accuracies | selected at step | CPU time "
            "| published: pooled test accuracy, 5 runs (selected on test, up to 15 000 steps) |", "|---" * 8 + "|"]
    for name, (c, mean, sd) in OMNIGLOT50_PUBLISHED.items():
        rec = _record(runs_root, "omniglot50", f"{name}-seed0")
        f = rec["figures"]
        per_task = statistics.mean(v for k, v in f.items() if k.endswith(".accuracy") and not k.startswith("candidates."))
        rows.append(f"| `{name}` | {c if name == 'none' else '0.3'} | {100 * f['pooled_accuracy']:.2f} % "
                    f"| {100 * f['pooled_accuracy.val']:.2f} % | {100 * per_task:.2f} % "
                    f"| {rec.get('selected_step', '–')} | {_cpu([rec])} "
                    f"| {mean:.2f} ± {sd:.2f} % (c = {c}) |")
    return "\n".join(rows)


TAAN_STEP_NAMES = {"hard": "`hard` (plain MLP)", "taan": "`taan` (fused TAL)", "taan_reference": "`taan` (TAL by torch ops)",
                   "cross_stitch": "`cross_stitch`", "mmoe": "`mmoe` (6 experts)", "soft_order": "`soft_order`"}


def taan_speed_runs(runs_root: Path) -> list[dict]:
    """The stored full runs of benchmarks/taan_speed.py with the fused TAL kernel and the training
    steps (runs from before them, such as the first record, are not in the ranges)."""
    return [r for r in load_runs("speed", "taan", runs_root) if "steps" in r["result"]]


@register("speed-taan", "benchmarks/results/runs/speed/taan*.json: the latest run at each thread count, ranges over every run with the fused kernel")
def speed_taan(runs_root: Path) -> str:
    every = taan_speed_runs(runs_root)
    if not every:
        raise FileNotFoundError("no run of benchmarks/taan_speed.py with the training steps under speed/taan*.json")
    blocks = []
    for threads in sorted({run["threads"] for run in every}):  # the latest run at each thread count
        blocks.append(_speed_taan_block([run for run in every if run["threads"] == threads]))
    return "\n\n".join(blocks)


def _speed_taan_block(runs: list[dict]) -> str:
    """The latest of ``runs`` (one thread count) in detail; "every stored run" columns over all of them."""
    result = runs[-1]["result"]
    threads = runs[-1]["threads"]
    r = result["reading"]
    package = r["tfrecord_package"]["records_per_s"] if r.get("tfrecord_package") else None
    labels = {"sharewise": ("`sharewise.data.tfrecord`", "checked (numpy CRC-32C: the default install)"),
              "sharewise_native_crc": ("`sharewise.data.tfrecord`", "checked (a native CRC-32C: `crc32c` here; the extra "
                                                                     "`tfrecord` installs `google-crc32c`)"),
              "protobuf_runtime": ("sharewise's framing + the protobuf runtime (upb) parsing", "checked (native CRC-32C)"),
              "tfrecord_package": ("`tfrecord` package (PyPI)", "skipped")}
    rows = [f"**{threads} thread{'s' if threads > 1 else ''}**: the latest run ({runs[-1]['measured'][:10]}; "
            f"\"every stored run\": the {len(runs)} run{'s' if len(runs) > 1 else ''} at {threads} "
            f"thread{'s' if threads > 1 else ''}):", "",
            "| TFRecord reader (10 shards, 2 950 records) | CRC-32C of every record | records / s | ÷ `tfrecord` package "
            "| ÷ package, every stored run |", "|---|---|---|---|---|"]
    for name, (reader, crc) in labels.items():
        if not r.get(name):
            continue
        rate = r[name]["records_per_s"]
        over = [run["figures"][f"reading.{name}.records_per_s"] / run["figures"]["reading.tfrecord_package.records_per_s"]
                for run in runs if f"reading.{name}.records_per_s" in run["figures"]
                and "reading.tfrecord_package.records_per_s" in run["figures"]]
        rows.append(f"| {reader} | {crc} | {grouped(rate)} | {rate / package:.2f} | {_spread(over)} |" if package else
                    f"| {reader} | {crc} | {grouped(rate)} | – | – |")
    rows += ["", "| TAL step (forward + backward, batch 64, 64 hinges) | width | tasks | TAL ms (fused) | TAL ms (torch ops) "
             "| Linear + ReLU ms | **fused ÷ Linear + ReLU** | every stored run | torch ops ÷ Linear + ReLU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in result["tal"]:
        t = c["timing"]
        key = f"tal.{c['width']}.{c['tasks']}.ratio"
        rows.append(f"| shared input, every task's activation | {c['width']} | {c['tasks']} | {1e3 * t['tal']['median_s']:.2f} "
                    f"| {1e3 * t['tal_reference']['median_s']:.2f} | {1e3 * t['linear_relu']['median_s']:.2f} "
                    f"| **{c['tal_over_linear']:.2f}** | {_spread(_over_runs(runs, key))} | {c['reference_over_linear']:.2f} |")
    rows += ["", "| training step, 16 tasks × 64 examples | H | step ms | **÷ `hard`** | ÷ `hard`, every stored run | peak MB |",
             "|---|---|---|---|---|---|"]
    for c in result["steps"]:
        for method, label in TAAN_STEP_NAMES.items():
            peak = c["peak_bytes"][method]
            spread = _spread(_over_runs(runs, "steps.{}.{}.over_hard".format(c["width"], method)))
            peak_mb = "–" if peak is None else f"{peak / 2**20:.1f}"
            rows.append(f"| {label} | {c['width']} | {1e3 * c['timing'][method]['median_s']:.1f} | **{c['over_hard'][method]:.2f}** "
                        f"| {spread} | {peak_mb} |")
    return "\n".join(rows)


@register("speed-taan-targets", "every run with the fused kernel in benchmarks/results/runs/speed/taan*.json")
def speed_taan_targets(runs_root: Path) -> str:
    runs = taan_speed_runs(runs_root)

    def ratios(key: str) -> list[float]:
        return _over_runs(runs, key)

    def verdict(values: list[float], ok) -> str:
        if not values:
            return "not measured"
        hits = sum(bool(ok(v)) for v in values)
        return "met" if hits == len(values) else ("not met" if not hits else f"met in {hits} of {len(values)} runs")

    reading = [f["reading.sharewise_native_crc.records_per_s"] / f["reading.tfrecord_package.records_per_s"]
               for f in (run["figures"] for run in runs)
               if "reading.sharewise_native_crc.records_per_s" in f and "reading.tfrecord_package.records_per_s" in f]
    numpy_crc = [f["reading.sharewise.records_per_s"] / f["reading.tfrecord_package.records_per_s"]
                 for f in (run["figures"] for run in runs) if "reading.tfrecord_package.records_per_s" in f]
    rows = ["| target | measured (every stored run with the fused kernel) | |", "|---|---|---|",
            f"| TFRecord reading with both CRCs faster than the `tfrecord` package without them (native CRC-32C) "
            f"| {_range_median(reading)} | {verdict(reading, lambda v: v > 1)} |",
            f"| the same with the numpy CRC-32C (no optional extra) | {_range_median(numpy_crc)} "
            f"| {verdict(numpy_crc, lambda v: v > 1)} |"]
    all_runs = runs
    for threads in sorted({run["threads"] for run in all_runs}):
        runs = [run for run in all_runs if run["threads"] == threads]
        for width in (256, 1024):
            values = ratios(f"tal.{width}.1.ratio")
            rows.append(f"| TAL forward + backward ≤ 2× a Linear + ReLU of the same width, 64 hinges, H = {width}, one task, "
                        f"{threads} thread{'s' if threads > 1 else ''} | {_range_median(values)} "
                        f"| {verdict(values, lambda v: v <= 2)} |")
    return "\n".join(rows)


# --- Model selection rules (benchmarks/section_runs.py selection) ------------------------------------

SELECTION_FAMILIES = {"shapes": ("shapes 16×16, centred", range(8)), "shapes32": ("shapes 32×32, anywhere", range(4))}
SELECTION_CASES = (*(f"{f}-seed{s}" for f, (_, seeds) in SELECTION_FAMILIES.items() for s in seeds),
                   "adult-hard", "mnist-hard", "ixi-hard")
SELECTION_LABELS = {"adult-hard": "Adult `hard`", "mnist-hard": "MNIST `hard`", "ixi-hard": "IXI `hard` (48³)"}
SELECTION_RULE_NAMES = {"objective": "`objective`", "loss_ratio": "`loss_ratio`", "delta_first": "Δ vs first",
                        "mean_rank": "mean rank"}


def _selected(rules: dict, step: int, values: list[float]) -> str:
    """'step → v1 / v2 / ...', '(first)' marking the phase's first evaluation."""
    first = " (first)" if step == rules["steps"][0] else ""
    return f"{step}{first} → " + " / ".join(f"{v:.3f}" for v in values)


def _run_cell(rec: dict) -> str:
    rules, f = rec["rules"], rec["figures"]
    return _selected(rules, f["selection.best_step"], [f[f"{t}.{m}"] for t, m in rules["primary"].items()])


def _analysis_cell(rules: dict, rule: str) -> str:
    return _selected(rules, rules[rule]["step"], [rules[rule]["val"][t] for t in rules["primary"]])


@register("selection-rules", "benchmarks/results/runs/selection/*-{objective,loss_ratio}.json")
def selection_rules(runs_root: Path) -> str:
    rows = ["| case (primary metrics, in order) | evaluations | `objective`: step → test | `loss_ratio`: step → test "
            "| Δ vs first evaluation: step → val | mean rank: step → val |", "|---|---|---|---|---|---|"]
    summary = []
    for family, (label, seeds) in SELECTION_FAMILIES.items():
        chance = {r: 0 for r in SELECTION_RULE_NAMES}
        first = {r: 0 for r in SELECTION_RULE_NAMES}
        for s in seeds:
            rules = _record(runs_root, "selection", f"{family}-seed{s}-objective")["rules"]
            best_shape = max(rules[q]["val"]["shape"] for q in SELECTION_RULE_NAMES)
            for r in SELECTION_RULE_NAMES:
                chance[r] += rules[r]["val"]["shape"] <= 0.34 < best_shape
                first[r] += rules[r]["step"] == rules["steps"][0]
        summary.append(f"- {label}, seeds {seeds[0]}–{seeds[-1]}: `shape` at chance (validation accuracy ≤ 0.34) while "
                       "another rule's choice was above it: " + ", ".join(f"{SELECTION_RULE_NAMES[r]} {n}" for r, n in chance.items())
                       + "; the first evaluation kept: " + ", ".join(f"{SELECTION_RULE_NAMES[r]} {n}" for r, n in first.items()) + ".")
    for case in SELECTION_CASES:
        recs = {rule: _record(runs_root, "selection", f"{case}-{rule}") for rule in ("objective", "loss_ratio")}
        rules = recs["objective"]["rules"]
        if case in SELECTION_LABELS:
            label = SELECTION_LABELS[case]
        else:
            family, seed = case.rsplit("-seed", 1)
            label = f"{SELECTION_FAMILIES[family][0]}, seed {seed}"
        metrics = ", ".join(f"{t} {m}" for t, m in rules["primary"].items())
        rows.append(f"| {label} ({metrics}) | {rules['evaluations']} | {_run_cell(recs['objective'])} "
                    f"| {_run_cell(recs['loss_ratio'])} | {_analysis_cell(rules, 'delta_first')} "
                    f"| {_analysis_cell(rules, 'mean_rank')} |")
    return "\n".join(rows + [""] + summary)


# --- The tiny IXI run (benchmarks/ixi_tiny.py) --------------------------------------------------------

TINY_MARKS = (("config_written", "start-up: command to config.yaml"), ("first_logged_row", "to the first logged evaluation"),
              ("warmup_end", "warm-up done (160 iterations)"), ("search_end", "search done (50 cycles)"),
              ("arch_0_end", "re-training 1 done (320)"), ("arch_1_end", "re-training 2 done (320)"),
              ("results_written", "test done (results.json)"), ("report_written", "report.md and plots"))


@register("speed-ixi-tiny", "benchmarks/results/runs/speed/ixi-tiny*.json (the latest run)")
def speed_ixi_tiny(runs_root: Path) -> str:
    result = load_run("speed", "ixi-tiny", runs_root)["result"]
    runs = result["runs"]
    names = [n for n in ("before", "now") if n in runs]
    label = {"before": f"before (`{Path(result['before_tree'] or '').name}`)", "now": "now"}
    rows = ["| | " + " | ".join(label[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    first = {n: runs[n][0] for n in names}
    rows.append("| wall time | " + " | ".join(_wall(first[n]["wall_s"]) for n in names) + " |")
    rows.append("| CPU time, all processes | " + " | ".join(_wall(first[n]["cpu_s"]) for n in names) + " |")
    for key, text in TINY_MARKS:
        cells = []
        for n in names:
            marks = first[n]["timeline_s"]
            v = marks.get(key)
            cells.append("–" if v is None else (f"{v:.0f} s" if key == "config_written" else f"+{v:.0f} s"))
        rows.append(f"| {text} | " + " | ".join(cells) + " |")
    rows.append("| test Sex accuracy / Age MAE | " + " | ".join(
        f"{first[n]['test']['Sex']:.3f} / {first[n]['test']['Age']:.2f}" for n in names) + " |")
    if result.get("profile"):
        ranks = result["profile"]
        rows += ["", "| where a rank's CPU time goes (profiled run, cumulative) | " + " | ".join(f"rank {r}" for r in range(len(ranks)))
                 + " |", "|---" * (len(ranks) + 1) + "|",
                 "| CPU time of the process | " + " | ".join(f"{r['cpu_s']:.1f} s" for r in ranks) + " |"]
        for part in ranks[0]["parts_cpu_s"]:
            rows.append(f"| {part} | " + " | ".join(f"{r['parts_cpu_s'][part]:.1f} s" for r in ranks) + " |")
    return "\n".join(rows)


@register("loading-volumes-monai", "benchmarks/results/runs/loading/volumes-monai*.json (the latest run)")
def loading_volumes_monai(runs_root: Path) -> str:
    result = load_run("loading", "volumes-monai", runs_root)["result"]
    rows = ["| reading (then the same preprocessing, uncached) | volumes per CPU second (median) | min – max | × nibabel |", "|---|---|---|---|"]
    for name, label in (("nibabel", "nibabel: `read_volume` (today)"),
                        ("monai", f"MONAI {result['monai']}: `LoadImage`, `EnsureChannelFirst`, `Orientation(\"RAS\")`")):
        stats = result["volumes_per_s"][name]
        ratio = stats["median"] / result["volumes_per_s"]["nibabel"]["median"]
        rows.append(f"| {label} | {_num(stats['median'])} | {_num(min(stats['all']))} – {_num(max(stats['all']))} | {ratio:.2f} |")
    rows += ["", f"Largest difference between the two pipelines' arrays: {result['max_abs_difference']:g}; "
                 f"importing MONAI's transforms: {result['monai_import_cpu_s']:.1f} s of CPU "
                 f"({result['subjects']} volumes, {result['reps']} alternating repetitions, {result['threads']} thread)."]
    return "\n".join(rows)
