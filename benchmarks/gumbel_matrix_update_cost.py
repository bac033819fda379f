"""The cost of one round-robin update of the Omniglot-20 and task-clusters networks (spec §7.2, §7.3):
CPU seconds and wall seconds per update (one task's forward, backward and Adam step, dropout 0.5,
the method's auxiliary losses), to size the CPU variants and the published schedules.

    python benchmarks/gumbel_matrix_update_cost.py [--threads 1] [--updates 40] [--full] [--no-record]

``--full`` adds the published Omniglot network (105×105, 48 filters; about 10 CPU seconds an
update, 3 updates). CPU time is `time.process_time` of this process, so another process loading the
machine raises the wall time far more than the CPU time; both are stored (record
``gumbel_matrix-cost/update-cost``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from sharewise.methods.gumbel_matrix.network import (RoutedNetwork, all_ones_router, clusters_layers, gumbel_router,
                                                     keras_init, omniglot_layers)
from sharewise.tasks import Task

from _results import record_benchmark  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def update_cost(layers, routers, tasks: int, shape, classes: int, batch: int, updates: int, budget: float = 0.0):
    torch.manual_seed(0)
    names = [Task(f"t{i}", "categorical", classes=list(range(classes))) for i in range(tasks)]
    net = RoutedNetwork(layers, routers, names, input_shape=shape, dropout=0.5, budget=0.5, budget_penalty=budget)
    keras_init(net)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x, y = torch.rand(batch, *shape), torch.randint(0, classes, (batch,))
    net.train()
    for i in range(updates + 2):  # two warm-up updates
        if i == 2:
            cpu, wall = time.process_time(), time.perf_counter()
        task = f"t{i % tasks}"
        loss = F.cross_entropy(net(x, tasks=[task], step=i)[task], y)
        for value in net.aux_losses(tasks=[task], step=i).values():
            loss = loss + value
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.process_time() - cpu) / updates, (time.perf_counter() - wall) / updates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--updates", type=int, default=40)
    ap.add_argument("--full", action="store_true", help="also the published 105x105 Omniglot network (slow)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = {
        "omniglot28-f16-gumbel_matrix": lambda: (omniglot_layers(1, filters=16), [gumbel_router(20, 7, 0.97) for _ in range(8)],
                                                 20, (1, 28, 28), 40, 16, 0.0),
        "omniglot28-f16-shared_bottom": lambda: (omniglot_layers(1, filters=16), [all_ones_router(20, 7) for _ in range(8)],
                                                 20, (1, 28, 28), 40, 16, 0.0),
        "clusters-gumbel_matrix": lambda: (clusters_layers(3), [gumbel_router(40, 16, 0.5) for _ in range(3)],
                                           40, (3, 32, 32), 9, 32, 1.0),
        "clusters-shared_bottom": lambda: (clusters_layers(3), [all_ones_router(40, 16) for _ in range(3)],
                                           40, (3, 32, 32), 9, 32, 0.0),
    }
    if args.full:
        cases["omniglot105-f48-gumbel_matrix"] = lambda: (omniglot_layers(1), [gumbel_router(20, 7, 0.97) for _ in range(8)],
                                                          20, (1, 105, 105), 40, 16, 0.0)
    result, figures = {}, {}
    for name, make in cases.items():
        layers, routers, tasks, shape, classes, batch, budget = make()
        n = 3 if name.startswith("omniglot105") else args.updates
        cpu, wall = update_cost(layers, routers, tasks, shape, classes, batch, n, budget)
        result[name] = {"cpu_s": cpu, "wall_s": wall, "updates": n, "batch": batch}
        figures[f"{name}.cpu_s_per_update"] = cpu
        figures[f"{name}.wall_s_per_update"] = wall
        print(f"{name}: {cpu:.3f} CPU s / update, {wall:.3f} wall s / update ({n} updates, batch {batch})", flush=True)
    if not args.no_record:
        record_benchmark("gumbel_matrix-cost", "update-cost", result, figures, threads=args.threads,
                         script="gumbel_matrix_update_cost.py", argv=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
