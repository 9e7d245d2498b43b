"""The extension's allocator (mimalloc) asks for no transparent huge pages.

mimalloc madvises its arenas for huge pages by default; with the collector's churn each
page mimalloc gave back was faulted in again as a 2 MiB page that the kernel zeroed first,
~4% of the CPU under load (benchmarks/README.md, step 9). ``native/src/lib.rs`` turns the
option off by its number in mimalloc's header, so a dependency update that renumbers it
would silently bring the cost back: this test would then see huge pages in a process that
only ran the extension.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

CHURN = """
import time
from collector.bench.shapes import build_set
from processors import _wire
bodies = [t.fresh() for t in build_set("llm") for _ in range(8)]
kept = []
for _ in range(200):
    for body in bodies:
        kept.append(_wire.split_fragments(body, 0, time.time_ns(), lambda at: "svc"))
    if len(kept) > 300:
        kept.clear()
rollup = open("/proc/self/smaps_rollup").read().splitlines()
print(next(line.split()[1] for line in rollup if line.startswith("AnonHugePages")))
"""


@pytest.mark.skipif(not THP.exists() or "[madvise]" not in THP.read_text(),
                    reason="huge pages are only given on request (madvise) here when this is checked")  # fmt: skip
def test_the_extension_gets_no_huge_pages() -> None:
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    assert int(out.stdout.strip()) == 0, f"{out.stdout.strip()} kB of huge pages after the extension's churn"
