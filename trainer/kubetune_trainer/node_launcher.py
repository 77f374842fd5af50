"""`kubetune train`: start this node's training processes and report how they ended.

Steps: read the launcher contract (`NodeContext.from_env`), load and validate the job (invalid: message, exit 2,
nothing written), write the accelerate (and DeepSpeed) config files into a private folder, and run
`accelerate launch` for this node, which starts `kubetune_trainer.worker` once per process through torchrun.

Signals: SIGTERM/SIGINT are forwarded straight to the worker processes (not to torchrun, whose 30 s
shutdown timer would cut a checkpoint short); they agree on a step, save a checkpoint and exit, and this
process exits 75 (`EXIT_PREEMPTED`) so the launcher knows to resume rather than fail.

Exit codes: 0 finished, 75 preempted, 2 invalid job (spec, data columns, model pin) or a GPU job without a
visible CUDA device (see devices.py), 1 other failures, with the failing rank's message and traceback tail
printed last on stderr.

This module never imports torch: it asks about CUDA through a short-lived child (devices.probe_cuda), so the
process that lives as long as the run does not hold torch's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from kubetune.contract import (
    EXIT_FAILED,
    EXIT_INVALID_SPEC,
    EXIT_OK,
    EXIT_PREEMPTED,
    JOB_FILE,
    ContractError,
    NodeContext,
)
from kubetune.launch import LaunchConfigError, accelerate_config, accelerate_launch_args, deepspeed_config
from kubetune.spec import FineTuneJob, SpecError, load_job

from kubetune_trainer.devices import DeviceError, check_devices, probe_cuda
from kubetune_trainer.settings import WORKER_STATUS_DIR

DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "kubetune" / "torch_extensions"


@dataclass(frozen=True)
class LaunchFiles:
    """The config files written for one node launch."""

    folder: Path
    accelerate_config: Path
    deepspeed_config: Path | None
    status_dir: Path


def load_and_validate(context: NodeContext) -> FineTuneJob:
    """The job from context.job_file, also checked for a buildable DeepSpeed config.

    Raises SpecError or LaunchConfigError.
    """
    job = load_job(context.job_file)
    if job.spec.distribution.deepspeed.enabled:
        deepspeed_config(job.spec)
    return job


def write_launch_files(job: FineTuneJob, context: NodeContext, folder: Path) -> LaunchFiles:
    """Write accelerate.yaml (and deepspeed.json) into `folder`. Returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    ds_path: Path | None = None
    if job.spec.distribution.deepspeed.enabled:
        ds_path = folder / "deepspeed.json"
        ds_path.write_text(json.dumps(deepspeed_config(job.spec), indent=2), encoding="utf-8")
    accelerate_path = folder / "accelerate.yaml"
    config = accelerate_config(job.spec, context, str(ds_path) if ds_path else None)
    accelerate_path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    status_dir = folder / "status"
    status_dir.mkdir(exist_ok=True)
    return LaunchFiles(folder, accelerate_path, ds_path, status_dir)


