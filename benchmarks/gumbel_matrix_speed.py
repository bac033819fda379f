"""Parameter allocation's routed layers: grouped components against a per-component loop, and
inference with the learned allocation against computing every component, as ratios in one run.

- Training update (one task's forward, backward and Adam step over weights and router, as the
  round-robin loop does): the routed layers' components of one kind as one grouped operation (the
  default, `RoutedLayer.forward`) against one call per component (`RoutedLayer.looped`), both
  dense (every component computed, as the straight-through gradient needs).
- Inference (all tasks, no grad) with an allocation, at the training batch and at the evaluation
  batch (`--eval-batch`, default 512 = `train.eval_batch_size`): only the components some task selects, each
  once per distinct input (the default), against the reference's way, every component of every
  layer for every task, multiplied by its 0/1 weight; next to the FLOP ratio of the two
  (`FlopCounterMode`, one example). Allocations: random (each connection on with p = 0.5, seeded),
  all-shared (every task every component) and disjoint (task i component i mod C).
- Peak memory of each variant beyond what was in use before the call (`peak_host_bytes` on a CPU).

Networks: the MNIST network of spec §7.1 (C = 4 and, for the grouping target, C = 7 components of 4
filters, batch 16, 4 tasks) and the clusters network of §7.3 (16 components in two kinds,
conv3×3 and conv5×5 of 8 filters, 32×32×3, batch 32, 8 tasks here). Timing as in
adashare_speed.py (blocks of ~30 ms, variants alternating in a seeded order, medians).

    python benchmarks/gumbel_matrix_speed.py [--threads 2] [--reps 9] [--no-record]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from sharewise.cost import count_flops
from sharewise.engine.optim import build_optimizer
from sharewise.layers.routing import RoutedLayer, combine
from sharewise.methods.base import OptimSpec
from sharewise.methods.gumbel_matrix.network import RoutedNetwork, gumbel_router, keras_init, preset_layers
from sharewise.tasks import Task

from _results import record_benchmark, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from adashare_speed import _peak, compare  # noqa: E402

# name -> (preset, input shape, components, batch, tasks)
NETWORKS = {
    "mnist_c4": ("mnist", (1, 28, 28), 4, 16, 4),
    "mnist_c7": ("mnist", (1, 28, 28), 7, 16, 4),
    "clusters": ("clusters", (3, 32, 32), None, 32, 8),
}


def build(name: str, seed: int = 0) -> RoutedNetwork:
    preset, shape, components, _, num_tasks = NETWORKS[name]
    torch.manual_seed(seed)
    layers = preset_layers(preset, shape, components=components, widths=(), eps=1e-6)
    tasks = [Task(f"t{i}", "categorical", classes=list(range(10))) for i in range(num_tasks)]
    routers = [gumbel_router(num_tasks, len(layer), 0.5) for layer in layers if isinstance(layer, RoutedLayer)]
    model = RoutedNetwork(layers, routers, tasks, input_shape=shape, dropout=0.0, seed=seed)
    keras_init(model)
    return model


def set_looped(model: RoutedNetwork, looped: bool) -> None:
    """Every routed layer computes its components one call each (the per-component loop)."""
    for layer in model.layers:
        if isinstance(layer, RoutedLayer):
            if looped:
                layer.forward = (lambda x, index=None, detached=(), _l=layer: _l.looped(x, index))
            elif "forward" in layer.__dict__:
                del layer.forward


def set_allocation(model: RoutedNetwork, kind: str, seed: int = 0) -> dict[str, list[list[int]]]:
    """Router logits whose deterministic pattern is ``kind``; returns the patterns per layer."""
    g = torch.Generator().manual_seed(seed)
    patterns = []
    with torch.no_grad():
        for router in model.routers:
            T, C = router.logits.shape[:2]
            if kind == "random":
                on = torch.rand(T, C, generator=g) < 0.5
            elif kind == "all_shared":
                on = torch.ones(T, C, dtype=torch.bool)
            else:  # disjoint
                on = torch.zeros(T, C, dtype=torch.bool)
                on[torch.arange(T), torch.arange(T) % C] = True
            router.logits[..., 0] = torch.where(on, 1.0, -1.0)
            router.logits[..., 1] = 0.0
            patterns.append(on.int().tolist())
    return {"layers": patterns}


def dense_inference(model: RoutedNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference's evaluation: every component of every routed layer for every task, weighted
    by the task's 0/1 pattern (mean of the selected, zeros if none)."""
    patterns = model.allocation()
    out = {}
    for t, task in enumerate(model.tasks):
        h, r = x, 0
        for layer in model.layers:
            if isinstance(layer, RoutedLayer):
                h = combine(layer(h), patterns[r][t].to(h.dtype), model.aggregation)
                r += 1
            else:
                h = layer(h)
        out[task.name] = model.heads[task.name](model.dropout(h))
    return out


