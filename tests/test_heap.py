"""pipeline/heap.py: big blocks reused from the heap during a job, memory handed back after it.

Each check runs in a fresh child process: how glibc serves a big block depends on what the process's heap went
through before (another test's job leaves free chunks behind that later blocks may reuse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cascade_studio.pipeline import heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="glibc only (Linux); elsewhere kept_heap does nothing")

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import json, resource
from pathlib import Path
import torch
from cascade_studio.pipeline import heap

BIG = 96 * 2**20 // 4  # float32 elements: a 96 MiB tensor

def faults_after_a_freed_block():
    # Minor page faults (all threads) taken by making and touching a 48 MiB tensor (above glibc's largest mmap
    # threshold, 32 MiB) after a 96 MiB one was freed.
    torch.empty(BIG).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG // 2).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
"""
HALF_PAGES = 48 * 2**20 // 4096


def run_child(body: str) -> dict:
    code = PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_big_blocks_are_reused_inside_and_faulted_in_outside():
    out = run_child("""
        before = faults_after_a_freed_block()
        with heap.kept_heap():
            inside = faults_after_a_freed_block()
        print(json.dumps({"before": before, "inside": inside}))
    """)
    assert out["before"] > HALF_PAGES // 2  # glibc's default: a fresh mmap every time
    assert out["inside"] < HALF_PAGES // 10


def test_memory_freed_inside_is_handed_back_on_leaving():
    out = run_child("""
        with heap.kept_heap():
            blocks = [torch.ones(BIG // 2) for _ in range(4)]  # 192 MiB from the heap
            del blocks
            held = rss_mib()
        print(json.dumps({"held": held, "after": rss_mib()}))
    """)
    assert out["after"] < out["held"] - 150


def test_hand_back_returns_freed_memory_between_stages_and_the_heap_stays_kept():
    out = run_child("""
        with heap.kept_heap():
            blocks = [torch.ones(BIG // 2) for _ in range(4)]  # 192 MiB, as one stage's working set
            del blocks
            held = rss_mib()
            heap.hand_back()  # what the pipeline does between Stage C, Stage B and Stage A
            handed = rss_mib()
            inside = faults_after_a_freed_block()  # and big blocks are still reused afterwards
        print(json.dumps({"held": held, "handed": handed, "inside": inside}))
    """)
    assert out["handed"] < out["held"] - 150
    assert out["inside"] < HALF_PAGES // 10


def test_nested_uses_hand_memory_back_only_when_the_last_leaves():
    out = run_child("""
        with heap.kept_heap():
            with heap.kept_heap():
                blocks = [torch.ones(BIG // 2) for _ in range(4)]
                del blocks
                held = rss_mib()
            after_inner = rss_mib()
            inside = faults_after_a_freed_block()
        print(json.dumps({"held": held, "after_inner": after_inner, "after": rss_mib(), "inside": inside}))
    """)
    assert out["after_inner"] > out["held"] - 50  # the outer job still keeps the heap
    assert out["inside"] < HALF_PAGES // 10
    assert out["after"] < out["held"] - 150
