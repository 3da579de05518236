"""splitnn.memory: freed blocks stay in the process for the next step, unless asked
not to; measured by the resident memory of a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from splitnn.libc import libc

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(libc(), "mallopt"),
    reason="glibc's mallopt only",
)

_PROBE = """
import json, os
from splitnn.memory import keep_freed_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
kept = keep_freed_memory()
before = rss()
blocks = [b"x" * (1 << 20) for _ in range(48)]  # 48 MiB, every page written
during = rss()
del blocks
print(json.dumps({"kept": kept, "grew": during - before, "left": rss() - before}))
"""


def probe(keep: str) -> dict:
    env = {**os.environ, "SPLITNN_KEEP_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_freed_blocks_stay_resident_for_reuse():
    got = probe("1")
    assert got["kept"] is True
    assert got["grew"] > 40 << 20
    assert got["left"] > 40 << 20  # freed, but kept for the next allocations


def test_keep_memory_off_gives_freed_blocks_back():
    got = probe("0")
    assert got["kept"] is False
    assert got["grew"] > 40 << 20
    assert got["left"] < 8 << 20  # glibc's default: big blocks go back to the kernel
