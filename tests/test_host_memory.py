"""The host allocator setting: freed activations kept for the next step instead of faulted in again."""

import platform
import subprocess
import sys

import pytest

# a training step's pattern: 40 activations of 192–800 KiB alive at once (16 MiB, 4,000 pages),
# then all freed; with glibc's defaults the top of the heap is often given back and every later
# step faults its pages in again (bimodal: 3,500 faults a step, or none, from run to run)
_STEPS = """
import resource, torch
from sharewise.engine.device import keep_freed_host_memory
assert keep_freed_host_memory()
sizes = [64 * 1024, 48 * 1024, 200 * 1024, 96 * 1024]
def step():
    kept = [torch.empty(sizes[i % 4]).fill_(1.0) for i in range(40)]
    del kept
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_host_memory_reuses_a_steps_memory():
    out = subprocess.run([sys.executable, "-c", _STEPS], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < 200  # over 100 steps of 4,000 pages each



@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_peak_host_bytes_sees_tensors_alive_at_once_in_forward_and_backward():
    import torch

    from sharewise.engine.device import peak_host_bytes

    mib = 1 << 20
    big = 10 * mib // 4  # float32 elements of 10 MiB

    def three_alive():  # three 10 MiB tensors alive at once, then freed
        a = torch.ones(big)
        b = a * 2
        c = b + a
        return float(c[0])

    def one_at_a_time():
        for _ in range(3):
            float(torch.ones(big)[0])

    x = torch.ones(big, requires_grad=True)

    def backward():  # forward keeps exp(x) alive (10 MiB); backward adds its gradient (10 MiB more)
        x.exp().sum().backward()

    peaks = {f.__name__: peak_host_bytes(f) for f in (three_alive, one_at_a_time, backward)}
    assert 30 * mib <= peaks["three_alive"] < 34 * mib
    assert 10 * mib <= peaks["one_at_a_time"] < 14 * mib
    assert 20 * mib <= peaks["backward"] < 24 * mib  # seen only if backward's operations are watched
