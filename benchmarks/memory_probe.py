"""Run `kubetune` (the operator) under tracemalloc, for `operator_scale.py --tracemalloc` (not a test).

    python -m benchmarks.memory_probe SNAPSHOT_PREFIX FRAMES kubetune-arguments...

Each SIGUSR2 writes a snapshot of the Python allocations alive at that moment to SNAPSHOT_PREFIX.N (N = 1, 2,
...), with FRAMES frames of traceback per allocation. tracemalloc adds its own memory and CPU: read RSS from
a run without it.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from types import FrameType

from kubetune.cli import main


def probe(argv: list[str]) -> int:
    """Start tracemalloc, arm SIGUSR2, run `kubetune argv[2:]`; returns its exit status."""
    prefix, frames = argv[0], int(argv[1])
    tracemalloc.start(frames)
    taken = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        taken += 1
        tracemalloc.take_snapshot().dump(f"{prefix}.{taken}")

    signal.signal(signal.SIGUSR2, dump)
    return main(argv[2:])


if __name__ == "__main__":
    sys.exit(probe(sys.argv[1:]))
