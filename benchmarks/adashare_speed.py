"""AdaShare's fast paths against the per-task loop, measured as ratios in one run.

- Search step (forward + backward + the weight step + the policy step): the default execution
  (auto) and always-stacked tasks (batched) vs the reference's per-task loop, at the first
  curriculum window (only the top block sampled) and at the full window.
- Re-training step (forward + backward + Adam step) and inference: tree vs per-task passes for
  stated policies (random, learned on the demo, all-shared, disjoint), next to their limit, the
  FLOP ratio Σ_t FLOPs(task t alone) / FLOPs(tree). Also the step of a model holding only the
  task with the longest path: the tree computes at least that path, so per-task passes over
  this step bound the tree's training speed-up from above whatever the FLOPs say (on small
  networks, a step's fixed costs: heads, losses, zero-grad, the optimiser).
- Operations: how many PyTorch operations one step dispatches (`cost.count_operations`),
  views included. On a small network each costs a few microseconds whatever its FLOPs, so there
  the tree's training speed-up follows the ratio of the counts ("op ratio") rather than the FLOPs.
- Memory: the peak of each variant (on a GPU the peak allocated memory; on a CPU the peak of
  `malloc`'s bytes in use, read after every operation, beyond what was in use before the call:
  `engine.device.peak_host_bytes`), bytes saved for backward (the activations a step keeps), and
  minor page faults per call (memory mapped in afresh; `--default-malloc` shows them without the
  engine's allocator setting).

Variants alternate after a warm-up, in a new (seeded) order at each repetition, each timing a
block of consecutive calls (about 30 ms); medians and min–max over repetitions of the time per
call are reported.

    python benchmarks/adashare_speed.py [--threads 2] [--reps 15] [--device cpu|cuda] [--sizes small large]
        [--out benchmarks/results/adashare_speed.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import resource  # page faults (Unix)
except ImportError:
    resource = None

from sharewise.backbones import backbone_factory
from sharewise.cost import count_flops, count_operations
from sharewise.data.base import InputSpec
from sharewise.engine.device import keep_freed_host_memory, peak_host_bytes
from sharewise.engine.optim import build_optimizer
from sharewise.methods.adashare.execution import per_task_features
from sharewise.methods.adashare import policy as P
from sharewise.methods.adashare import AdaShareArchitecture, AdaShareNet
from sharewise.methods.base import OptimSpec
from sharewise.tasks import Task, compute_losses

from _results import record_benchmark  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

BACKBONES = {
    # small networks, where per-operation overhead is a large part of a step
    "mlp": (InputSpec("vector", (64,)), {"width": 128, "depth": 6}, 64),
    "resnet": (InputSpec("image", (3, 16, 16)), {"widths": [16, 32], "blocks": [2, 2]}, 32),
    # larger ones, where the arithmetic dominates (--sizes large)
    "mlp_wide": (InputSpec("vector", (256,)), {"width": 512, "depth": 6}, 256),
    "resnet_32px": (InputSpec("image", (3, 32, 32)), {"widths": [32, 64], "blocks": [2, 2]}, 32),
}
# the reference loop, the default (auto) and always-stacked execution
EXECUTIONS = ("loop", "auto", "batched")
SIZES = {"small": ["mlp", "resnet"], "large": ["mlp_wide", "resnet_32px"]}
# the demo's network (digits, 4 tasks), for the policy AdaShare learned on the demo
DEMO = {"mlp_demo": (InputSpec("vector", (64,)), {"width": 64, "depth": 3}, 64)}
BACKBONE_NAME = {"mlp": "mlp", "resnet": "resnet2d", "mlp_wide": "mlp", "resnet_32px": "resnet2d", "mlp_demo": "mlp"}


def _tasks(n: int) -> list[Task]:
    return [Task(f"t{i}", "categorical", classes=list(range(10))) for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _peak(fn, device) -> int | None:
    """Peak memory of one call beyond what was in use before it (bytes; None where unknown)."""
    fn()  # as the timings: after a call of the same variant
    if device.type != "cuda":
        return peak_host_bytes(fn)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated(device)) - base


# each timing is a block of consecutive calls lasting about this long (divided by its count): a
# single call right after another variant starts from the caches that variant left (25 % slower
# for the small MLP's tree inference), while a training run calls the same step back to back
BLOCK_S = 0.03
# the variants' order changes from one repetition to the next (seeded): the block right after
# the loop ran up to 10 % slower than the same step timed right after itself, so a fixed order
# favoured whichever variant never followed the loop
ORDER_SEED = 0


def compare(variants: dict, reps: int, device) -> dict:
    """Alternate the variants, A×n B×m A×n B×m, after two warm-up rounds, in a new order at every
    repetition (seeded: every run times the same sequence); medians and spreads of seconds per
    call. The garbage collector is off while timing (as in ``timeit``): a collection lands in
    whichever variant happens to allocate the object that triggers it."""
    calls = {}
    for _ in range(2):
        for k, fn in variants.items():
            calls[k] = max(1, round(BLOCK_S / max(_time(fn, device), 1e-6)))
    times = {k: [] for k in variants}
    faults = dict.fromkeys(variants, 0)
    gc.collect()
    gc.disable()
    order = random.Random(ORDER_SEED)
    try:
        for _ in range(reps):
            for k in order.sample(list(variants), len(variants)):
                fn = variants[k]
                before = _page_faults()
                times[k].append(_time(_repeat(fn, calls[k]), device) / calls[k])
                faults[k] += _page_faults() - before
    finally:
        gc.enable()
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "calls_per_timing": calls[k],
                "page_faults_per_call": faults[k] / (reps * calls[k]) if resource else None}
            for k, v in times.items()}


def _page_faults() -> int:
    """Minor page faults of this process so far (memory the C library had to map in afresh)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _repeat(fn, n: int):
    def run():
        for _ in range(n):
            fn()
    return run