def train_case(name: str, reps: int) -> dict:
    _, shape, _, batch, _ = NETWORKS[name]
    model = build(name)
    model.train()
    spec = OptimSpec("adam", {"backbone": 5e-3, "heads": 5e-3, "router": 5e-3}, 0.0, (0.9, 0.999),
                     grad_clip=None, step_without_grad=True)
    opt = build_optimizer(spec, model.param_groups(), flat=True)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    names = model.task_names
    counter = {"step": 0}

    def step(looped: bool):
        def run():
            set_looped(model, looped)
            s = counter["step"]
            counter["step"] += 1
            task = names[s % len(names)]
            loss = F.cross_entropy(model(x, tasks=[task], step=s)[task], y)
            for aux in model.aux_losses(tasks=[task], step=s).values():
                loss = loss + aux
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
        return run

    variants = {"grouped": step(False), "looped": step(True)}
    timing = compare(variants, reps, torch.device("cpu"))
    peaks = {k: _peak(fn, torch.device("cpu")) for k, fn in variants.items()}
    set_looped(model, False)
    return {"network": name, "components": [len(model.layers[i]) for i in model.routed_index], "batch": batch,
            "tasks": len(names), "timing": timing, "speedup": timing["looped"]["median_s"] / timing["grouped"]["median_s"],
            "peak_bytes": peaks}


def inference_case(name: str, allocation: str, reps: int, batch: int | None = None) -> dict:
    """``batch``: examples per forward (default the network's training batch)."""
    _, shape, _, train_batch, _ = NETWORKS[name]
    batch = batch or train_batch
    model = build(name)
    patterns = set_allocation(model, allocation)
    model.eval()
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast, dense = model(x), dense_inference(model, x)
    if any(not torch.allclose(fast[t], dense[t], atol=1e-5, rtol=1e-4) for t in fast):
        raise AssertionError(f"{name}/{allocation}: selected-only inference differs from the dense one")

    def infer(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    variants = {"selected": infer(lambda: model(x)), "dense": infer(lambda: dense_inference(model, x))}
    timing = compare(variants, reps, torch.device("cpu"))
    one = x[:1]
    with torch.no_grad():
        flop_ratio = count_flops(lambda: dense_inference(model, one)) / count_flops(lambda: model(one))
    peaks = {k: _peak(fn, torch.device("cpu")) for k, fn in variants.items()}
    speedup = timing["dense"]["median_s"] / timing["selected"]["median_s"]
    return {"network": name, "allocation": allocation, "patterns": patterns, "batch": batch, "timing": timing,
            "flop_ratio": flop_ratio, "speedup": speedup, "speedup_over_flop_ratio": speedup / flop_ratio,
            "peak_bytes": peaks}


def figures(result: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in result["train"]:
        out[f"train.{r['network']}.speedup"] = r["speedup"]
    for r in result["inference"]:
        key = f"inference.b{r['batch']}.{r['network']}.{r['allocation']}"
        out.update({f"{key}.speedup": r["speedup"], f"{key}.flop_ratio": r["flop_ratio"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--eval-batch", type=int, default=512,
                    help="inference is also timed at this batch (the engine's default train.eval_batch_size)")
    ap.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    ap.add_argument("--out", default="benchmarks/results/gumbel_matrix_speed.json")
    ap.add_argument("--no-record", action="store_true", help="do not store a run record (benchmarks/results/runs/speed/)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "reps": args.reps, "torch": torch.__version__, "train": [], "inference": []}
    print(f"{'training update':<16} {'network':<10} {'grouped ms':>10} {'looped ms':>10} {'speed-up':>9} {'peak MB g/l':>12}")
    for name in args.networks:
        r = train_case(name, args.reps)
        result["train"].append(r)
        ms = {k: 1e3 * r["timing"][k]["median_s"] for k in ("grouped", "looped")}
        print(f"{'':<16} {name:<10} {ms['grouped']:>10.2f} {ms['looped']:>10.2f} {r['speedup']:>9.2f} "
              f"{r['peak_bytes']['grouped'] / 2**20:>5.1f}/{r['peak_bytes']['looped'] / 2**20:.1f}")
    print(f"{'inference':<16} {'network':<10} {'batch':>5} {'allocation':<11} {'FLOP ratio':>10} {'speed-up':>9} {'÷ ratio':>8}")
    for name in args.networks:
        for batch in (NETWORKS[name][3], args.eval_batch):
            for allocation in ("random", "all_shared", "disjoint"):
                r = inference_case(name, allocation, args.reps, batch)
                result["inference"].append(r)
                print(f"{'':<16} {name:<10} {batch:>5} {allocation:<11} {r['flop_ratio']:>10.2f} {r['speedup']:>9.2f} "
                      f"{r['speedup_over_flop_ratio']:>8.2f}", flush=True)
    write_json(result, args.out)
    if not args.no_record:
        record_benchmark("speed", "gumbel_matrix", result, figures(result), threads=args.threads,
                         script="gumbel_matrix_speed.py", argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
