"""What a run costs before its first step, and the threads of several processes: the launcher
shares the cores out among its processes, and the deterministic flag is set without importing
TorchInductor."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sharewise.engine import distributed as D


class _Done:
    returncode = 0

    def poll(self):
        return 0

    def wait(self):
        return 0


def _launched_envs(monkeypatch, nprocs: int) -> list[dict]:
    envs = []
    monkeypatch.setattr(D.subprocess, "Popen", lambda cmd, env: envs.append(env) or _Done())
    assert D.launch(["run"], nprocs) == 0
    return envs


def test_launch_gives_each_process_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    envs = _launched_envs(monkeypatch, 2)
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["4", "4"]
    assert [e["RANK"] for e in envs] == ["0", "1"]
    assert D.threads_per_process(3) == 2 and D.threads_per_process(16) == 1


def test_launch_keeps_the_users_thread_setting(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    envs = _launched_envs(monkeypatch, 2)
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["3", "3"]


@pytest.mark.parametrize("deterministic", [True, False])
def test_prepare_sets_the_deterministic_flag_without_importing_torchinductor(tmp_path, deterministic):
    code = f"""
import sys, torch
from sharewise.config import validate_config
from sharewise.engine.runner import prepare
prepare(validate_config({{"data": {{"source": "digits"}}, "train": {{"threads": 1, "deterministic": {deterministic}}},
                          "output": {{"dir": {str(tmp_path / 'run')!r}}}}}))
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      "torch._inductor" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == [str(deterministic), str(deterministic), "False"]
