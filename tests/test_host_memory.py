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

