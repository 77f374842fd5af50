"""Checkpoints in the object store (output.objectStorage.checkpoints): a gang resumes without a shared volume.

The same atomicity as on disk (kubetune_trainer.checkpoints): every node uploads the files its ranks wrote
into `checkpoints/step-<N>/`, then, after a barrier, rank 0 writes `trainer_state.json` and last the
`COMPLETE` marker. A step without the marker (a crash mid-upload) is never resumed from and is deleted by the
next prune. On a restart rank 0 picks the newest complete step in the bucket, every node downloads it into a
folder of its own under the local checkpoints folder, and all ranks load it (exact resume, as from disk).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from kubetune_trainer.checkpoints import MARKER, STATE_FILE, TrainerState
from kubetune_trainer.storage import ObjectStore

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
_STEP = re.compile(r"^step-(\d+)$")


def _node_first_process(accelerator: Any) -> int:
    """The global index of this node's first process: names a node's own download folder."""
    return int(accelerator.process_index) - int(accelerator.local_process_index)


def publish_checkpoint(
    accelerator: Any, store: ObjectStore, folder: Path, state: TrainerState, keep_last: int
) -> str:
    """Upload the complete local checkpoint `folder` (written by save_checkpoint on every rank); returns its
    s3:// URI. Call on all ranks together (barriers). The marker goes last, from rank 0."""
    relative = f"{FOLDER}/{folder.name}"
    if accelerator.is_main_process:
        store.remove(relative)  # a leftover of the same step, from a crash mid-upload
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:
        # Each node sends what its ranks wrote (DeepSpeed shards, RNG states); where nodes share a disk they
        # send the same files, which is harmless.
        store.upload_folder(folder, relative, skip=frozenset({MARKER, STATE_FILE}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        store.write_text(f"{relative}/{STATE_FILE}", state.to_json())
        store.write_text(f"{relative}/{MARKER}", f"step {state.step}\n")
        prune_remote(store, keep_last, keep=state.step)
    accelerator.wait_for_everyone()
    return store.uri(relative)


def remote_complete_steps(store: ObjectStore) -> list[int]:
    """Steps of the complete checkpoints in the bucket (marker and state present), oldest first."""
    steps = []
    for name in store.children(FOLDER):
        match = _STEP.match(name)
        if (
            match
            and store.exists(f"{FOLDER}/{name}/{MARKER}")
            and store.exists(f"{FOLDER}/{name}/{STATE_FILE}")
        ):
            steps.append(int(match.group(1)))
    return sorted(steps)


def prune_remote(store: ObjectStore, keep_last: int, keep: int | None = None) -> None:
    """Delete all but the newest `keep_last` complete checkpoints in the bucket, and incomplete ones except
    `keep`."""
    complete = remote_complete_steps(store)
    survivors = set(complete[-keep_last:]) | ({keep} if keep is not None else set())
    for name in store.children(FOLDER):
        match = _STEP.match(name)
        if match and int(match.group(1)) not in survivors:
            store.remove(f"{FOLDER}/{name}")


def fetch_checkpoint(accelerator: Any, store: ObjectStore, step: int, local_root: Path) -> Path:
    """Download checkpoint `step` once per node into `local_root/.from-store-<node>/step-<step>`; returns that
    folder. Call on all ranks together (a barrier)."""
    folder = local_root / f".from-store-{_node_first_process(accelerator)}" / f"step-{step}"
    if accelerator.is_local_main_process:
        shutil.rmtree(folder.parent, ignore_errors=True)
        received = store.download_folder(f"{FOLDER}/step-{step}", folder)
        log.info("downloaded checkpoint of step %d from %s: %d bytes", step, store.uri(FOLDER), received)
    accelerator.wait_for_everyone()
    return folder
