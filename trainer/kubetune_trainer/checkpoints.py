"""Checkpoints: `<output>/checkpoints/step-<N>/`, complete only once the marker file is in place.

A checkpoint is written by every rank (`accelerator.save_state`: model, optimizer, scheduler, RNG states,
DeepSpeed shards), then, after a barrier, the main process writes `trainer_state.json` and finally the
`COMPLETE` marker, atomically. A folder without the marker (a crash mid-save) is ignored and cleaned up.
Resuming across nodes needs output.path on a volume every node shares (as on one machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where the loop is: enough to continue at the exact next batch."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batches_in_epoch: int = 0  # micro-batches this process consumed in `epoch`
    samples_seen: int = 0  # training examples seen, all ranks together
    total_steps: int = 0
    last_metrics: dict[str, float] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step}"


def complete_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).is_file() and (child / STATE_FILE).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_complete(root: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    steps = complete_steps(root)
    return checkpoint_dir(root, steps[-1]) if steps else None


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def save_checkpoint(accelerator: Any, root: Path, state: TrainerState, keep_last: int) -> Path:
    """Write a checkpoint for `state.step` on every rank; returns its folder (complete when this returns).

    Call on all ranks together: it contains barriers.
    """
    folder = checkpoint_dir(root, state.step)
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # an incomplete leftover of the same step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_write(folder / STATE_FILE, state.to_json())
        _atomic_write(folder / MARKER, f"step {state.step}\n")
        prune(root, keep_last, keep=folder)
    accelerator.wait_for_everyone()
    return folder


def prune(root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and incomplete ones except `keep`."""
    complete = complete_steps(root)
    survivors = {checkpoint_dir(root, step) for step in complete[-keep_last:]}
    if keep is not None:
        survivors.add(keep)
    for child in root.iterdir():
        if _STEP_DIR.match(child.name) and child not in survivors:
            shutil.rmtree(child, ignore_errors=True)


def load_checkpoint(accelerator: Any, folder: Path) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states from `folder` on every rank; returns the loop state.

    Raises FileNotFoundError (naming the shared-volume requirement) when this node cannot see the folder.
    """
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"checkpoint {folder} is not visible on node rank {accelerator.process_index}: resuming a "
            "multi-node job needs spec.output.path on a volume all nodes share"
        )
    accelerator.load_state(str(folder))
    return TrainerState.from_file(folder / STATE_FILE)
