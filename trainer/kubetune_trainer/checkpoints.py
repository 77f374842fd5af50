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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune.spec.adapters import AdapterSpec
from kubetune.spec.base import SpecModel
from kubetune.spec.models import DatasetSpec, FineTuneJobSpec
from pydantic import ValidationError

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
    # What the checkpoint is only valid for (see `resume_fingerprint`); empty in checkpoints of older versions.
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


class CheckpointMismatchError(ValueError):
    """The newest checkpoint in output.path was written by a job it cannot continue (different data, batch...)."""


def resume_fingerprint(spec: FineTuneJobSpec, world_size: int) -> dict[str, Any]:
    """The spec fields an exact resume depends on, with their YAML names.

    Epochs, maxSteps, evaluation and logging may change between runs (e.g. to extend training); these may not:
    they decide the data order, the batches and the shape of the saved optimizer state.
    """
    training, deepspeed = spec.training, spec.distribution.deepspeed
    return {
        "spec.model.name": spec.model.name,
        "spec.model.task": str(spec.model.task),
        "spec.dataset": spec.dataset.model_dump(mode="json", by_alias=True, exclude_none=True),
        "spec.training.perDeviceTrainBatchSize": training.per_device_train_batch_size,
        "spec.training.gradientAccumulationSteps": training.gradient_accumulation_steps,
        "spec.training.seed": training.seed,
        "world size (spec.distribution.nodes * processesPerNode)": world_size,
        "spec.distribution.deepspeed.zeroStage": deepspeed.zero_stage if deepspeed.enabled else 0,
        # The adapter decides which weights a checkpoint holds and the optimizer state's shape.
        "spec.adapter": spec.adapter.model_dump(mode="json", by_alias=True) if spec.adapter else None,
    }


# Fingerprint entries that are whole spec sections: compared without the fields at their defaults, so that a
# field added by a later kubetune (absent from an older checkpoint's fingerprint) counts as its default.
_SECTIONS: dict[str, type[SpecModel]] = {"spec.dataset": DatasetSpec, "spec.adapter": AdapterSpec}


def _comparable(name: str, value: Any) -> Any:
    section = _SECTIONS.get(name)
    if section is None or not isinstance(value, dict):
        return value
    try:
        return section.model_validate(value).model_dump(mode="json", by_alias=True, exclude_defaults=True)
    except ValidationError:  # written by a version whose fields this one does not read: compare as written
        return value


def check_compatible(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise CheckpointMismatchError naming every field that differs between the checkpoint and this job."""
    if not saved:
        return
    differences = [
        f"{name}: checkpoint {saved.get(name)!r}, this job {value!r}"
        for name, value in current.items()
        if _comparable(name, saved.get(name)) != _comparable(name, value)
    ]
    if differences:
        listed = "; ".join(differences)
        raise CheckpointMismatchError(
            f"the newest checkpoint {folder} was written by a different job ({listed}): use a new "
            "spec.output.path, or set spec.checkpointing.resume: false to start over (old checkpoints are "
            "then replaced)"
        )


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


def save_checkpoint(
    accelerator: Any,
    root: Path,
    state: TrainerState,
    keep_last: int,
    save_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint for `state.step` on every rank; returns its folder (complete when this returns).

    `save_kwargs` go to accelerator.save_state (e.g. DeepSpeed's exclude_frozen_parameters for adapters).
    Call on all ranks together: it contains barriers.
    """
    folder = checkpoint_dir(root, state.step)
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # an incomplete leftover of the same step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder), **(save_kwargs or {}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_write(folder / STATE_FILE, state.to_json())
        _atomic_write(folder / MARKER, f"step {state.step}\n")
        prune(root, keep_last, keep=folder)
    accelerator.wait_for_everyone()
    return folder


def folder_bytes(folder: Path) -> int:
    """Total size of the files under `folder` (every rank's shards, where output.path is shared)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prune(root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and incomplete ones except `keep`."""
    complete = complete_steps(root)
    survivors = {checkpoint_dir(root, step) for step in complete[-keep_last:]}
    if keep is not None:
        survivors.add(keep)
    for child in root.iterdir():
        if _STEP_DIR.match(child.name) and child not in survivors:
            shutil.rmtree(child, ignore_errors=True)


def load_checkpoint(
    accelerator: Any, folder: Path, fingerprint: dict[str, Any], load_kwargs: dict[str, Any] | None = None
) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states from `folder` on every rank; returns the loop state.
    `load_kwargs` go to accelerator.load_state.

    Raises CheckpointMismatchError when the checkpoint belongs to an incompatible job (before loading anything),
    and FileNotFoundError (naming the shared-volume requirement) when this node cannot see the folder.
    """
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"checkpoint {folder} is not visible on node rank {accelerator.process_index}: resuming a "
            "multi-node job needs spec.output.path on a volume all nodes share"
        )
    state = TrainerState.from_file(folder / STATE_FILE)
    check_compatible(folder, state.fingerprint, fingerprint)
    accelerator.load_state(str(folder), **(load_kwargs or {}))
    return state
