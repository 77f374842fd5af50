"""Helpers for trainer tests: run `kubetune train` for real (single process, or a gang of nodes on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.contract import NodeContext
from kubetune.events import STDOUT_PREFIX, ProgressEvent
from kubetune_trainer.synthetic import write_job_file

from tests.kube.processes import free_loopback_port


@dataclass(frozen=True)
class Assets:
    """Data files and a tiny model shared by the tests of one session (read-only)."""

    train: Path
    eval: Path
    model: Path
    string_train: Path
    string_eval: Path


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for trainer child processes: offline, one thread, private termination log."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
        }
    )
    env.update(extra)
    return env


def make_job(tmp_path: Path, assets: Assets, name: str = "job", **overrides: Any) -> Path:
    """A job file for the sentiment data and tiny model, output under tmp_path/<name>-out."""
    return write_job_file(
        tmp_path / f"{name}.yaml",
        model=str(assets.model),
        train=str(assets.train),
        eval=str(assets.eval),
        output=str(tmp_path / f"{name}-out"),
        overrides=overrides,
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[ProgressEvent]:
        return [
            ProgressEvent.from_json(line)
            for line in self.stdout.splitlines()
            if line.startswith(STDOUT_PREFIX)
        ]


def run_single(job: Path, env: Mapping[str, str], timeout: float = 240) -> Result:
    """`kubetune train JOB --single-process` in a child process."""
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "train", str(job), "--single-process"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def node_env(
    env: Mapping[str, str], job: Path, rank: int, nodes: int, procs: int, port: int
) -> dict[str, str]:
    context = NodeContext(
        job_file=str(job),
        node_rank=rank,
        num_nodes=nodes,
        procs_per_node=procs,
        main_addr="127.0.0.1",
        main_port=port,
        termination_log=env["KUBETUNE_TERMINATION_LOG"] + f"-node{rank}",
    )
    return {**env, **context.to_env()}


def start_nodes(
    job: Path,
    env: Mapping[str, str],
    nodes: int,
    procs_per_node: int = 1,
    per_node_jobs: Mapping[int, Path] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start one `kubetune train` per node with the launcher contract (rank 0 gets KUBETUNE_EVENTS_FILE if set).

    `per_node_jobs` gives some nodes another job file (to make one node fail on purpose).
    """
    port = free_loopback_port()
    processes = []
    for rank in range(nodes):
        node = node_env(env, (per_node_jobs or {}).get(rank, job), rank, nodes, procs_per_node, port)
        if rank != 0:
            node.pop("KUBETUNE_EVENTS_FILE", None)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "kubetune.cli", "train"],
                env=node,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # so a hung node's whole tree can be killed
            )
        )
    return processes


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc), parents first."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                tree.extend(int(child) for child in task.read_text().split())
        index += 1
    return tree


def kill_node(process: subprocess.Popen[str]) -> None:
    """SIGKILL a node's every process at once, as when its pod or machine is lost. (Its process group is not
    enough: torchrun starts the workers in sessions of their own, and they would train on, orphaned.)"""
    tree = process_tree(process.pid)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(
                pid, signal.SIGSTOP
            )  # none can react (or start another) while the rest are found and killed
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_nodes(processes: list[subprocess.Popen[str]], timeout: float = 300) -> list[Result]:
    """Wait for every node; on timeout kill each node's whole process tree and fail with their output."""
    results = []
    deadline = time.time() + timeout
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.time()))
            results.append(Result(process.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        outputs = []
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            outputs.append(Result(-9, stdout, stderr))
        raise AssertionError(f"nodes still running after {timeout} s:\n{explain(outputs)}") from None
    return results


def run_nodes(
    job: Path, env: Mapping[str, str], nodes: int, procs_per_node: int = 1, timeout: float = 300
) -> list[Result]:
    """Run a whole gang of `kubetune train` nodes to the end."""
    return wait_nodes(start_nodes(job, env, nodes, procs_per_node), timeout)


def explain(results: list[Result] | Result) -> str:
    """Tails of every node's output, for assertion messages."""
    items = results if isinstance(results, list) else [results]
    return "\n".join(
        f"--- node {i} rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}" for i, r in enumerate(items)
    )


def read_summary(output: Path) -> dict[str, Any]:
    return dict(json.loads((output / "metrics.json").read_text()))


def wait_for_line(path: Path, predicate: Callable[[str], bool], timeout: float = 120) -> str:
    """The first line of `path` (polled) that satisfies `predicate`. Raises AssertionError on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if predicate(line):
                    return line
        time.sleep(0.05)
    raise AssertionError(f"no matching line in {path} within {timeout} s")


def train_in_process(job: Path, env: Mapping[str, str]) -> Result:
    """`kubetune train JOB --single-process` inside this test process (no interpreter start-up: seconds, not tens).

    stdout/stderr are captured here; Accelerate's process-wide state is reset afterwards so runs stay independent.
    The caller sets the offline/one-thread environment (fixture `in_process_env`).
    """
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from accelerate.state import AcceleratorState, GradientState
    from kubetune_trainer import node_launcher

    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = node_launcher.main(job_file=str(job), single_process=True, env=env)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Result(code, out.getvalue(), err.getvalue())


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `folder`, read with TensorBoard's own reader.
    Asserts there is at least one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    series: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        accumulator = EventAccumulator(str(file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return series
