"""Planning a local run: which output folder, which job file the nodes read, and each node's environment.

Pure functions plus one writer (`prepare_output`), so the decisions are testable without starting processes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubetune.contract import NodeContext
from kubetune.spec import FineTuneJob, parse_job

# spec.output.path's default is a path inside a worker container; locally we use a folder in the cwd instead.
CONTAINER_OUTPUT_DEFAULT = "/output"
LOCAL_RUNS_FOLDER = "runs"  # ignored by git (.gitignore)
MAIN_ADDR = "127.0.0.1"


@dataclass(frozen=True)
class LocalRunPlan:
    """Everything decided before the first node starts."""

    job: FineTuneJob  # the resolved job: overrides applied, relative paths made absolute
    source_file: Path  # the file the user gave
    output_dir: Path
    main_port: int
    gpus: tuple[str, ...] = ()  # device ids the nodes share out; empty runs on CPU

    @property
    def nodes(self) -> int:
        return self.job.spec.distribution.nodes

    @property
    def procs_per_node(self) -> int:
        return self.job.spec.distribution.processes_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def job_file(self) -> Path:
        """The resolved copy of the job that every node reads."""
        return self.output_dir / "job.yaml"

    @property
    def events_file(self) -> Path:
        return self.output_dir / "events.jsonl"

    @property
    def logs_dir(self) -> Path:
        return self.output_dir / "logs"

    def log_file(self, rank: int) -> Path:
        return self.logs_dir / f"node-{rank}.log"

    def termination_log(self, rank: int) -> Path:
        return self.logs_dir / f"node-{rank}.termination-log"

    def node_context(self, rank: int) -> NodeContext:
        """The launcher contract for node `rank` (the same variables the operator puts into a worker pod)."""
        return NodeContext(
            job_file=str(self.job_file),
            node_rank=rank,
            num_nodes=self.nodes,
            procs_per_node=self.procs_per_node,
            main_addr=MAIN_ADDR,
            main_port=self.main_port,
            output_dir=str(self.output_dir),
            events_file=str(self.events_file),
            termination_log=str(self.termination_log(rank)),
            job_name=self.job.metadata.name,
            # What this node gets locally, whatever the spec asks a cluster for: the run prints "CPU, gloo".
            gpus_per_node=len(node_gpus(self.gpus, rank, self.procs_per_node)),
        )

    def node_env(self, rank: int, base: dict[str, str], cpu_count: int) -> dict[str, str]:
        """The full environment of node `rank`'s process: `base`, the contract, thread and device limits."""
        env = dict(base)
        env.update(self.node_context(rank).to_env())
        # Every process of every simulated node shares this machine's cores: oversubscribing them with
        # OpenMP threads makes a CPU run several times slower, so split the cores evenly.
        threads = threads_per_process(cpu_count, self.world_size)
        requested = base.get("OMP_NUM_THREADS", "")
        if requested.isdigit() and 0 < int(requested) < threads:
            threads = int(requested)
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
        env["TOKENIZERS_PARALLELISM"] = "false"  # tokenizers' own pool would oversubscribe too
        env["PYTHONUNBUFFERED"] = "1"  # node logs should be live, not flushed at exit
        env["CUDA_VISIBLE_DEVICES"] = ",".join(node_gpus(self.gpus, rank, self.procs_per_node))
        return env


def threads_per_process(cpu_count: int, world_size: int) -> int:
    """Threads per training process so that threads x processes ≤ cores (at least one)."""
    return max(1, cpu_count // max(1, world_size))


def node_gpus(gpus: tuple[str, ...], rank: int, procs_per_node: int) -> list[str]:
    """The GPU ids node `rank` may use: its own slice, one per process (none when running on CPU)."""
    return list(gpus[rank * procs_per_node : (rank + 1) * procs_per_node])


def usable_gpus(world_size: int, env: dict[str, str]) -> tuple[str, ...]:
    """GPU ids to share out, or () to run on CPU.

    NCCL needs one GPU per process, so with fewer GPUs than processes the run falls back to CPU (gloo).
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(i.strip() for i in visible.split(",") if i.strip())
    else:
        ids = tuple(str(i) for i in range(_count_nvidia_gpus()))
    return ids if len(ids) >= world_size else ()


def _count_nvidia_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((MAIN_ADDR, 0))
        port: int = probe.getsockname()[1]
        return port


def default_output_dir(job: FineTuneJob, cwd: Path) -> Path:
    """Where a local run writes when --output is not given.

    spec.output.path when the user chose one; its default (/output) is a container path, so then
    ./runs/<job name>.
    """
    chosen = job.spec.output.path
    if chosen != CONTAINER_OUTPUT_DEFAULT:
        return (cwd / chosen).resolve()
    return (cwd / LOCAL_RUNS_FOLDER / job.metadata.name).resolve()


def _looks_like_url(value: str) -> bool:
    return "://" in value


def _absolute(value: str, base: Path) -> str:
    if _looks_like_url(value) or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def resolve_job(
    job: FineTuneJob,
    source_file: Path,
    output_dir: Path,
    nodes: int | None = None,
    procs_per_node: int | None = None,
    main_port: int | None = None,
) -> FineTuneJob:
    """The job as the local nodes must see it.

    Command-line overrides win over the spec (and the port picked at run time over mainPort), output.path is the local output folder, and relative data
    file paths (and a relative model folder that exists) are resolved against the job file's folder, like
    kustomize does, so a job runs the same from any working directory. Raises SpecError if an override
    makes the job invalid.
    """
    base = source_file.resolve().parent
    document: dict[str, Any] = job.model_dump(mode="json", by_alias=True)
    spec = document["spec"]
    files = spec["dataset"].get("files")
    if files:
        files["train"] = _absolute(files["train"], base)
        if files.get("eval"):
            files["eval"] = _absolute(files["eval"], base)
    model_name = spec["model"]["name"]
    if not _looks_like_url(model_name) and not os.path.isabs(model_name) and (base / model_name).is_dir():
        spec["model"]["name"] = str((base / model_name).resolve())
    if nodes is not None:
        spec["distribution"]["nodes"] = nodes
    if procs_per_node is not None:
        spec["distribution"]["processesPerNode"] = procs_per_node
    if main_port is not None:
        spec["distribution"]["mainPort"] = main_port
    spec["output"]["path"] = str(output_dir)
    return parse_job(document, str(source_file))


def write_job_file(job: FineTuneJob, path: Path) -> None:
    """Write the resolved job (every field, nulls included, so no default sneaks back in)."""
    document = job.model_dump(mode="json", by_alias=True)
    document.pop("status", None)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


class UnsafeOutputError(ValueError):
    """--fresh was asked to delete a folder that is not a run's output folder."""


def clear_output(output_dir: Path, cwd: Path) -> None:
    """Delete a previous run's output (--fresh). Raises UnsafeOutputError for /, home, or the cwd's parents."""
    target = output_dir.resolve()
    protected = {Path("/"), Path.home().resolve(), *cwd.resolve().parents, cwd.resolve()}
    if target in protected:
        raise UnsafeOutputError(
            f"--fresh would delete {target}, which holds more than this run's output: "
            "pass --output with a folder of its own"
        )
    if target.exists():
        shutil.rmtree(target)


def prepare_output(plan: LocalRunPlan) -> None:
    """Create the output and log folders and write the job file the nodes read."""
    plan.logs_dir.mkdir(parents=True, exist_ok=True)
    write_job_file(plan.job, plan.job_file)
    for rank in range(plan.nodes):
        plan.termination_log(rank).unlink(missing_ok=True)
