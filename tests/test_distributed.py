"""Two CPU processes with gloo: the same numbers as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

COMMON = ["--no-progress", "--set", "train.threads=1", "--set", "backbone.norm=group", "--set", "backbone.width=32",
          "--set", "backbone.depth=2", "--set", "train.max_steps=30", "--set", "train.epochs=1",
          "--set", "output.tensorboard=false", "--set", "optim.lr=0.003"]


def _run(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run([sys.executable, "-m", "sharewise", "run", "--out", str(out), *COMMON, *extra],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "results.json").read_text())


def test_two_gloo_processes_match_one_process(tmp_path):
    one = _run(tmp_path / "one", "--set", "train.batch_size=16")
    two = _run(tmp_path / "two", "--procs", "2", "--set", "train.batch_size=8")
    for task, entry in one["tasks"].items():
        for metric in ("loss", entry["primary_metric"]):
            assert two["tasks"][task]["test"][metric] == pytest.approx(entry["test"][metric], rel=1e-3, abs=1e-4)
        assert two["tasks"][task]["test"]["n"] == entry["test"]["n"]  # every test example exactly once
    w1 = torch.load(tmp_path / "one/checkpoints/train/last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two/checkpoints/train/last.pt", weights_only=True)["model"]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    assert not list((tmp_path / "two").glob("*.rank1*"))


def test_killed_two_process_run_resumes(tmp_path):
    """SIGKILL the whole 2-process group mid-run, resume with --resume: the same results."""
    import signal
    import time

    flags = ["--procs", "2", "--set", "train.batch_size=8", "--set", "train.checkpoint_every_s=0.0001",
             "--set", "train.log_every=1"]
    ref = _run(tmp_path / "ref", *flags)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sharewise", "run", "--out", str(out), *COMMON, *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240

    def last_step():
        path = out / "metrics.jsonl"
        steps = [0]
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    steps.append(json.loads(line).get("step", 0))
                except json.JSONDecodeError:
                    pass
        return max(steps)

    while last_step() < 15 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    res = _run(out, *flags, "--resume")
    for task, entry in ref["tasks"].items():
        assert res["tasks"][task]["test"] == pytest.approx(entry["test"], rel=1e-6)


def test_ddp_adashare_search_replicas_keep_identical_policies(tmp_path):
    """Each rank dumps the search network it holds in memory (parameters and buffers, policy
    logits included): the two replicas are bit-identical and the policy has moved from its init."""
    from _replicas import differing_entries, raise_errors, run_replicas

    config = {
        "method": {"name": "adashare", "search_cycles": 4, "cycle_iters": [2, 2], "warm_up_iters": 3,
                   "retrain_total_iters": 4, "curriculum_speed": 1, "num_archs": 1},
        "backbone": {"width": 16, "depth": 3, "norm": "group"},  # BatchNorm statistics are per rank on gloo
        "train": {"progress": False, "batch_size": 16, "eval_every": 4, "threads": 1},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    dumps = run_replicas({"adashare": config}, tmp_path, run_test=False)["adashare"]
    raise_errors(dumps)
    a, b = (d["models"]["."] for d in dumps)  # the search network (warm-up + search), as each rank holds it
    differ = differing_entries(a, b)
    assert not differ, f"the ranks differ in {differ[:5]}"
    assert not torch.equal(a["policy.logits"], torch.full_like(a["policy.logits"], 0.5))  # learned, not its init


def test_bf16_autocast_on_cpu_and_fp16_needs_a_gpu(tmp_path):
    from sharewise.cli.main import main

    flags = ["--no-progress", "--epochs", "1", "--set", "backbone.width=16", "--set", "output.tensorboard=false"]
    assert main(["run", "--out", str(tmp_path / "fp32"), *flags]) == 0
    assert main(["run", "--out", str(tmp_path / "bf16"), *flags, "--set", "train.precision=bf16"]) == 0
    a = json.loads((tmp_path / "fp32" / "results.json").read_text())["tasks"]["digit"]["test"]["accuracy"]
    b = json.loads((tmp_path / "bf16" / "results.json").read_text())["tasks"]["digit"]["test"]["accuracy"]
    assert abs(a - b) < 0.05  # reduced precision, same training
    assert main(["run", "--out", str(tmp_path / "fp16"), *flags, "--set", "train.precision=fp16"]) == 2


def _children_with_rank(parent: int) -> dict[int, int]:
    """{RANK: pid} of ``parent``'s child processes, read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = int(entry)
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks through /proc")
def test_a_killed_rank_is_named_and_the_others_are_stopped(tmp_path):
    """SIGKILL rank 1 mid-training: the launcher stops rank 0, names rank 1 and its signal on one
    line, and exits non-zero within seconds; rank 0's gloo transport error is not shown raw."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-m", "sharewise", "run", "--out", str(out), *COMMON, "--procs", "2",
                             "--set", "train.batch_size=8", "--set", "train.max_steps=100000",
                             "--set", "train.epochs=1000", "--set", "train.log_every=1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        ranks = _children_with_rank(proc.pid)
        assert proc.poll() is None and set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.time()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            for pid in _children_with_rank(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and time.time() - killed < 20
    assert "sharewise: rank 1 died (signal SIGKILL)" in err, err
    assert "Connection reset by peer" not in err and "Traceback" not in err, err
    time.sleep(0.5)
    assert _children_with_rank(proc.pid) == {}
