"""pipeline/heap.py: big blocks reused from the heap during a job, memory handed back after it."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch

from cascade_studio.pipeline import heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="glibc only (Linux); elsewhere kept_heap does nothing")

BIG = 96 * 2**20 // 4  # float32 elements: a 96 MiB tensor
HALF_PAGES = BIG * 4 // 2 // 4096  # pages of a 48 MiB one, above glibc's largest mmap threshold (32 MiB)


def faults_after_a_freed_block() -> int:
    """Minor page faults (all threads) taken by making and touching a 48 MiB tensor after a 96 MiB one was freed."""
    torch.empty(BIG).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG // 2).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_big_blocks_are_reused_inside_and_faulted_in_outside():
    assert faults_after_a_freed_block() > HALF_PAGES // 2  # glibc's default: a fresh mmap every time
    with heap.kept_heap():
        assert faults_after_a_freed_block() < HALF_PAGES // 10
    assert faults_after_a_freed_block() > HALF_PAGES // 2  # defaults restored


def test_memory_freed_inside_is_handed_back_on_leaving():
    with heap.kept_heap():
        blocks = [torch.ones(BIG // 2) for _ in range(4)]  # 192 MiB from the heap
        del blocks
        held = rss_mib()
    assert rss_mib() < held - 150


def test_nested_uses_restore_only_when_the_last_leaves():
    with heap.kept_heap():
        with heap.kept_heap():
            pass
        assert faults_after_a_freed_block() < HALF_PAGES // 10
    assert faults_after_a_freed_block() > HALF_PAGES // 2
