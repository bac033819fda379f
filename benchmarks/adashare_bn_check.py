"""Is shared BatchNorm what sinks AdaShare's re-trained architectures on MNIST? (issue 23)

    .venv/bin/python benchmarks/adashare_bn_check.py RUN_DIR [RUN_DIR ...]

For every re-trained architecture of finished AdaShare runs on the MNIST idx files (e.g.
`benchmarks/section_runs.py adashare-mnist-resnet-fair`), the test accuracy of each categorical task
with its selected checkpoint, twice: BatchNorm with its running statistics (as `sharewise test`
evaluates) and BatchNorm with the statistics of the test batch run through that task's path alone.
With shared BatchNorm a block's running statistics mix the inputs of every task that executes it
(each arriving by its own path), so a task normalised with the mixture sees shifted features; if the
second accuracy is high where the first is low, that mismatch, not the training, is the loss.
Prints a table and writes `benchmarks/results/adashare_bn_check.json` (or `--out`; per run, architecture, task).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import REPO, code_version  # noqa: E402

from sharewise.config import load_config  # noqa: E402
from sharewise.data.derive import add_derived_columns  # noqa: E402
from sharewise.data.idx import find_idx_files, read_pair  # noqa: E402
from sharewise.engine.runner import load_candidate, prepare_from_run, read_selection  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "adashare_bn_check.json"


def accuracies(run_dir: Path, batch_size: int = 256) -> dict[str, dict[str, dict[str, float]]]:
    """{architecture: {task: {"running": acc, "task_batch": acc}}} on the run's test images."""
    cfg = load_config(run_dir / "config.yaml")
    state = json.loads((run_dir / "data_state.json").read_text())
    folder = Path(cfg.data.path)
    folder = folder if folder.is_absolute() else REPO / folder
    files = find_idx_files(folder)
    images, labels = read_pair(files["test_images"], files["test_labels"])
    pre = state["preprocessing"]
    x = torch.as_tensor((images.astype(np.float32) / 255.0 - pre["mean"][0]) / pre["std"][0])[:, None]
    frame = add_derived_columns(pd.DataFrame({"label": labels}), cfg.data.derived_tasks or {})
    ctx = prepare_from_run(run_dir)
    tasks = [t for t in ctx.tasks if t.kind == "categorical"]
    truth = {t.name: torch.as_tensor(np.searchsorted(np.array(t.classes),
                                                     frame[state["columns"].get(t.name, t.name)].to_numpy()))
             for t in tasks}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for entry in read_selection(run_dir)["candidates"]:
        model, cand = load_candidate(ctx, entry)
        kwargs = ctx.method.candidate_forward_kwargs(cand)
        trained = copy.deepcopy(model.state_dict())  # train mode updates the running statistics: restored below
        out[entry["name"]] = {}
        for t in tasks:
            accs = {}
            for mode in ("running", "task_batch"):
                model.train(mode == "task_batch")  # train mode: BatchNorm normalises with the batch's statistics
                correct = 0
                with torch.no_grad():
                    for i in range(0, len(x), batch_size):
                        scores = model(x[i:i + batch_size], tasks=[t.name], **kwargs)[t.name]
                        correct += int((scores.argmax(1) == truth[t.name][i:i + batch_size]).sum())
                accs[mode] = correct / len(x)
                model.load_state_dict(trained)
            out[entry["name"]][t.name] = accs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished AdaShare run directories (MNIST idx data)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON written (default {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    print("| run | architecture | task | accuracy, running BN statistics | accuracy, the task's own batch statistics |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        results[str(run)] = accuracies(run)
        recorded = {c["name"]: c["test"] for c in json.loads((run / "results.json").read_text())["candidates"]["per_candidate"]}
        for arch, per_task in results[str(run)].items():
            for task, a in per_task.items():
                # the first column must be what `sharewise test` recorded, or this check measures something else
                if abs(a["running"] - recorded[arch][task]["accuracy"]) > 1e-6:
                    raise SystemExit(f"{run}/{arch}/{task}: accuracy {a['running']} differs from results.json's "
                                     f"{recorded[arch][task]['accuracy']}")
                print(f"| {run.name} | {arch} | {task} | {a['running']:.4f} | {a['task_batch']:.4f} |")
    args.out.write_text(json.dumps({"code": code_version(), "torch": torch.__version__, "runs": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
