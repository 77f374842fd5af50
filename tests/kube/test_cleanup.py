"""Every process the harness starts is gone when it ends: after Ctrl-C (orderly stop, work directory
removed) and even after SIGKILL of the harness itself (the kernel's parent-death signal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kube.binaries import REPO_ROOT
from tests.kube.harness import LocalCluster, remove_stale_workdirs

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

# Starts a cluster without nodes, prints its process ids and work directory, then waits to be stopped.
HARNESS_SCRIPT = """
import json, signal, sys, time
# Ctrl-C's own disposition: a shell that started the test run in the background without job control (nohup ... &)
# leaves SIGINT ignored, and an ignored signal stays ignored through exec (a CI-like run hung on that).
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from tests.kube.binaries import ClusterBinaries
from tests.kube.harness import LocalCluster, remove_stale_workdirs
with LocalCluster(ClusterBinaries(Path(sys.argv[1]), "test"), gpu_nodes=0) as cluster:
    print(json.dumps({"pids": [p.pid for p in cluster.processes], "workdir": str(cluster.workdir)}), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _start_harness(bin_dir: Path) -> tuple[subprocess.Popen[str], list[int], Path]:
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS_SCRIPT, str(bin_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert harness.stdout is not None
    started = json.loads(harness.stdout.readline())
    pids = started["pids"]
    assert len(pids) == 5 and all(_alive(pid) for pid in pids)
    return harness, pids, Path(started["workdir"])


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.fixture
def bin_dir(kube_cluster: LocalCluster) -> Path:
    if not isinstance(kube_cluster, LocalCluster) or not kube_cluster.has_nodes:
        pytest.skip("needs the locally built binaries")
    return kube_cluster.binaries.bin_dir


def test_ctrl_c_stops_every_process_and_removes_the_work_directory(bin_dir: Path) -> None:
    harness, pids, workdir = _start_harness(bin_dir)
    harness.send_signal(signal.SIGINT)
    harness.wait(timeout=30)
    assert _wait_gone(pids, timeout=1) == []
    assert not workdir.exists()


def test_killing_the_harness_takes_its_processes_with_it(bin_dir: Path) -> None:
    harness, pids, workdir = _start_harness(bin_dir)
    harness.kill()
    harness.wait(timeout=30)
    assert _wait_gone(pids) == []
    # The directory outlives a SIGKILL; the next LocalCluster start removes it.
    assert workdir in remove_stale_workdirs()
    assert not workdir.exists()
