"""A stand-in for `kubetune train` that speaks the launcher contract without training anything.

Used only where the real trainer cannot produce the situation on demand (a node that hangs, a node that
finishes while another is stuck). It reads `NodeContext.from_env()` and, on rank 0, writes progress events
and metrics.json like the trainer; SIGTERM makes it exit 75. Behaviour switches (env):

- STAND_IN_STEPS: steps to "train" (default 10), STAND_IN_STEP_SECONDS: sleep per step (default 0.05)
- STAND_IN_FAIL_RANK: this node raises after STAND_IN_FAIL_AT_STEP steps (default 3)
- STAND_IN_HANG_RANK: this node sleeps forever, silently, instead of training
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from kubetune.contract import EXIT_PREEMPTED, NodeContext
from kubetune.events import EventKind, JobSummary, ProgressEvent


def main() -> int:
    context = NodeContext.from_env()
    steps = int(os.environ.get("STAND_IN_STEPS", "10"))
    pause = float(os.environ.get("STAND_IN_STEP_SECONDS", "0.05"))
    output = Path(context.output_dir or ".")
    events = Path(context.events_file) if context.events_file else None
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

    def emit(kind: EventKind, step: int, **fields: object) -> None:
        if context.node_rank == 0 and events is not None:
            event = ProgressEvent(
                event=kind, step=step, total_steps=steps, world_size=context.world_size, **fields
            )  # type: ignore[arg-type]
            with events.open("a") as handle:
                handle.write(event.to_json() + "\n")

    print(f"stand-in node {context.node_rank}/{context.num_nodes} port {context.main_port}", flush=True)
    if os.environ.get("STAND_IN_HANG_RANK") == str(context.node_rank):
        while True:
            time.sleep(1)
    emit(EventKind.STARTED, 0)
    for step in range(1, steps + 1):
        time.sleep(pause)
        if os.environ.get("STAND_IN_FAIL_RANK") == str(context.node_rank) and step >= int(
            os.environ.get("STAND_IN_FAIL_AT_STEP", "3")
        ):
            raise RuntimeError(f"injected failure on node {context.node_rank} at step {step}")
        if stop["requested"]:
            emit(EventKind.PREEMPTED, step)
            return EXIT_PREEMPTED
        emit(
            EventKind.STEP,
            step,
            loss=1.0 / step,
            learning_rate=1e-3,
            samples_per_second=100.0,
            epoch=step / steps,
        )
    emit(EventKind.EVAL, steps, metrics={"eval_accuracy": 0.75})
    emit(EventKind.FINISHED, steps)
    if context.node_rank == 0:
        summary = JobSummary(
            outcome=EventKind.FINISHED, step=steps, total_steps=steps, metrics={"eval_accuracy": 0.75}
        )
        (output / "metrics.json").write_text(json.dumps(summary.model_dump(mode="json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