def child_environment(
    job: FineTuneJob, files: LaunchFiles, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The workers' environment: ours plus the status folder, the extensions cache and the CPU switch."""
    env = dict(os.environ if base is None else base)
    env[WORKER_STATUS_DIR] = str(files.status_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # DeepSpeed JIT-compiles small ops on first use (~30 s); keep them between runs.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    deepspeed = job.spec.distribution.deepspeed
    if deepspeed.enabled and deepspeed.offload_optimizer != "none":
        # DeepSpeed's CPU Adam steps the offloaded optimizer with OpenMP threads; the image's OMP_NUM_THREADS=1
        # (right for GPU training) would make it single-threaded. Give each process its share of the cores.
        env["OMP_NUM_THREADS"] = str(max(1, _cores() // job.spec.distribution.processes_per_node))
    if not deepspeed.enabled and not probe_cuda(env).available:
        # DDP on CPU: keeps the torchrun launch of --multi_gpu but trains on CPU over gloo. (With DeepSpeed this
        # variable would silently turn DeepSpeed off, so DeepSpeed runs on its own CPU accelerator instead. The
        # simple launcher of a 1 x 1 job sets it from the config file itself; without CUDA it trains on CPU.)
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def _cores() -> int:
    """Cores this process may run on (the affinity mask, which container CPU limits narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if `kubetune train` dies (torchrun then stops its workers)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: best effort only


def _children(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(p) for p in task.read_text().split())
        except OSError:
            continue
    return found


class _SignalForwarder:
    """Passes SIGTERM/SIGINT to the worker processes (the launcher's children), remembering that it did."""

    def __init__(self, launcher: subprocess.Popen[bytes]) -> None:
        self.launcher = launcher
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalForwarder:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        again = self.received is not None
        self.received = signal.Signals(signum).name
        workers = _children(self.launcher.pid)
        if again:
            # Second signal: do not wait for the checkpoint (a worker stuck in a collective cannot see SIGTERM).
            targets, sent = [*workers, self.launcher.pid], signal.SIGKILL
        else:
            targets, sent = (
                workers or [self.launcher.pid],
                signal.SIGTERM,
            )  # no workers yet: let torchrun stop
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sent)
        print(
            f"kubetune train: {self.received} received, sent {sent.name} to {len(targets)} process(es)",
            file=sys.stderr,
            flush=True,
        )


def read_statuses(status_dir: Path) -> list[dict[str, Any]]:
    """The rank-<N>.json records the workers left, by rank."""
    records = []
    for path in sorted(status_dir.glob("rank-*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda record: int(record.get("rank", 0)))


_PEER_LOSS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
)


def _is_peer_loss(message: str) -> bool:
    return any(fragment in message for fragment in _PEER_LOSS)


def decide_exit(
    launcher_code: int, statuses: list[dict[str, Any]], signalled: bool
) -> tuple[int, str | None]:
    """This node's exit code and, for failures, the message to print last."""
    failed = [s for s in statuses if s.get("outcome") == "failed"]
    if failed:
        # A rank that lost its peer reports only that; show the rank that failed first-hand when there is one.
        first = min(failed, key=lambda s: (_is_peer_loss(str(s.get("message", ""))), int(s.get("rank", 0))))
        code = int(first.get("exit_code", EXIT_FAILED)) or EXIT_FAILED
        detail = first.get("traceback") or ""
        return code, f"rank {first.get('rank')} failed: {first.get('message', '')}\n{detail}".rstrip()
    if any(s.get("outcome") == "preempted" for s in statuses):
        return EXIT_PREEMPTED, None
    if launcher_code == 0 and statuses:
        return EXIT_OK, None
    if signalled:
        return EXIT_PREEMPTED, f"stopped by a signal before training reported (launcher exit {launcher_code})"
    if launcher_code == 0:
        return EXIT_OK, None
    return EXIT_FAILED, (
        f"the training processes exited with code {launcher_code} without reporting why "
        "(killed, out of memory, or a peer node failed): see the log above"
    )


def launch_node(
    context: NodeContext, job: FineTuneJob, env: Mapping[str, str] | None = None, work_dir: Path | None = None
) -> int:
    """Run this node's share of `job` through `accelerate launch`; returns the node's exit code."""
    folder = Path(tempfile.mkdtemp(prefix="kubetune-node-", dir=work_dir))
    try:
        files = write_launch_files(job, context, folder)
        args = accelerate_launch_args(job.spec, context, str(files.accelerate_config))
        command = [sys.executable, "-m", "accelerate.commands.launch", *args]
        launcher = subprocess.Popen(
            command, env=child_environment(job, files, env), preexec_fn=_die_with_parent
        )
        with _SignalForwarder(launcher) as forwarder:
            while True:
                try:
                    launcher_code = launcher.wait()
                    break
                except InterruptedError:
                    continue
        code, message = decide_exit(
            launcher_code, read_statuses(files.status_dir), forwarder.received is not None
        )
        if message:
            print(f"kubetune train: {message}", file=sys.stderr, flush=True)
        return code
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_single_process(context: NodeContext, job: FineTuneJob, env: Mapping[str, str] | None = None) -> int:
    """Train in this process (world size 1) for debugging; returns the exit code."""
    from kubetune_trainer.settings import RunSettings
    from kubetune_trainer.worker import run_worker

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    return run_worker(RunSettings.from_job(job, context, env))


def main(
    job_file: str | None = None, single_process: bool = False, env: Mapping[str, str] | None = None
) -> int:
    """`kubetune train`: validate, then launch this node (or train in-process). Returns the exit code."""
    source = dict(os.environ if env is None else env)
    if job_file:
        source[JOB_FILE] = job_file
    elif not source.get(JOB_FILE):
        print(
            f"kubetune train: no job: pass a FineTuneJob file (kubetune train job.yaml) or set {JOB_FILE}",
            file=sys.stderr,
        )
        return EXIT_INVALID_SPEC
    try:
        context = NodeContext.from_env(source)
        job = load_and_validate(context)
        # Before any process starts: a GPU job must not quietly train on CPU.
        check_devices(job.spec, context, source)
    except (ContractError, SpecError, LaunchConfigError, DeviceError) as error:
        print(f"kubetune train: {error}", file=sys.stderr, flush=True)
        return EXIT_INVALID_SPEC
    if single_process:
        return run_single_process(context, job, source)
    return launch_node(context, job, source)
