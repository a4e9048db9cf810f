"""The allocator setting: freed activation buffers are reused instead of being faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ckpt_eval.allocator import retain_freed_memory

# A 40 MB buffer filled and freed round after round, as a forward pass at batch 1024 does with its
# activations (above glibc's largest dynamic mmap threshold, 32 MB: by default mapped afresh every
# round). Faults are counted after 20 rounds of warm-up: aligned allocations leave slack that the
# heap absorbs within the first few rounds, after which the same pages serve every round.
CHURN = """
import json, resource, sys
import torch
if sys.argv[1] == "retain":
    from ckpt_eval.allocator import retain_freed_memory
    assert retain_freed_memory()
for _ in range(20):
    torch.empty(10 * 1024 * 1024).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(10 * 1024 * 1024).fill_(1.0)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def minor_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout
    return int(json.loads(out))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_retained_buffers_are_not_faulted_in_again() -> None:
    pages = 40 * 1024 * 1024 // 4096
    assert minor_faults("default") > 15 * pages  # glibc maps and unmaps the buffer every round
    assert minor_faults("retain") < pages // 10  # the same pages, reused


def test_setting_is_idempotent() -> None:
    first = retain_freed_memory()
    assert retain_freed_memory() is first