def search_case(kind: str, num_tasks: int, window: str, reps: int, device) -> dict:
    spec, opts, batch = BACKBONES[kind]
    tasks = _tasks(num_tasks)
    nets = {}
    for execution in EXECUTIONS:
        torch.manual_seed(0)
        net = AdaShareNet(backbone_factory(BACKBONE_NAME[kind], opts, spec)(), tasks, execution=execution).to(device)
        groups = net.param_groups()  # the search's optimisers, built as the engine builds them (flat)
        nets[execution] = (net,
                           build_optimizer(OptimSpec("sgd", {"backbone": 1e-3, "heads": 1e-3}), groups, flat=True),
                           build_optimizer(OptimSpec("adam", {"policy": 1e-2}), groups, flat=True))
    L = nets["loop"][0].num_gated
    n = 1 if window == "first" else L
    x = torch.randn(batch, *spec.shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    mask = torch.ones(batch, dtype=torch.bool, device=device)
    gen = torch.Generator().manual_seed(0)

    def step(execution):
        net, sgd, adam = nets[execution]

        weights = [p for g in ("backbone", "heads") for p in net.param_groups()[g]]

        def run():
            for optimiser, grad_logits in ((sgd, False), (adam, True)):
                # as the engine does: the parameters another optimiser owns are frozen in a step
                net.policy.logits.requires_grad_(grad_logits)
                for w in weights:
                    w.requires_grad_(not grad_logits)
                policy = P.sample_policy(net.policy.logits, 2.0, n, gen)
                if not grad_logits:
                    policy = policy.detach()
                out = net(x, policy=policy, shared_blocks=L - n)
                loss = compute_losses(tasks, {t.name: (out[t.name], y, mask) for t in tasks}).sum()  # as the engine
                if grad_logits:
                    aux = net.aux_losses(window=n, sparsity_weight=0.05, sharing_weight=0.05)
                    loss = loss + sum(aux.values())
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        return run

    timing = compare({k: step(k) for k in EXECUTIONS}, reps, device)
    memory = {k: _saved_bytes(step(k)) for k in EXECUTIONS}
    # the limit: forward FLOPs of the loop over the stacked forward (the shared part computed once;
    # all tasks run both branches of every block in the window, as in the loop)
    policy = P.sample_policy(nets["loop"][0].policy.logits.detach(), 2.0, n, gen)
    with torch.no_grad():
        flops = {k: count_flops(nets[k][0], x, policy=policy, shared_blocks=L - n) for k in ("loop", "batched")}
    return {"backbone": kind, "tasks": num_tasks, "window": window, "blocks": L, "timing": timing,
            "flop_ratio": flops["loop"] / flops["batched"],
            "speedup": timing["loop"]["median_s"] / timing["auto"]["median_s"],
            "speedup_batched": timing["loop"]["median_s"] / timing["batched"]["median_s"],
            "saved_bytes": memory, "peak_bytes": {k: _peak(step(k), device) for k in EXECUTIONS},
            "operations": {k: count_operations(step(k)) for k in EXECUTIONS}}


def policies(num_tasks: int, L: int, learned: dict | None) -> dict[str, dict[str, tuple[int, ...]]]:
    g = torch.Generator().manual_seed(0)
    out = {
        "random": {f"t{i}": tuple(int(v) for v in torch.randint(0, 2, (L,), generator=g)) for i in range(num_tasks)},
        "all_shared": {f"t{i}": (1,) * L for i in range(num_tasks)},
        "disjoint": {f"t{i}": tuple(int(l % num_tasks == i) for l in range(L)) for i in range(num_tasks)},
    }
    if learned and len(learned) == num_tasks and all(len(v) == L for v in learned.values()):
        out["learned_demo"] = {f"t{i}": tuple(v) for i, v in enumerate(learned.values())}
    return out


def tree_case(kind: str, num_tasks: int, name: str, decisions: dict, reps: int, device) -> dict:
    spec, opts, batch = {**BACKBONES, **DEMO}[kind]
    tasks = _tasks(num_tasks)
    torch.manual_seed(0)
    arch = AdaShareArchitecture(backbone_factory(BACKBONE_NAME[kind], opts, spec)(), tasks, decisions).to(device)
    optimiser = build_optimizer(OptimSpec("adam", {"backbone": 1e-3, "heads": 1e-3}, betas=(0.5, 0.999)),
                                arch.param_groups(), flat=True)  # as the engine's re-training phase
    x = torch.randn(batch, *spec.shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    mask = torch.ones(batch, dtype=torch.bool, device=device)

    def forward(tree: bool):
        if tree:
            return arch(x)
        out = {}  # T full passes, stem included, as the FLOP ratio's numerator counts them
        for t in arch.task_names:
            h0 = arch.backbone.stem(x)
            feats = per_task_features(arch.backbone.blocks, h0, arch.decisions, arch.backbone.pool, [t])
            out[t] = arch.heads[t](feats[t])
        return out

    def train_step(tree, step=True):
        def run():
            out = forward(tree)
            loss = compute_losses(tasks, {t.name: (out[t.name], y, mask) for t in tasks}).sum()  # as the engine
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if step:
                optimiser.step()
        return run

    def infer(tree):
        def run():
            with torch.no_grad():
                forward(tree)
        return run

    # one task alone, the one with the longest path: a step no tree over these tasks can beat
    longest = max(tasks, key=lambda t: sum(decisions[t.name]))
    torch.manual_seed(0)
    alone = AdaShareArchitecture(backbone_factory(BACKBONE_NAME[kind], opts, spec)(), [longest],
                                 {longest.name: decisions[longest.name]}).to(device)
    alone_optimiser = build_optimizer(OptimSpec("adam", {"backbone": 1e-3, "heads": 1e-3}, betas=(0.5, 0.999)),
                                      alone.param_groups(), flat=True)

    def one_task_step():
        out = alone(x)
        loss = compute_losses([longest], {longest.name: (out[longest.name], y, mask)}).sum()
        alone_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        alone_optimiser.step()

    # the mode is set once per comparison: switching it walks every module (0.1 ms on the small MLP)
    arch.train()
    alone.train()
    # also without the Adam step: a fixed cost that both variants pay and no sharing removes
    train = compare({"per_task": train_step(False), "tree": train_step(True),
                     "per_task_no_step": train_step(False, step=False), "tree_no_step": train_step(True, step=False),
                     "one_task": one_task_step}, reps, device)
    saved = {"per_task": _saved_bytes(train_step(False)), "tree": _saved_bytes(train_step(True))}
    peak = {"train": {"per_task": _peak(train_step(False), device), "tree": _peak(train_step(True), device)}}
    # on a small network each operation costs about the same whatever its FLOPs: the ratio of the
    # operations a training step dispatches is the limit where time follows the count
    operations = {"per_task": count_operations(train_step(False)), "tree": count_operations(train_step(True))}
    arch.eval()
    inference = compare({"per_task": infer(False), "tree": infer(True)}, reps, device)
    peak["inference"] = {"per_task": _peak(infer(False), device), "tree": _peak(infer(True), device)}
    one = x[:1]
    per_task_flops = sum(count_flops(arch, one, tasks=[t.name]) for t in tasks)
    tree_flops = count_flops(arch, one)
    return {"backbone": kind, "tasks": num_tasks, "policy": name, "decisions": {k: list(v) for k, v in decisions.items()},
            "flop_ratio": per_task_flops / tree_flops, "train": train, "inference": inference,
            "train_speedup": train["per_task"]["median_s"] / train["tree"]["median_s"],
            "train_speedup_no_step": train["per_task_no_step"]["median_s"] / train["tree_no_step"]["median_s"],
            # per-task passes over one task's step: the most a tree can gain here
            "train_bound": train["per_task"]["median_s"] / train["one_task"]["median_s"],
            "inference_speedup": inference["per_task"]["median_s"] / inference["tree"]["median_s"],
            "operations": operations, "op_ratio": operations["per_task"] / operations["tree"],
            "saved_bytes": saved, "peak_bytes": peak}


def _faults(timing: dict) -> str:
    n = timing["page_faults_per_call"]
    return "-" if n is None else f"{n:.0f}"


def _mb(peaks: dict, keys) -> str:
    return "/".join("-" if peaks[k] is None else f"{peaks[k] / 2**20:.1f}" for k in keys)


def _print_tree(r: dict) -> None:
    print(f"{'':<12} {r['backbone']:<11} {r['tasks']:>2} {r['policy']:<13} {r['flop_ratio']:>10.2f} "
          f"{r['train_speedup']:>8.2f} {r['train_speedup_no_step']:>9.2f} {r['train_bound']:>8.2f} {r['op_ratio']:>8.2f} "
          f"{r['inference_speedup']:>8.2f} {_mb(r['peak_bytes']['train'], ('per_task', 'tree')):>20} "
          f"{_mb(r['peak_bytes']['inference'], ('per_task', 'tree')):>20}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--learned", default="runs/demo/adashare/policy.json",
                    help="policy.json of the demo's AdaShare run (its selected architecture), if present")
    ap.add_argument("--out", default="benchmarks/results/adashare_speed.json")
    ap.add_argument("--only", choices=["search", "tree"], help="run one half (the JSON then holds only that half)")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="network sizes to measure")
    ap.add_argument("--no-record", action="store_true",
                    help="do not store this run as a run record (benchmarks/results/runs/speed/)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (the engine keeps freed host memory, train.keep_host_memory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = not args.default_malloc and keep_freed_host_memory()  # as the engine does
    device = torch.device(args.device)
    learned = None
    path = Path(args.learned)
    if path.exists():
        pol = json.loads(path.read_text())
        chosen = [a for a in pol.get("architectures", []) if a.get("selected")]
        learned = chosen[0]["policy"] if chosen else None
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "threads": args.threads, "reps": args.reps, "keep_host_memory": kept, "torch": torch.__version__, "search": [], "tree": []}
    print(f"threads={args.threads} device={results['device']} reps={args.reps} keep_host_memory={kept}")
    print(f"{'search step':<12} {'backbone':<11} {'T':>2} {'window':<6} {'FLOP ratio':>10} {'auto x':>7} {'batched x':>9} {'loop ms':>8} "
          f"{'auto ms':>8} {'batched ms':>10} {'saved MB loop/auto':>19} {'faults/step loop/auto/batched':>30} "
          f"{'peak MB loop/auto/batched':>26} {'ops loop/auto/batched':>22}")
    kinds = [k for size in args.sizes for k in SIZES[size]]
    for kind in kinds if args.only != "tree" else []:
        for T in args.tasks:
            for window in ("first", "full"):
                r = search_case(kind, T, window, args.reps, device)
                results["search"].append(r)
                ms = {k: 1e3 * r["timing"][k]["median_s"] for k in EXECUTIONS}
                print(f"{'':<12} {kind:<11} {T:>2} {window:<6} {r['flop_ratio']:>10.2f} {r['speedup']:>7.2f} {r['speedup_batched']:>9.2f} "
                      f"{ms['loop']:>8.2f} {ms['auto']:>8.2f} {ms['batched']:>10.2f} "
                      f"{r['saved_bytes']['loop'] / 2**20:>10.2f}/{r['saved_bytes']['auto'] / 2**20:.2f} "
                      f"{'/'.join(_faults(r['timing'][k]) for k in EXECUTIONS):>30} "
                      f"{_mb(r['peak_bytes'], EXECUTIONS):>26} "
                      f"{'/'.join(str(r['operations'][k]) for k in EXECUTIONS):>22}")
    print(f"{'tree':<12} {'backbone':<11} {'T':>2} {'policy':<13} {'FLOP ratio':>10} {'train x':>8} {'no step x':>9} "
          f"{'bound x':>8} {'op ratio':>8} {'infer x':>8} {'train peak MB p/t':>20} {'infer peak MB p/t':>20}")
    for kind in kinds if args.only != "search" else []:
        L = sum(BACKBONES[kind][1].get("blocks", [])) or BACKBONES[kind][1]["depth"]
        for T in args.tasks:
            for name, decisions in policies(T, L, learned if kind == "mlp" else None).items():
                r = tree_case(kind, T, name, decisions, args.reps, device)
                results["tree"].append(r)
                _print_tree(r)
    if learned and args.only != "search" and "small" in args.sizes:
        T = len(learned)
        for name, decisions in policies(T, len(next(iter(learned.values()))), learned).items():
            r = tree_case("mlp_demo", T, name, decisions, args.reps, device)
            results["tree"].append(r)
            _print_tree(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"-> {out}")
    if not args.no_record:
        record_benchmark("speed", record_name(args), results, speed_figures(results), threads=args.threads,
                         script="adashare_speed.py", argv=argv)
    return 0


def record_name(args) -> str:
    """`adashare` for a full run; otherwise what it was limited to (`adashare-search-small`, ...)."""
    parts = ["adashare"]
    if args.only:
        parts.append(args.only)
    if sorted(args.sizes) != sorted(SIZES):
        parts.append("+".join(args.sizes))
    if args.default_malloc:
        parts.append("default_malloc")
    if args.device != "cpu":
        parts.append(args.device)
    return "-".join(parts)


def speed_figures(results: dict) -> dict[str, float]:
    """The ratios the tables quote, flat: `search.<backbone>.<T>.<window>.{auto,batched,flop_ratio}` and
    `tree.<backbone>.<T>.<policy>.{train,train_no_step,bound,inference,flop_ratio,op_ratio}`."""
    figures: dict[str, float] = {}
    for r in results["search"]:
        key = f"search.{r['backbone']}.{r['tasks']}.{r['window']}"
        figures.update({f"{key}.auto": r["speedup"], f"{key}.batched": r["speedup_batched"],
                        f"{key}.flop_ratio": r["flop_ratio"]})
    for r in results["tree"]:
        key = f"tree.{r['backbone']}.{r['tasks']}.{r['policy']}"
        ops = r.get("operations", {})
        figures.update({f"{key}.train": r["train_speedup"], f"{key}.train_no_step": r["train_speedup_no_step"],
                        f"{key}.bound": r["train_bound"], f"{key}.inference": r["inference_speedup"],
                        f"{key}.flop_ratio": r["flop_ratio"]})
        if ops.get("tree"):
            figures[f"{key}.op_ratio"] = ops["per_task"] / ops["tree"]
    return figures


if __name__ == "__main__":
    sys.exit(main())
